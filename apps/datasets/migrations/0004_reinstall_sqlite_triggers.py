"""Re-create the immutability triggers on SQLite after 0003.

SQLite cannot add a column in place for every case, so Django rebuilds the table (new table,
copy, drop, rename) and the old table's triggers go with it. PostgreSQL keeps them. Any later
migration that alters ``datasetversion``, ``datasetmember`` or ``annotationset`` must end with
the same step.
"""

from importlib import import_module

from django.db import migrations

_triggers = import_module("apps.datasets.migrations.0002_immutable_rows")


def reinstall(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for sql in _triggers.SQLITE_INSTALL:  # CREATE TRIGGER IF NOT EXISTS: idempotent
        schema_editor.execute(sql, None)


class Migration(migrations.Migration):
    dependencies = [("datasets", "0003_version_cancel_requested")]
    operations = [migrations.RunPython(reinstall, migrations.RunPython.noop, elidable=False)]

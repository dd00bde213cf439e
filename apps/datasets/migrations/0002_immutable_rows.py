"""The database refuses to rewrite what must not change.

- ``datasets_annotationset``: any UPDATE (a new label set is a new row; seed 2.4).
- ``datasets_datasetmember``: any UPDATE (lineage rows are facts about a finished build).
- ``datasets_datasetversion``: any UPDATE once the row left ``building`` (ready versions are
  immutable; their manifest hash is what the trainer and verify trust).

DELETE stays possible at this level (test flushes; removing a failed build), and the
application has no delete path for ready versions or label sets; PROTECT foreign keys keep
used versions and labelled versions in place.
"""

from django.db import migrations

PG_INSTALL = [
    """
    CREATE OR REPLACE FUNCTION datasets_refuse_update() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'datasets: % rows are immutable: UPDATE refused', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END
    $$;
    """,
    """
    CREATE TRIGGER datasets_annotationset_no_update BEFORE UPDATE ON datasets_annotationset
        FOR EACH ROW EXECUTE FUNCTION datasets_refuse_update();
    """,
    """
    CREATE TRIGGER datasets_datasetmember_no_update BEFORE UPDATE ON datasets_datasetmember
        FOR EACH ROW EXECUTE FUNCTION datasets_refuse_update();
    """,
    """
    CREATE TRIGGER datasets_datasetversion_frozen BEFORE UPDATE ON datasets_datasetversion
        FOR EACH ROW WHEN (OLD.status <> 'building')
        EXECUTE FUNCTION datasets_refuse_update();
    """,
]
PG_REMOVE = [
    "DROP TRIGGER IF EXISTS datasets_datasetversion_frozen ON datasets_datasetversion;",
    "DROP TRIGGER IF EXISTS datasets_datasetmember_no_update ON datasets_datasetmember;",
    "DROP TRIGGER IF EXISTS datasets_annotationset_no_update ON datasets_annotationset;",
    "DROP FUNCTION IF EXISTS datasets_refuse_update();",
]
SQLITE_INSTALL = [
    """
    CREATE TRIGGER IF NOT EXISTS datasets_annotationset_no_update
    BEFORE UPDATE ON datasets_annotationset
    BEGIN SELECT RAISE(ABORT, 'datasets: annotation sets are immutable: UPDATE refused'); END;
    """,
    """
    CREATE TRIGGER IF NOT EXISTS datasets_datasetmember_no_update
    BEFORE UPDATE ON datasets_datasetmember
    BEGIN SELECT RAISE(ABORT, 'datasets: lineage rows are immutable: UPDATE refused'); END;
    """,
    """
    CREATE TRIGGER IF NOT EXISTS datasets_datasetversion_frozen
    BEFORE UPDATE ON datasets_datasetversion WHEN OLD.status <> 'building'
    BEGIN SELECT RAISE(ABORT, 'datasets: finished versions are immutable: UPDATE refused'); END;
    """,
]
SQLITE_REMOVE = [
    "DROP TRIGGER IF EXISTS datasets_datasetversion_frozen;",
    "DROP TRIGGER IF EXISTS datasets_datasetmember_no_update;",
    "DROP TRIGGER IF EXISTS datasets_annotationset_no_update;",
]
SQL = {"postgresql": (PG_INSTALL, PG_REMOVE), "sqlite": (SQLITE_INSTALL, SQLITE_REMOVE)}


def _run(schema_editor, index):
    statements = SQL.get(schema_editor.connection.vendor)
    if statements is None:
        return  # other databases: the services alone
    for sql in statements[index]:
        schema_editor.execute(sql, None)  # None: the plpgsql "%" are not placeholders


def install(apps, schema_editor):
    _run(schema_editor, 0)


def remove(apps, schema_editor):
    _run(schema_editor, 1)


class Migration(migrations.Migration):
    dependencies = [("datasets", "0001_initial")]
    operations = [migrations.RunPython(install, remove, elidable=False)]

"""The database itself refuses to change audit rows: UPDATE, DELETE (and TRUNCATE on PostgreSQL).

The application never issues these statements; the triggers stop everyone else (a script, a
mistaken admin query, a compromised app role without the table-owner rights to drop them).
The hash chain and the daily digests catch what the triggers cannot (a superuser).

Careful with later migrations of this table on SQLite: an AlterField there rebuilds the table
and silently drops these triggers, so such a migration must re-run ``install`` afterwards
(tests/audit/test_tamper.py fails if the triggers are missing).
"""

from django.db import migrations

TABLE = "audit_auditevent"

PG_INSTALL = [
    f"""
    CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END
    $$;
    """,
    f"""
    CREATE TRIGGER audit_auditevent_no_update_delete
        BEFORE UPDATE OR DELETE ON {TABLE}
        FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
    """,
    f"""
    CREATE TRIGGER audit_auditevent_no_truncate
        BEFORE TRUNCATE ON {TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
    """,
]
PG_REMOVE = [
    f"DROP TRIGGER IF EXISTS audit_auditevent_no_truncate ON {TABLE};",
    f"DROP TRIGGER IF EXISTS audit_auditevent_no_update_delete ON {TABLE};",
    "DROP FUNCTION IF EXISTS audit_refuse_change();",
]
# SQLite has no TRUNCATE (it is a DELETE), and no statement-level triggers.
SQLITE_INSTALL = [
    f"""
    CREATE TRIGGER IF NOT EXISTS audit_auditevent_no_update BEFORE UPDATE ON {TABLE}
    BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE refused'); END;
    """,
    f"""
    CREATE TRIGGER IF NOT EXISTS audit_auditevent_no_delete BEFORE DELETE ON {TABLE}
    BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: DELETE refused'); END;
    """,
]
SQLITE_REMOVE = [
    "DROP TRIGGER IF EXISTS audit_auditevent_no_update;",
    "DROP TRIGGER IF EXISTS audit_auditevent_no_delete;",
]
SQL = {
    "postgresql": (PG_INSTALL, PG_REMOVE),
    "sqlite": (SQLITE_INSTALL, SQLITE_REMOVE),
}


def _run(schema_editor, index):
    statements = SQL.get(schema_editor.connection.vendor)
    if statements is None:
        return  # other databases: the hash chain alone
    for sql in statements[index]:
        schema_editor.execute(sql, None)  # None: the plpgsql "%" are not placeholders


def install(apps, schema_editor):
    _run(schema_editor, 0)


def remove(apps, schema_editor):
    _run(schema_editor, 1)


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [migrations.RunPython(install, remove, elidable=False)]

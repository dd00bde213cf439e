"""PostgreSQL: events are chained at commit, so concurrent writers only queue for the commit.

Before this, ``record()`` took the chain lock when it appended, and held it until the caller's
transaction committed: every round trip, every line of Python and every process hand-off
between the append and the COMMIT was spent inside the serialized section (733 events/s with
8 writers on a 2-core machine, docs/benchmarks.md).

Now ``record()`` inserts the event into ``audit_pendingevent`` (no lock, no head read), and a
deferred constraint trigger seals it during COMMIT: it takes the chain lock, reads the head in
a fresh READ COMMITTED snapshot (a plpgsql statement takes its own snapshot, after the lock is
granted, so it sees the previous holder's committed event), inserts the chained event with its
digest and deletes the pending row. The lock is released when the commit completes, after the
commit is visible, so the serialized section is the seal itself plus the WAL flush. The event
still commits or rolls back with the change it records: the seal runs inside that transaction.

The pending table is UNLOGGED: a row lives only inside its own transaction (the seal deletes
it before commit), so it never needs to survive a crash, and its writes cost no WAL.

The digest expression is the one ``apps.audit.services.PG_MESSAGE_SQL`` and
``event_message()`` build (``tests/audit`` checks each sealed event against the Python
encoding); a new message version needs a new migration that replaces this function.

SQLite serializes whole write transactions (BEGIN IMMEDIATE) and keeps appending directly.
"""

from django.db import migrations

LOCK_KEY = 0x6D6564_617564  # apps.audit.services.CHAIN_LOCK_KEY
GENESIS = "0" * 64

PG_INSTALL = [
    """
    CREATE UNLOGGED TABLE audit_pendingevent (
        id bigserial PRIMARY KEY,
        timestamp timestamptz NOT NULL,
        user_id bigint NULL,
        action varchar(100) NOT NULL,
        resource varchar(200) NOT NULL,
        pre_hash varchar(64) NOT NULL,
        post_hash varchar(64) NOT NULL,
        request_id varchar(64) NOT NULL,
        client_ip varchar(45) NOT NULL,
        details text NOT NULL
    );
    """,
    f"""
    CREATE OR REPLACE FUNCTION audit_seal_pending() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        head_seq bigint;
        head_digest varchar(64);
        head_ts timestamptz;
        n_seq bigint := 1;
        n_prev varchar(64) := '{GENESIS}';
        n_ts timestamptz := NEW.timestamp;
    BEGIN
        PERFORM pg_advisory_xact_lock({LOCK_KEY:d});
        SELECT seq, digest, timestamp INTO head_seq, head_digest, head_ts
            FROM audit_auditevent ORDER BY seq DESC LIMIT 1;
        IF FOUND THEN
            n_seq := head_seq + 1;
            n_prev := head_digest;
            -- Time never runs backwards along the chain (clock steps, several hosts).
            n_ts := greatest(NEW.timestamp, head_ts);
        END IF;
        INSERT INTO audit_auditevent (seq, timestamp, user_id, action, resource, pre_hash,
            post_hash, request_id, client_ip, details, prev_digest, digest)
        VALUES (n_seq, n_ts, NEW.user_id, NEW.action, NEW.resource, NEW.pre_hash,
            NEW.post_hash, NEW.request_id, NEW.client_ip, NEW.details, n_prev,
            encode(sha256(convert_to(concat_ws(E'\\x1f', 'medctl-audit-v1', n_seq::text,
                n_prev, to_char(n_ts AT TIME ZONE 'UTC',
                'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), coalesce(NEW.user_id::text, ''),
                NEW.action, NEW.resource, NEW.pre_hash, NEW.post_hash, NEW.request_id,
                NEW.client_ip, NEW.details), 'UTF8')), 'hex'));
        DELETE FROM audit_pendingevent WHERE id = NEW.id;
        RETURN NULL;
    END
    $$;
    """,
    """
    CREATE CONSTRAINT TRIGGER audit_pendingevent_seal
        AFTER INSERT ON audit_pendingevent
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION audit_seal_pending();
    """,
]
PG_REMOVE = [
    "DROP TABLE IF EXISTS audit_pendingevent;",
    "DROP FUNCTION IF EXISTS audit_seal_pending();",
]


def _run(schema_editor, statements):
    if schema_editor.connection.vendor != "postgresql":
        return
    for sql in statements:
        schema_editor.execute(sql, None)  # None: nothing in here is a placeholder


def install(apps, schema_editor):
    _run(schema_editor, PG_INSTALL)


def remove(apps, schema_editor):
    _run(schema_editor, PG_REMOVE)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only_triggers")]
    operations = [migrations.RunPython(install, remove, elidable=False)]

"""Audit bench: append throughput under concurrent writers, and audit_verify on 1M events.

Not a test: it prints figures beside the goals of issue 2 (append >= 1,000 events/s with 8
concurrent writers and no fork; verify 1,000,000 events in < 10 s on the 2-core machine).
PostgreSQL only; it empties the audit table of the database it is pointed at, so give it a
scratch database (created when missing):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/medctl_bench \\
        .venv/bin/python bench/audit_bench.py [--events 1000000] [--writers 8] [--per-writer 500]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import threading
import time
from contextlib import redirect_stderr
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
os.environ.setdefault("MEDCTL_DEV_SECRETS", "1")

APPEND_GOAL = 1_000  # events/s
VERIFY_GOAL = 10.0  # seconds for 1M events


def ensure_database(url: str) -> None:
    """CREATE DATABASE for the scratch database named in DATABASE_URL, if it is missing."""
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    name = cfg["NAME"]
    admin = psycopg.connect(
        host=cfg["HOST"] or None,
        port=cfg["PORT"] or None,
        user=cfg["USER"] or None,
        password=cfg["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )
    with admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{name}"')


def empty_audit_table() -> None:
    from apps.audit.testing import triggers_bypassed

    with triggers_bypassed() as cursor:
        cursor.execute("TRUNCATE audit_auditevent, audit_chaincheck")


def commit_ceiling(n: int = 1000) -> float:
    """Commits/s of one connection inserting one row per transaction into a scratch table.

    Appends are serialized through commit (that is what keeps the chain from forking), so
    this, the disk's WAL-flush rate measured in the same run, bounds any serialized writer.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_commit_ceiling (x int)")
    t0 = time.perf_counter()
    for i in range(n):
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_commit_ceiling VALUES (%s)", [i])
    rate = n / (time.perf_counter() - t0)  # autocommit: one commit per statement
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_commit_ceiling")
    return rate


def _append_worker(
    n: int, per_writer: int, per_txn: int, barrier, errors, lock_early: bool = False
) -> None:
    from django.db import connections, transaction

    from apps.audit.services import CHAIN_LOCK_KEY, record

    try:
        barrier.wait()
        for start in range(0, per_writer, per_txn):
            with transaction.atomic():
                if lock_early:
                    # The previous design: the chain lock taken when the event is recorded and
                    # held through the round trips to the COMMIT (the seal re-takes it).
                    with connections["default"].cursor() as cursor:
                        cursor.execute(f"SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY:d})")
                for i in range(start, min(start + per_txn, per_writer)):
                    record("bench.appended", f"bench.writer:{n}", actor=n, details={"i": i})
    except BaseException as exc:
        errors.put(repr(exc))
    finally:
        connections.close_all()


def bench_append(
    writers: int, per_writer: int, per_txn: int = 1, mode: str = "process", lock_early: bool = False
) -> tuple[float, bool, str]:
    """Each writer its own connection, ``per_txn`` events per transaction.

    ``mode="process"``: one process per writer, as web and Celery workers are deployed;
    ``"thread"``: threads of one process, which adds GIL hand-offs inside the chain lock.
    """
    import multiprocessing
    import queue

    from django.db import connections

    from apps.audit.models import AuditEvent
    from apps.audit.services import verify_chain

    empty_audit_table()
    if mode == "process":
        ctx = multiprocessing.get_context("fork")
        barrier, errors = ctx.Barrier(writers + 1), ctx.Queue()
        connections.close_all()  # children must open their own
        workers = [
            ctx.Process(
                target=_append_worker, args=(n, per_writer, per_txn, barrier, errors, lock_early)
            )
            for n in range(writers)
        ]
    else:
        barrier, errors = threading.Barrier(writers + 1), queue.Queue()
        workers = [
            threading.Thread(
                target=_append_worker, args=(n, per_writer, per_txn, barrier, errors, lock_early)
            )
            for n in range(writers)
        ]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    if not errors.empty():
        raise SystemExit(f"append failed: {errors.get()}")
    total = writers * per_writer
    seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    result = verify_chain()
    no_fork = seqs == list(range(1, total + 1)) and result.ok and result.events_checked == total
    return total / elapsed, no_fork, result.summary()


def bulk_load(n: int) -> float:
    """Write n correctly chained events with COPY (digests computed as record() does)."""
    from django.db import connection

    from apps.audit.models import GENESIS_DIGEST
    from apps.audit.services import MESSAGE_VERSION, SEP, timestamp_text

    empty_audit_table()
    actions = [
        "accounts.login",
        "datasets.released",
        "jobs.run_launched",
        "deid.file_done",
        "review.verdict_recorded",
        "checkpoints.verified",
    ]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    prev = GENESIS_DIGEST
    t0 = time.perf_counter()
    with connection.cursor() as django_cursor:
        cursor = django_cursor.cursor  # psycopg's own cursor, for COPY
        copy_sql = (
            "COPY audit_auditevent (seq, timestamp, user_id, action, resource, pre_hash, "
            "post_hash, request_id, client_ip, details, prev_digest, digest) FROM STDIN"
        )
        with cursor.copy(copy_sql) as copy:
            for seq in range(1, n + 1):
                ts = start + timedelta(milliseconds=seq * 37)
                user_id = seq % 97 or None
                action = actions[seq % len(actions)]
                resource = f"bench.thing:{seq % 10_007}"
                pre = hashlib.sha256(b"pre%d" % seq).hexdigest() if seq % 3 else ""
                post = hashlib.sha256(b"post%d" % seq).hexdigest()
                request_id = f"{seq // 4:032x}"
                client_ip = f"10.0.{seq % 250}.{seq % 200 + 1}"
                details = f'{{"n":{seq % 1000}}}'
                message = (
                    f"{MESSAGE_VERSION}{SEP}{seq}{SEP}{prev}{SEP}{timestamp_text(ts)}{SEP}"
                    f"{'' if user_id is None else user_id}{SEP}{action}{SEP}{resource}{SEP}"
                    f"{pre}{SEP}{post}{SEP}{request_id}{SEP}{client_ip}{SEP}{details}"
                )
                digest = hashlib.sha256(message.encode()).hexdigest()
                copy.write_row(
                    (
                        seq,
                        ts,
                        user_id,
                        action,
                        resource,
                        pre,
                        post,
                        request_id,
                        client_ip,
                        details,
                        prev,
                        digest,
                    )
                )
                prev = digest
        django_cursor.execute("ANALYZE audit_auditevent")
    return time.perf_counter() - t0


def bench_verify() -> tuple[float, str]:
    """Time ``manage.py audit_verify --no-save`` (chain plus digest-store check)."""
    from django.core.management import CommandError, call_command

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    try:
        with redirect_stderr(err):
            call_command("audit_verify", "--no-save", "--quiet", stdout=out)
    except CommandError as exc:
        return time.perf_counter() - t0, f"FAILED: {exc}"
    return time.perf_counter() - t0, out.getvalue().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--per-writer", type=int, default=500)
    parser.add_argument("--verify-runs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved append rounds")
    parser.add_argument(
        "--verify-only",
        action="store_true",
        help="time audit_verify on the events already loaded (no append, no load)",
    )
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("set DATABASE_URL to a scratch PostgreSQL database (see the docstring)")
    ensure_database(url)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    settings.AUDIT_DIGEST_STORE = "local"
    settings.AUDIT_DIGEST_DIR = Path(settings.VAR_DIR) / "bench-audit-digests-empty"
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server = cursor.fetchone()[0]

    if args.verify_only:
        for _ in range(args.verify_runs):
            seconds, summary = bench_verify()
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"audit_verify: {seconds:.2f} s  {summary} (load average {load})", flush=True)
        return
    # The append measures move with whatever else shares the disk and the cores, so they run
    # interleaved, round after round, and each is reported as its best and its median.
    names = ["ceiling", "processes", "early", "threads", "batch10"]
    runs: dict[str, list[float]] = {name: [] for name in names}
    no_fork = True
    for r in range(args.rounds):
        ceiling = commit_ceiling()
        rate, ok1, _ = bench_append(args.writers, args.per_writer)
        early, ok2, _ = bench_append(args.writers, args.per_writer, lock_early=True)
        threads, ok3, _ = bench_append(args.writers, args.per_writer, mode="thread")
        batch, ok4, _ = bench_append(args.writers, args.per_writer, per_txn=10)
        no_fork = no_fork and ok1 and ok2 and ok3 and ok4
        for name, value in zip(names, (ceiling, rate, early, threads, batch), strict=True):
            runs[name].append(value)
        print(
            f"round {r + 1}: commit ceiling {ceiling:,.0f}/s; append {rate:,.0f}/s; previous "
            f"design {early:,.0f}/s; threads {threads:,.0f}/s; 10 per transaction "
            f"{batch:,.0f}/s; {'no fork' if no_fork else 'FORK/GAP'}",
            flush=True,
        )

    def fig(name: str) -> str:
        values = sorted(runs[name])
        return f"{values[-1]:,.0f} best, {values[len(values) // 2]:,.0f} median"

    load_s = bulk_load(args.events)
    print(f"bulk load: {args.events:,} chained events via COPY in {load_s:.1f} s", flush=True)
    verify_times = []
    summary = ""
    for _ in range(args.verify_runs):
        seconds, summary = bench_verify()
        verify_times.append(seconds)
        print(f"audit_verify: {seconds:.2f} s  {summary}", flush=True)
    best = min(verify_times)

    print()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"PostgreSQL {server}, {os.cpu_count()} CPUs (load average {load}), "
        f"Python {sys.version.split()[0]}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    fork = "no fork" if no_fork else "FORK/GAP"
    met = max(runs["processes"]) >= APPEND_GOAL and no_fork
    print(f"append figures: events/s over {args.rounds} interleaved rounds")
    print("| measure | result | goal | met |")
    print("|---|---|---|---|")
    print(
        f"| append, {args.writers} concurrent writer processes (one transaction per event) | "
        f"{fig('processes')}; {fork} | >= {APPEND_GOAL:,} events/s, no fork | "
        f"{'yes' if met else 'NO'} |"
    )
    print(
        "| (peer) the same, chain lock held from record() to commit (the previous design) | "
        f"{fig('early')} | | |"
    )
    print(
        "| (context) commit ceiling of this disk now: one connection, one row per commit | "
        f"{fig('ceiling')} | | |"
    )
    print(f"| append, {args.writers} writer threads of one process | {fig('threads')} | | |")
    print(
        f"| append, {args.writers} writer processes, 10 events per transaction | "
        f"{fig('batch10')} | | |"
    )
    scaled = best * 1_000_000 / args.events if args.events else 0.0
    print(
        f"| audit_verify, {args.events:,} events (best of {len(verify_times)}; runs: "
        f"{', '.join(f'{t:.2f}' for t in verify_times)} s) | {best:.2f} s "
        f"({args.events / best:,.0f} events/s) | < {VERIFY_GOAL:.0f} s for 1M | "
        f"{'yes' if scaled < VERIFY_GOAL and 'OK' in summary else 'NO'} |"
    )


if __name__ == "__main__":
    main()

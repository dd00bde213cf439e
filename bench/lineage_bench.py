"""Lineage bench: the lineage queries of a large version, beside the database's own speed.

Not a test: it prints figures. It builds a scratch test database (SQLite by default, or the
PostgreSQL of ``DATABASE_URL``) holding one ready version of ``--patients`` patients with
``--files`` packed files each (raw files, de-id results and lineage rows made with
bulk inserts), records that training run 1 read it, withdraws ``--withdrawn`` patients' consent,
then times:

- **every file behind a run as CSV** (``reports.consumer_rows``, what
  ``/datasets/lineage/of/jobs.trainingrun/1/files.csv`` and ``manage.py lineage --run 1``
  stream) against the ceiling: the same SELECT run through the bare database cursor and
  the same ``csv.writer``, no ORM objects;
- **a patient's reach** (``reach_of_patient``: the consent-withdrawal report), median over
  random patients, against one indexed SELECT of that patient's rows;
- **the withdrawal checks** a page or a launch runs: ``withdrawn_samples(version)``,
  ``trainable_versions()`` and ``versions_holding_withdrawn``.

    .venv/bin/python bench/lineage_bench.py [--patients 20000] [--files 10] [--withdrawn 50]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/lineage_bench.py
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import statistics
import time

from scratch_db import scratch_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20000)
    parser.add_argument("--files", type=int, default=10, help="packed files per patient")
    parser.add_argument("--withdrawn", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20, help="patients timed for the reach")
    args = parser.parse_args()

    with scratch_database():
        run_bench(args)


def populate(patients: int, files: int) -> tuple[object, list[str]]:
    """One ready version: ``patients`` × ``files`` packed files, 4 files per sample."""
    from django.utils import timezone

    from apps.datasets.models import DatasetMember, DatasetVersion
    from apps.deid.models import DeidFileResult, DeidRun
    from apps.inventory.models import DataSource, IngestBatch, RawFile

    source = DataSource.objects.create(source="bench", type="MIXED", owner="bench")
    batch = IngestBatch.objects.create(source=source, status=IngestBatch.Status.DONE)
    run = DeidRun.objects.create(
        batch=batch,
        profile_fingerprint="bench",
        status=DeidRun.Status.DONE,
        output_root="/nonexistent",
        released_at=timezone.now(),
    )
    version = DatasetVersion.objects.create(
        name="bench", number=1, status="ready", target_shard_mb=64, root="/nonexistent"
    )
    version.runs.add(run)
    pseudonyms = [f"P{n:012d}" for n in range(patients)]
    chunk = 5000
    total = patients * files
    for start in range(0, total, chunk):
        idx = range(start, min(start + chunk, total))
        raws = RawFile.objects.bulk_create(
            RawFile(
                batch=batch,
                source=source,
                relpath=f"p{i // files}/f{i % files}.dcm",
                sha256=f"{i:064x}",
                size=1000,
                kind="dicom",
            )
            for i in idx
        )
        results = DeidFileResult.objects.bulk_create(
            DeidFileResult(
                run=run,
                raw_file=raw,
                status="ok",
                kind="dicom",
                input_sha256=raw.sha256,
                output_relpath=raw.relpath,
                output_sha256=raw.sha256,
                patient_pseudonym=pseudonyms[i // files],
            )
            for i, raw in zip(idx, raws, strict=True)
        )
        DatasetMember.objects.bulk_create(
            DatasetMember(
                version=version,
                deid_result=result,
                raw_file=raw,
                run=run,
                sample_key=f"s{i // files:08d}-{(i % files) // 4}",
                member="img",
                patient_pseudonym=pseudonyms[i // files],
            )
            for i, raw, result in zip(idx, raws, results, strict=True)
        )
        print(f"\rpopulating: {min(start + chunk, total):,}/{total:,} files", end="", flush=True)
    print()
    return version, pseudonyms


def timed(fn, repeat: int = 1) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_bench(args: argparse.Namespace) -> None:
    from django.db import connection

    from apps.datasets import reports, services
    from apps.datasets.models import ConsentWithdrawal, DatasetMember

    vendor = connection.vendor
    t0 = time.perf_counter()
    version, pseudonyms = populate(args.patients, args.files)
    total = args.patients * args.files
    print(
        f"{vendor}: {total:,} packed files of {args.patients:,} patients in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    services.record_dataset_use(
        version, consumer_kind="jobs.trainingrun", consumer_id="1", acting_user=None
    )
    rng = random.Random(7)
    withdrawn = rng.sample(pseudonyms, min(args.withdrawn, len(pseudonyms)))
    ConsentWithdrawal.objects.bulk_create(
        ConsentWithdrawal(patient_pseudonym=p, reference="BENCH") for p in withdrawn
    )

    # -- every file behind the run, as CSV ------------------------------------------------
    def ours() -> int:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(reports.CONSUMER_HEADER)
        n = 0
        for row in reports.consumer_rows("jobs.trainingrun", "1"):
            writer.writerow(row)
            n += 1
        assert n == total, n
        return n

    members = DatasetMember._meta.db_table
    raw_table = DatasetMember._meta.get_field("raw_file").related_model._meta.db_table
    version_table = DatasetMember._meta.get_field("version").related_model._meta.db_table
    sql = (
        f"SELECT m.version_id, v.name, m.sample_key, m.member, m.raw_file_id, r.sha256, "
        f"r.source_id, r.batch_id, m.run_id FROM {members} m "
        f"JOIN {raw_table} r ON r.id = m.raw_file_id JOIN {version_table} v ON v.id = m.version_id "
        f"WHERE m.version_id = %s ORDER BY m.version_id, m.sample_key, m.raw_file_id"
    )

    def ceiling() -> int:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(reports.CONSUMER_HEADER)
        n = 0
        with connection.cursor() as cursor:
            cursor.execute(sql, [version.pk])
            while rows := cursor.fetchmany(2000):
                writer.writerows(rows)
                n += len(rows)
        assert n == total, n
        return n

    ours_s = min(timed(ours, 3))
    ceiling_s = min(timed(ceiling, 3))
    print()
    print("| what | ours | ceiling | ours / ceiling |")
    print("|---|---|---|---|")
    print(
        f"| every file behind a run as CSV ({total:,} rows) | {total / ours_s:,.0f} rows/s "
        f"({ours_s:.2f} s) | {total / ceiling_s:,.0f} rows/s ({ceiling_s:.2f} s), bare cursor "
        f"| {ceiling_s / ours_s:.0%} |"
    )

    # -- a patient's reach ----------------------------------------------------------------
    sample = rng.sample(pseudonyms, min(args.repeat, len(pseudonyms)))
    reach_ms = [timed(lambda p=p: services.reach_of_patient(p))[0] * 1000 for p in sample]

    def bare(p: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT version_id, sample_key, raw_file_id FROM {members} "
                "WHERE patient_pseudonym = %s",
                [p],
            )
            cursor.fetchall()

    bare_ms = [timed(lambda p=p: bare(p))[0] * 1000 for p in sample]
    print(
        f"| a patient's reach (median of {len(sample)}) | {statistics.median(reach_ms):.1f} ms "
        f"| {statistics.median(bare_ms):.2f} ms, one indexed SELECT | "
        f"{statistics.median(bare_ms) / statistics.median(reach_ms):.0%} |"
    )

    # -- the withdrawal checks ------------------------------------------------------------
    checks = {
        "withdrawn_samples(version)": lambda: services.withdrawn_samples(version),
        "trainable_versions()": lambda: list(services.trainable_versions()),
        "versions_holding_withdrawn([v])": lambda: services.versions_holding_withdrawn(
            [version.pk]
        ),
        "lineage page head (Paginator count)": lambda: services.lineage_of_consumer(
            "jobs.trainingrun", "1"
        ).count(),
    }
    for name, fn in checks.items():
        ms = statistics.median(timed(fn, 5)) * 1000
        print(f"| {name}, {len(withdrawn)} withdrawals | {ms:.1f} ms | | |")


if __name__ == "__main__":
    main()

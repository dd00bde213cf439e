"""The lineage reports as rows: where raw data went (the consent-withdrawal report) and what
data is behind a training run. The pages' CSV downloads and ``manage.py lineage`` write the
same rows, ids and hashes only.
"""

from __future__ import annotations

from collections.abc import Iterator

from apps.datasets import services

REACH_HEADER = (
    "subject",
    "row",
    "version_id",
    "version",
    "sample_key",
    "member",
    "raw_file_id",
    "deid_run_id",
    "consumer_kind",
    "consumer_id",
)

CONSUMER_HEADER = (
    "version_id",
    "version",
    "sample_key",
    "member",
    "raw_file_id",
    "raw_sha256",
    "source_id",
    "ingest_batch_id",
    "deid_run_id",
)


def cell(text: str) -> str:
    """A CSV cell a spreadsheet shows and never runs as a formula."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") else text


def search(q: str, kind: str = "auto") -> list[services.Reach]:
    """The reach of what ``q`` names: raw files by id or SHA-256 (``kind="raw"``), a patient
    pseudonym (``"patient"``), or whichever matches (``"auto"``: raw files first)."""
    reports: list[services.Reach] = []
    if kind in ("auto", "raw"):
        reports = [services.reach_of_raw_file(f) for f in services.find_raw_files(q)[:20]]
    if kind == "patient" or (kind == "auto" and not reports):
        reach = services.reach_of_patient(q)
        reports = [reach] if reach.found else []
    return reports


def reach_rows(reports: list[services.Reach]) -> Iterator[list[str | int]]:
    """One row per packed file and per consumer of each report (after ``REACH_HEADER``)."""
    for report in reports:
        members = report.members
        if members is not None:
            for m in members.order_by("version_id", "sample_key", "raw_file_id"):
                yield [
                    report.subject,
                    "file",
                    m.version_id,
                    cell(m.version.label),
                    cell(m.sample_key),
                    m.member,
                    m.raw_file_id,
                    m.run_id,
                    "",
                    "",
                ]
        for use in report.uses:
            yield [
                report.subject,
                "use",
                use.version_id,
                cell(use.version.label),
                "",
                "",
                "",
                "",
                use.consumer_kind,
                # Consumer ids come from other apps: keep spreadsheets from running them.
                cell(use.consumer_id),
            ]


def consumer_rows(consumer_kind: str, consumer_id: str) -> Iterator[list[str | int]]:
    """Every file behind a training run (after ``CONSUMER_HEADER``), read in chunks: a large
    run's versions hold millions of files."""
    # Tuples, not model instances: building three objects per row cost 95 % of the time
    # (bench/lineage_bench.py).
    rows = services.lineage_of_consumer(consumer_kind, consumer_id).values_list(
        "version_id",
        "version__name",
        "version__number",
        "sample_key",
        "member",
        "raw_file_id",
        "raw_file__sha256",
        "raw_file__source_id",
        "raw_file__batch_id",
        "run_id",
    )
    labels: dict[int, str] = {}
    for version_id, name, number, key, member, raw_id, sha, source, batch, run in rows.iterator(
        chunk_size=2000
    ):
        label = labels.get(version_id)
        if label is None:
            label = labels[version_id] = cell(f"{name} v{number}")
        yield [version_id, label, cell(key), member, raw_id, sha, source, batch, run]

"""Jobs bench: the runs pages and a reconcile pass with 10,000 runs and 50,000 attempts.

Not a test: it prints figures for issue 7 ("the runs list and reconcile pass with 10,000 runs
and 50,000 attempts in the database — page p95 latency and reconcile time"). It builds a
scratch test database (SQLite by default, PostgreSQL with DATABASE_URL), bulk-loads runs with
five attempts each (each attempt carrying a real rendered batch script), 1,000 of them still
queued in the scheduler, then times with Django's test client (whole requests: middleware,
access check, queries, template) and one reconcile pass against an in-memory scheduler that
answers for all 1,000 jobs in one call (as Slurm's one status call does):

    .venv/bin/python bench/jobs_bench.py [--runs 10000] [--attempts 5] [--active 1000] \
        [--repeat 30]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/medctl_bench \
        .venv/bin/python bench/jobs_bench.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from scratch_db import scratch_database

PAGE_GOAL_MS = 200.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--attempts", type=int, default=5, help="attempts per run")
    parser.add_argument("--active", type=int, default=1_000, help="runs still in the queue")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    with scratch_database(JOBS_RUNS_ROOT=tempfile.mkdtemp(prefix="jobs-bench-")):
        run_bench(args)


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


class BenchScheduler:
    """Answers status for every job in one call; every queued job is now RUNNING."""

    name = "bench"

    def status(self, job_ids):
        from apps.jobs.schedulers import JobState

        return {j: JobState(job_id=j, state="RUNNING", nodes="gpu01") for j in job_ids}

    def logs(self, job_id, tail_bytes=65536):
        return "step 100 loss 2.31\n" * 20

    def cluster_info(self):  # not used
        raise NotImplementedError


def load(args) -> tuple[object, int]:
    from django.db import connection

    from apps.core.roles import OPERATOR
    from apps.core.testing import make_user
    from apps.datasets.models import DatasetVersion
    from apps.jobs.models import Attempt, AttemptState, RunState, TrainingRun
    from apps.jobs.rendering import render
    from apps.jobs.validation import RunSpec, plan_run

    operator = make_user("bench-operator", OPERATOR)
    version = DatasetVersion.objects.create(
        name="bench",
        number=1,
        status="ready",
        root="/lustre/datasets/bench-v1",
        target_shard_mb=64,
        shard_count=4096,
    )
    spec = RunSpec(
        name="bench",
        preset="70b",
        dataset_version_id=version.pk,
        nodes=8,
        gpus_per_node=8,
        data_parallel=64,
        engine="deepspeed",
        zero_stage=3,
        offload_optimizer=True,
        micro_batch_size=2,
        global_batch_size=2048,
        seq_len=8192,
        partition="gpu-prod",
        scheduler="slurm",
    )
    plan = plan_run(spec, shard_count=4096)
    script = render(
        spec,
        run_id=1,
        attempt=1,
        dataset_root=version.root,
        grad_accum_steps=plan.grad_accum_steps,
        scheduler="slurm",
    ).script
    t0 = time.perf_counter()
    states = [RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED]
    runs = [
        TrainingRun(
            name=f"run-{i:05d}",
            preset="70b",
            dataset_version=version,
            nodes=8,
            gpus_per_node=8,
            data_parallel=64,
            micro_batch_size=2,
            global_batch_size=2048,
            seq_len=8192,
            partition="gpu-prod",
            scheduler="bench",
            created_by=operator,
            state=RunState.QUEUED if i < args.active else states[i % 3],
            plan=plan.as_dict(),
        )
        for i in range(args.runs)
    ]
    TrainingRun.objects.bulk_create(runs, batch_size=2000)
    ids = list(TrainingRun.objects.order_by("pk").values_list("pk", flat=True))
    attempts = []
    job = 1000
    for i, run_id in enumerate(ids):
        for n in range(1, args.attempts + 1):
            job += 1
            active = i < args.active and n == args.attempts
            attempts.append(
                Attempt(
                    run_id=run_id,
                    number=n,
                    token=f"medctl-r{run_id}-a{n}-bench",
                    script=script,
                    job_id=str(job),
                    state=AttemptState.PENDING if active else AttemptState.NODE_FAIL,
                    reason="Resources" if active else "",
                    submitted_via="bench",
                    submitted_as="svc",
                )
            )
        if len(attempts) >= 10_000:
            Attempt.objects.bulk_create(attempts, batch_size=2000)
            attempts = []
    Attempt.objects.bulk_create(attempts, batch_size=2000)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE jobs_trainingrun; ANALYZE jobs_attempt;")
    print(
        f"loaded {len(ids)} runs and {Attempt.objects.count()} attempts "
        f"({args.active} queued) in {time.perf_counter() - t0:.1f} s on {connection.vendor}"
    )
    return operator, ids[0]


def run_bench(args) -> None:
    from apps.core.testing import client_for
    from apps.jobs import services

    operator, first_id = load(args)
    scheduler = BenchScheduler()
    services.service_scheduler = lambda name: scheduler  # the bench's stand-in cluster
    client = client_for(operator)

    def get(url: str) -> None:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)

    pages = [
        ("runs list, first page (50 runs)", "/jobs/"),
        ("runs list, state=queued", "/jobs/?state=queued"),
        ("runs list, page 100", "/jobs/?page=100"),
        ("API runs list (100 runs + current attempt)", "/api/jobs/runs/"),
        ("run detail (5 attempts with scripts)", f"/jobs/runs/{first_id}/"),
    ]
    for _, url in pages:
        get(url)  # warm templates, URL resolver, role cache
    print(f"{args.repeat} requests each, Django test client")
    for label, url in pages:
        values = timed(lambda url=url: get(url), args.repeat)
        med = statistics.median(values)
        p95 = sorted(values)[max(0, int(len(values) * 0.95) - 1)]
        verdict = "ok" if p95 < PAGE_GOAL_MS else "OVER"
        print(
            f"{label:<46} median {med:7.1f} ms   p95 {p95:7.1f} ms   "
            f"(<{PAGE_GOAL_MS:.0f} ms: {verdict})"
        )

    from apps.core.context import bound_context

    with bound_context():
        t0 = time.perf_counter()
        first = services.reconcile()
        t1 = time.perf_counter()
        second = services.reconcile()
        t2 = time.perf_counter()
    print(
        f"reconcile pass, {first.polled} queued -> RUNNING: {t1 - t0:.2f} s "
        f"({first.changed} changed, {(t1 - t0) / max(first.changed, 1) * 1000:.1f} ms each, "
        "audited)"
    )
    print(
        f"reconcile pass, nothing changed:           {t2 - t1:.2f} s "
        f"({second.polled} polled, {second.changed} changed)"
    )


if __name__ == "__main__":
    main()

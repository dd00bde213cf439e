"""Launch, submit, reconcile, cancel, requeue, resume and auto-requeue, against an in-memory
scheduler whose every state the test sets (fast and exact)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.audit.models import AuditEvent
from apps.jobs import services
from apps.jobs.models import Attempt, AttemptState, RunState, TrainingRun
from apps.jobs.validation import RunSpec

pytestmark = pytest.mark.django_db


@pytest.fixture
def launched(fake, run_tasks, make_spec, operator):
    """A run launched by the operator and submitted (its job PENDING in the fake)."""
    run = services.launch_run(make_spec(), acting_user=operator)
    run_tasks()
    return run


def attempt_of(run: TrainingRun, number: int = 1) -> Attempt:
    return run.attempts.get(number=number)


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))


def test_launch_creates_the_run_and_its_first_attempt_and_submits_once(
    fake, run_tasks, make_spec, operator
):
    run = services.launch_run(make_spec(), acting_user=operator)
    attempt = attempt_of(run)
    assert run.state == RunState.SUBMITTING
    assert attempt.state == AttemptState.CREATED and attempt.script.startswith("#!/bin/bash")
    assert run_tasks() == 1
    attempt.refresh_from_db()
    run.refresh_from_db()
    assert attempt.state == AttemptState.PENDING and attempt.job_id == "100"
    assert run.state == RunState.QUEUED
    assert fake.submits == 1
    comment = fake.specs["100"].comment
    assert attempt.token in comment and "operator:u_operator" in comment
    assert attempt.submitted_as == "svc-medctl"


def test_launch_records_lineage_and_audit_events(launched):
    from apps.datasets.models import DatasetUse

    use = DatasetUse.objects.get(consumer_kind="jobs.trainingrun", consumer_id=str(launched.pk))
    assert use.version_id == launched.dataset_version_id
    assert actions()[:4] == [
        "jobs.run_launched",
        "datasets.dataset_use_recorded",
        "jobs.attempt_submitted",
        "jobs.run_state_changed",
    ]
    event = AuditEvent.objects.get(action="jobs.run_launched")
    assert event.resource == f"jobs.trainingrun:{launched.pk}"
    assert json.loads(event.details_json)["preset"] == "tiny"


def test_launch_refuses_an_invalid_spec_with_every_error(fake, make_spec, make_version, operator):
    building = make_version(status="building")
    with pytest.raises(services.LaunchRefused) as caught:
        services.launch_run(
            make_spec(dataset_version_id=building.pk, data_parallel=2), acting_user=operator
        )
    assert {"dataset_version", "data_parallel"} <= set(caught.value.plan.errors)
    assert TrainingRun.objects.count() == 0


def test_a_retry_after_a_crash_between_submit_and_record_submits_once(
    fake, no_task_queue, make_spec, operator, monkeypatch
):
    run = services.launch_run(make_spec(), acting_user=operator)
    attempt = attempt_of(run)
    real_submit = fake.submit

    def submit_then_crash(spec):
        real_submit(spec)
        raise SystemExit("worker killed right after the scheduler accepted the job")

    monkeypatch.setattr(fake, "submit", submit_then_crash)
    with pytest.raises(SystemExit):
        services.submit_attempt(attempt.pk)
    monkeypatch.setattr(fake, "submit", real_submit)
    # The crashed worker's lease runs out; Celery redelivers the message (acks_late).
    Attempt.objects.filter(pk=attempt.pk).update(claimed_until=None)
    outcome = services.submit_attempt(attempt.pk)
    assert outcome.job_id == "100"
    assert fake.submits == 1
    attempt.refresh_from_db()
    assert attempt.job_id == "100" and attempt.state == AttemptState.PENDING


def test_two_workers_never_submit_the_same_attempt_at_once(
    fake, no_task_queue, make_spec, operator
):
    run = services.launch_run(make_spec(), acting_user=operator)
    attempt = attempt_of(run)
    Attempt.objects.filter(pk=attempt.pk).update(
        claimed_until=services.timezone.now() + services.SUBMIT_LEASE
    )
    outcome = services.submit_attempt(attempt.pk)  # the second worker finds the lease held
    assert outcome.job_id is None and fake.submits == 0


def test_a_controller_outage_keeps_the_attempt_waiting_until_it_returns(
    fake, no_task_queue, make_spec, operator
):
    run = services.launch_run(make_spec(), acting_user=operator)
    attempt = attempt_of(run)
    fake.down = True
    outcome = services.submit_attempt(attempt.pk)
    assert outcome.retry and "Unable to contact" in outcome.message
    attempt.refresh_from_db()
    assert attempt.state == AttemptState.CREATED and "Unable to contact" in attempt.error
    # The lease is held until the task's retry: the reconciler queues no second message.
    Attempt.objects.filter(pk=attempt.pk).update(
        created=services.timezone.now() - services.timedelta(minutes=5)
    )
    no_task_queue.clear()
    assert services.reconcile().resubmitted == 0 and no_task_queue == []
    fake.down = False
    Attempt.objects.filter(pk=attempt.pk).update(claimed_until=None)  # the retry comes due
    assert services.submit_attempt(attempt.pk).job_id == "100"
    assert fake.submits == 1


def test_a_permanent_refusal_fails_the_attempt_and_the_run(
    fake, no_task_queue, make_spec, operator, monkeypatch
):
    from apps.jobs.schedulers import SchedulerError

    run = services.launch_run(make_spec(), acting_user=operator)

    def refuse(spec):
        raise SchedulerError("invalid partition specified: gpu", permanent=True)

    monkeypatch.setattr(fake, "submit", refuse)
    services.submit_attempt(attempt_of(run).pk)
    attempt = attempt_of(run)
    run.refresh_from_db()
    assert attempt.state == AttemptState.SUBMIT_FAILED
    assert "invalid partition" in attempt.error
    assert run.state == RunState.FAILED


@pytest.mark.parametrize(
    ("job_state", "attempt_state", "run_state"),
    [
        ("PENDING", "PENDING", "queued"),
        ("REQUEUED", "REQUEUED", "queued"),
        ("RUNNING", "RUNNING", "running"),
        ("COMPLETING", "COMPLETING", "running"),
        ("COMPLETED", "COMPLETED", "completed"),
        ("FAILED", "FAILED", "failed"),
        ("CANCELLED", "CANCELLED", "cancelled"),
        ("TIMEOUT", "TIMEOUT", "failed"),
        ("OUT_OF_MEMORY", "OUT_OF_MEMORY", "failed"),
        ("NODE_FAIL", "NODE_FAIL", "failed"),
        ("PREEMPTED", "PREEMPTED", "failed"),
    ],
)
def test_the_reconciler_maps_every_scheduler_state(
    fake, launched, job_state, attempt_state, run_state
):
    TrainingRun.objects.filter(pk=launched.pk).update(max_auto_requeues=0)
    fake.set("100", job_state, exit_code=0 if job_state == "COMPLETED" else 1)
    services.reconcile()
    attempt = attempt_of(launched)
    launched.refresh_from_db()
    if job_state == "PENDING":
        assert attempt.state == "PENDING" and launched.state == "queued"
        return
    assert attempt.state == attempt_state
    assert launched.state == run_state


def test_reconciling_twice_changes_nothing_the_second_time(fake, launched):
    fake.set("100", "RUNNING")
    first = services.reconcile()
    events = AuditEvent.objects.count()
    second = services.reconcile()
    assert (first.changed, second.changed) == (1, 0)
    assert AuditEvent.objects.count() == events


def test_a_stale_pass_cannot_move_a_state_back(fake, launched):
    stale = attempt_of(launched)  # read while PENDING
    fake.set("100", "RUNNING")
    services.reconcile()
    from apps.jobs.schedulers import JobState

    assert services.apply_job_state(stale, JobState(job_id="100", state="PENDING")) is False
    assert attempt_of(launched).state == "RUNNING"


def test_an_unknown_job_is_marked_lost_with_a_reason_not_a_crash(fake, launched):
    Attempt.objects.filter(pk=attempt_of(launched).pk).update(
        submitted_at=services.timezone.now() - services.LOST_GRACE * 2
    )
    fake.forget("100")
    result = services.reconcile()
    attempt = attempt_of(launched)
    launched.refresh_from_db()
    assert result.lost == 1
    assert attempt.state == AttemptState.LOST and "no longer knows job 100" in attempt.error
    assert launched.state == RunState.LOST


def test_a_just_submitted_job_is_not_lost_yet(fake, launched):
    fake.forget("100")
    assert services.reconcile().lost == 0
    assert attempt_of(launched).state == AttemptState.PENDING


def test_an_outage_during_reconcile_changes_nothing(fake, launched):
    fake.set("100", "RUNNING")
    fake.down = True
    result = services.reconcile()
    assert result.errors and attempt_of(launched).state == AttemptState.PENDING
    fake.down = False
    services.reconcile()
    assert attempt_of(launched).state == AttemptState.RUNNING


def test_a_pending_reason_is_kept_and_explained(fake, launched):
    from apps.jobs import reasons

    fake.set("100", "PENDING", reason="QOSMaxGRESPerUser")
    services.reconcile()
    attempt = attempt_of(launched)
    assert attempt.reason == "QOSMaxGRESPerUser"
    explanation = reasons.explain(attempt.reason)
    assert "GPU" in str(explanation.what) and "QoS" in str(explanation.unblock)


def test_cancel_asks_the_scheduler_and_the_run_ends_cancelled(fake, launched, run_tasks, operator):
    fake.set("100", "RUNNING")
    services.reconcile()
    services.cancel_run(launched, acting_user=operator)
    run_tasks()
    launched.refresh_from_db()
    assert fake.cancelled == ["100"]
    assert launched.state == RunState.CANCELLED
    assert "jobs.run_cancel_requested" in actions()


def test_cancel_before_submission_never_submits(fake, no_task_queue, make_spec, operator):
    run = services.launch_run(make_spec(), acting_user=operator)
    services.cancel_run(run, acting_user=operator)
    run.refresh_from_db()
    assert run.state == RunState.CANCELLED
    services.submit_attempt(attempt_of(run).pk)
    assert fake.submits == 0


def test_requeue_keeps_the_job_id_and_counts_the_restart(fake, launched, run_tasks, operator):
    fake.set("100", "RUNNING")
    services.reconcile()
    services.requeue_run(launched, acting_user=operator)
    run_tasks()
    attempt = attempt_of(launched)
    assert fake.requeued == ["100"]
    assert attempt.job_id == "100" and attempt.restarts == 1
    assert attempt.state == AttemptState.PENDING
    launched.refresh_from_db()
    assert launched.state == RunState.QUEUED
    assert "jobs.run_requeue_requested" in actions()


def test_requeue_is_refused_for_a_finished_run(fake, launched, operator):
    fake.set("100", "COMPLETED", exit_code=0)
    services.reconcile()
    with pytest.raises(services.JobsError):
        services.requeue_run(launched, acting_user=operator)


def write_checkpoint(save_dir: Path, step: int, *, corrupt: bool = False) -> Path:
    """A checkpoint folder as trainer/checkpoint.py writes it (manifest with sha256s)."""
    import hashlib

    folder = save_dir / f"step-{step:06d}"
    folder.mkdir(parents=True)
    data = f"weights at {step}".encode()
    (folder / "model.pt").write_bytes(data)
    manifest = {
        "format": "trainer-checkpoint",
        "format_version": 1,
        "step": step,
        "files": {"model.pt": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if corrupt:
        (folder / "model.pt").write_bytes(data[::-1])  # same size, different bytes
    return folder


def save_dir_of(run: TrainingRun) -> Path:
    return Path(services.run_dir(run.name, run.pk)) / "checkpoints"


def test_resume_starts_a_new_attempt_from_the_newest_verified_checkpoint(
    fake, launched, run_tasks, operator
):
    fake.set("100", "FAILED", exit_code=1)
    services.reconcile()
    save_dir = save_dir_of(launched)
    write_checkpoint(save_dir, 100)
    write_checkpoint(save_dir, 200)
    write_checkpoint(save_dir, 300, corrupt=True)
    (save_dir / "step-000400").mkdir()  # a folder without a manifest
    attempt = services.resume_run(launched, acting_user=operator)
    run_tasks()
    attempt.refresh_from_db()
    launched.refresh_from_db()
    assert attempt.number == 2 and attempt.trigger == "resume"
    assert attempt.resumed_from_step == 200
    assert attempt.resumed_from_path.endswith("step-000200")
    assert "--resume latest" in attempt.script
    assert attempt.job_id == "101" and launched.state == RunState.QUEUED
    assert "jobs.run_resumed" in actions()


def test_every_attempt_reads_with_the_tokenizer_the_run_was_launched_with(
    fake, run_tasks, make_spec, operator
):
    tokenizer = "/lustre/tokenizers/zh-en-32k.json"  # on the cluster only: a warning, no error
    run = services.launch_run(make_spec(tokenizer=tokenizer), acting_user=operator)
    run_tasks()
    fake.set("100", "FAILED", exit_code=1)
    services.reconcile()
    second = services.resume_run(run, acting_user=operator)
    run.refresh_from_db()
    assert run.tokenizer == tokenizer and services.run_spec_of(run).tokenizer == tokenizer
    assert "not visible from the control plane" in run.plan["warnings"][0]
    for attempt in (attempt_of(run), second):
        assert f"--set data.tokenizer={tokenizer}" in attempt.script


def test_a_run_resumes_after_a_patient_in_its_version_withdrew_while_new_runs_are_refused(
    fake, launched, run_tasks, operator, make_spec, monkeypatch
):
    """Whether a run already going stops is the privacy officer's call; a new one may not
    start (docs/datasets.md "Consent withdrawal")."""
    from apps.datasets import services as datasets

    monkeypatch.setattr(datasets, "withdrawn_samples", lambda version: 2)
    fake.set("100", "FAILED", exit_code=1)
    services.reconcile()
    attempt = services.resume_run(launched, acting_user=operator)
    run_tasks()
    attempt.refresh_from_db()
    assert attempt.number == 2 and attempt.job_id
    with pytest.raises(services.LaunchRefused) as refused:
        services.launch_run(make_spec(name="after-withdrawal"), acting_user=operator)
    assert "withdrew consent" in str(refused.value.plan.errors["dataset_version"])


def test_resume_is_refused_while_the_run_is_active(fake, launched, operator):
    with pytest.raises(services.JobsError):
        services.resume_run(launched, acting_user=operator)


@pytest.mark.parametrize(
    ("state", "exit_code"), [("NODE_FAIL", None), ("PREEMPTED", None), ("FAILED", 75)]
)
def test_node_failure_preemption_and_the_trainers_requeue_exit_resume_automatically(
    fake, launched, run_tasks, state, exit_code
):
    write_checkpoint(save_dir_of(launched), 50)
    fake.set("100", state, exit_code=exit_code)
    services.reconcile()
    run_tasks()
    launched.refresh_from_db()
    second = attempt_of(launched, 2)
    assert launched.auto_requeues == 1
    assert second.trigger == "auto" and second.resumed_from_step == 50
    assert launched.state == RunState.QUEUED
    assert "jobs.run_auto_requeued" in actions()


def test_automatic_requeues_stop_at_the_limit(fake, launched, run_tasks):
    TrainingRun.objects.filter(pk=launched.pk).update(max_auto_requeues=1)
    fake.set("100", "NODE_FAIL")
    services.reconcile()
    run_tasks()
    fake.set("101", "NODE_FAIL")
    services.reconcile()
    run_tasks()
    launched.refresh_from_db()
    assert launched.attempts.count() == 2 and launched.auto_requeues == 1
    assert launched.state == RunState.FAILED


def test_an_ordinary_failure_is_not_requeued(fake, launched, run_tasks):
    fake.set("100", "FAILED", exit_code=1)
    services.reconcile()
    run_tasks()
    launched.refresh_from_db()
    assert launched.attempts.count() == 1 and launched.state == RunState.FAILED


def test_the_reconciler_requeues_a_submission_whose_message_was_lost(
    fake, no_task_queue, make_spec, operator
):
    run = services.launch_run(make_spec(), acting_user=operator)
    no_task_queue.clear()  # the broker lost the message
    Attempt.objects.filter(run=run).update(
        created=services.timezone.now() - services.timedelta(minutes=5)
    )
    assert services.reconcile().resubmitted == 1
    assert no_task_queue == [("submit_attempt", (attempt_of(run).pk,))]


def test_state_changes_are_pushed_to_the_runs_watchers(fake, launched):
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(services.run_group(launched.pk), channel)
    fake.set("100", "RUNNING")
    services.reconcile()
    message = async_to_sync(layer.receive)(channel)
    assert message["type"] == "run.state" and message["state"] == "running"


def test_run_spec_round_trips_through_the_model(launched):
    assert isinstance(services.run_spec_of(launched), RunSpec)
    assert services.run_spec_of(launched).name == "tiny-run"


def test_under_torchrun_the_trainers_requeue_marker_counts_as_exit_75(fake, launched, run_tasks):
    fake.set("100", "RUNNING", start_time=services.timezone.now())
    services.reconcile()
    save_dir = save_dir_of(launched)
    save_dir.mkdir(parents=True, exist_ok=True)
    marker = {"exit_code": 75, "signal": 10, "step": 7, "time": services.timezone.now().timestamp()}
    (save_dir / "requeue.json").write_text(json.dumps(marker))
    fake.set("100", "FAILED", exit_code=1)  # torchrun exits 1 when its workers exit 75
    services.reconcile()
    run_tasks()
    launched.refresh_from_db()
    assert launched.auto_requeues == 1 and attempt_of(launched, 2).trigger == "auto"


def test_the_reconciler_is_on_the_beat_schedule():
    from controlplane.celery import app

    entry = app.conf.beat_schedule["jobs-reconcile"]
    assert entry["task"] == "apps.jobs.tasks.reconcile" and entry["schedule"] == 15.0


def test_the_reconcile_command_runs_one_pass(fake, launched):
    from io import StringIO

    from django.core.management import call_command

    fake.set("100", "RUNNING")
    out = StringIO()
    call_command("jobs_reconcile", stdout=out)
    assert "changed 1" in out.getvalue()
    assert attempt_of(launched).state == AttemptState.RUNNING


def test_a_worker_killed_mid_reconcile_converges_on_the_next_pass(
    fake, run_tasks, make_spec, operator, monkeypatch
):
    runs = [services.launch_run(make_spec(name=f"r{n}"), acting_user=operator) for n in range(3)]
    run_tasks()
    for job_id in ("100", "101", "102"):
        fake.set(job_id, "RUNNING")
    real_apply = services.apply_job_state
    calls = []

    def die_on_the_second(attempt, job):
        calls.append(job.job_id)
        if len(calls) == 2:
            raise SystemExit("worker killed")
        return real_apply(attempt, job)

    monkeypatch.setattr(services, "apply_job_state", die_on_the_second)
    with pytest.raises(SystemExit):
        services.reconcile()
    monkeypatch.setattr(services, "apply_job_state", real_apply)
    services.reconcile()
    for run in runs:
        run.refresh_from_db()
        assert run.state == RunState.RUNNING
    assert AuditEvent.objects.filter(action="jobs.attempt_state_changed").count() == 3


def test_the_submit_task_retries_through_an_outage_and_submits_once(
    fake, make_spec, operator, monkeypatch
):
    from apps.jobs import tasks

    sent = []
    monkeypatch.setattr(tasks.submit_attempt, "delay", lambda *a: sent.append(a))
    from django.db import transaction

    monkeypatch.setattr(transaction, "on_commit", lambda fn, using=None, robust=False: fn())
    # Eager mode ignores the retry countdown; let the held lease lapse at once instead.
    monkeypatch.setattr(services, "SUBMIT_RETRY_HOLD", services.timedelta(seconds=-1))
    run = services.launch_run(make_spec(), acting_user=operator)
    fake.down = True
    real_find = fake.find_by_comment

    def back_after_two_tries(token):
        if len(tries) == 2:
            fake.down = False
        tries.append(token)
        return real_find(token)

    tries: list[str] = []
    monkeypatch.setattr(fake, "find_by_comment", back_after_two_tries)
    result = tasks.submit_attempt.apply(args=[attempt_of(run).pk])
    assert result.get() == "100"
    assert fake.submits == 1 and len(tries) == 3
    assert attempt_of(run).submit_tries == 3


def test_log_tails_are_pushed_for_watched_runs_only(fake, launched, tmp_path):
    import asyncio

    from asgiref.sync import async_to_sync, sync_to_async
    from channels.layers import get_channel_layer

    out = tmp_path / "job.out"
    out.write_text("step 1 loss 6.2\nstep 2 loss 5.9\n")
    fake.set("100", "RUNNING", output=str(out))
    services.reconcile()  # PENDING -> RUNNING

    async def scenario():
        # One event loop for every receive: the Redis layer binds its queues to a loop.
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(services.run_group(launched.pk), channel)
        await sync_to_async(services.reconcile)()  # nothing changed, nobody watching
        try:
            early = await asyncio.wait_for(layer.receive(channel), 0.5)
        except TimeoutError:
            early = None
        await sync_to_async(services.touch_watch)(launched.pk)
        await sync_to_async(services.reconcile)()
        return early, await asyncio.wait_for(layer.receive(channel), 10)

    early, message = async_to_sync(scenario)()
    assert early is None
    assert message == {"type": "log.tail", "attempt": 1, "text": out.read_text()}

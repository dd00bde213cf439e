"""The runs pages and the API: who may do what, the preview step, hostile input, actions."""

from __future__ import annotations

import pytest

from apps.jobs import services
from apps.jobs.models import RunState, TrainingRun

pytestmark = pytest.mark.django_db

READERS = ["operator", "admin", "project_manager", "auditor"]
OTHERS = ["clinician_reviewer", "data_steward", "privacy_officer"]


def form_data(version, **kw):
    data = {
        "name": "tiny-run",
        "preset": "tiny",
        "dataset_version": version.pk,
        "engine": "single",
        "nodes": 1,
        "gpus_per_node": 0,
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "data_parallel": 1,
        "zero_stage": 3,
        "micro_batch_size": 2,
        "global_batch_size": 4,
        "seq_len": 64,
        "max_steps": 3,
        "loader_workers": 1,
        "time_limit_minutes": 10,
        "partition": "",
        "account": "",
        "qos": "",
        "launcher": "direct",
        "resume_policy": "latest",
        "max_auto_requeues": 3,
    }
    data.update(kw)
    return data


@pytest.fixture
def run(fake, run_tasks, make_spec, operator):
    run = services.launch_run(make_spec(), acting_user=operator)
    run_tasks()
    return run


@pytest.mark.parametrize("role", READERS)
def test_readers_see_the_list_the_detail_the_script_and_the_cluster(role, client_as, run):
    client = client_as(role)
    assert client.get("/jobs/").status_code == 200
    page = client.get(f"/jobs/runs/{run.pk}/")
    assert page.status_code == 200
    assert b"tiny-run" in page.content and b"#SBATCH --signal=USR1@120" in page.content
    assert b"jobs.run_launched" in page.content and b"jobs.attempt_submitted" in page.content
    attempt = run.attempts.get()
    script = client.get(f"/jobs/attempts/{attempt.pk}/script/")
    assert script.status_code == 200 and script.content.decode() == attempt.script
    cluster = client.get("/jobs/cluster/")
    assert cluster.status_code == 200 and b"6 of 8 GPUs free" in cluster.content


@pytest.mark.parametrize("role", OTHERS)
def test_other_roles_are_refused_everywhere(role, client_as, run):
    client = client_as(role)
    for url in (
        "/jobs/",
        f"/jobs/runs/{run.pk}/",
        f"/jobs/runs/{run.pk}/metrics.json",
        "/jobs/new/",
        "/jobs/cluster/",
        "/api/jobs/runs/",
        "/api/jobs/cluster/",
    ):
        assert client.get(url).status_code == 403, url
    assert client.post(f"/jobs/runs/{run.pk}/cancel/").status_code == 403


@pytest.mark.parametrize("role", ["project_manager", "auditor"])
def test_read_only_roles_cannot_launch_or_act(role, client_as, run, make_version):
    client = client_as(role)
    assert client.get("/jobs/new/").status_code == 403
    for action in ("cancel", "requeue", "resume"):
        assert client.post(f"/jobs/runs/{run.pk}/{action}/").status_code == 403
        assert client.post(f"/api/jobs/runs/{run.pk}/{action}/").status_code == 403
    body = form_data(make_version()) | {"dataset_version": make_version().pk}
    assert client.post("/api/jobs/runs/", body, content_type="application/json").status_code == 403
    page = client.get(f"/jobs/runs/{run.pk}/")
    assert b'data-testid="cancel"' not in page.content


def test_the_run_page_charts_the_trainers_metrics(client_as, run):
    import json
    from pathlib import Path

    from apps.jobs.rendering import run_dir

    log = Path(run_dir(run.name, run.pk)) / "checkpoints" / "metrics.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    records = [{"time": 1795838130.0, "event": "config", "config": {}}]
    records += [
        {
            "time": 1795838130.0 + s,
            "step": s,
            "training_loss": 6.0 / s,
            "training_tokens_per_second": 900.0,
        }
        for s in range(1, 31)
    ]
    records.append({"time": 1795838161.0, "event": "checkpoint", "step": 30, "path": "/x"})
    log.write_text("\n".join(json.dumps(r) for r in records) + '\n{"step": 31, "trai')
    client = client_as("auditor")
    page = client.get(f"/jobs/runs/{run.pk}/").content.decode()
    assert 'data-testid="loss-chart"' in page and 'id="run-chart-data"' in page
    # The last step's loss, 6/30, not the event's.
    assert '<dd class="mono" data-metric="training_loss">0.2</dd>' in page
    body = client.get(f"/jobs/runs/{run.pk}/metrics.json").json()
    assert body["series"]["step"] == list(range(1, 31)) and body["live"] is True
    assert body["series"]["training_loss"][-1] == pytest.approx(0.2)
    assert body["series"]["training_gradient_norm"] == [None] * 30


def test_unknown_ids_are_404_never_500(client_as, fake):
    client = client_as("operator")
    for url in (
        "/jobs/runs/1/",
        "/jobs/runs/1/metrics.json",
        "/jobs/attempts/1/script/",
        "/api/jobs/runs/1/",
        "/api/jobs/attempts/1/",
    ):
        assert client.get(url).status_code == 404, url
    assert client.post("/jobs/runs/1/cancel/").status_code == 404


def test_the_launch_form_previews_the_plan_and_script_before_creating_anything(
    client_as, fake, no_task_queue, make_version
):
    client = client_as("operator")
    assert client.get("/jobs/new/").status_code == 200
    version = make_version()
    preview = client.post("/jobs/new/", form_data(version, preview="1"))
    assert preview.status_code == 200
    assert b'data-testid="script"' in preview.content and b"--resume latest" in preview.content
    assert b'data-testid="launch"' in preview.content
    assert TrainingRun.objects.count() == 0
    launched = client.post("/jobs/new/", form_data(version, launch="1"))
    run = TrainingRun.objects.get()
    assert launched.status_code == 302 and launched["Location"] == f"/jobs/runs/{run.pk}/"
    assert run.created_by.username == "u_operator" and run.state == RunState.SUBMITTING


def test_the_form_shows_every_planner_error_on_its_field(client_as, fake, make_version):
    version = make_version(shards=2)
    response = client_as("operator").post(
        "/jobs/new/", form_data(version, data_parallel=2, loader_workers=4, preview="1")
    )
    assert response.status_code == 400
    assert b'data-error-for="data_parallel"' in response.content
    assert b'data-error-for="loader_workers"' in response.content
    assert b'data-testid="script"' not in response.content


def test_the_form_offers_ready_dataset_versions_only(client_as, fake, make_version):
    ready, building = make_version(), make_version(status="building")
    response = client_as("operator").post("/jobs/new/", form_data(building, preview="1"))
    assert response.status_code == 400
    assert b'data-error-for="dataset_version"' in response.content
    page = client_as("operator").get("/jobs/new/").content.decode()
    assert f">{ready.label}</option>" in page and f">{building.label}</option>" not in page


def test_the_form_shows_the_memory_warning(client_as, fake, make_version):
    version = make_version(shards=4096)
    data = form_data(
        version,
        preset="70b",
        engine="deepspeed",
        nodes=8,
        gpus_per_node=8,
        data_parallel=64,
        zero_stage=2,
        global_batch_size=128,
        seq_len=8192,
        preview="1",
    )
    response = client_as("operator").post("/jobs/new/", data)
    assert response.status_code == 200, response.context["form"].errors
    assert b'data-testid="plan-warning"' in response.content


@pytest.mark.parametrize("bad", ["; rm -rf ~", "$(id)", "a\nb", "x'y", "../x", "`id`"])
def test_hostile_names_are_refused_by_the_form_and_the_api(bad, client_as, fake, make_version):
    version = make_version()
    client = client_as("operator")
    for field in ("name", "partition", "account", "qos"):
        response = client.post("/jobs/new/", form_data(version, **{field: bad}, launch="1"))
        assert response.status_code == 400, field
        api = client.post(
            "/api/jobs/runs/", form_data(version, **{field: bad}), content_type="application/json"
        )
        assert api.status_code == 400, field
    assert TrainingRun.objects.count() == 0


def test_the_run_page_explains_a_pending_reason(client_as, fake, run):
    fake.set("100", "PENDING", reason="Resources")
    services.reconcile()
    page = client_as("auditor").get(f"/jobs/runs/{run.pk}/").content.decode()
    assert 'data-testid="reason"' in page and "free nodes/GPUs" in page


def test_the_runs_list_filters_by_state_owner_and_dataset(client_as, fake, run, cast):
    client = client_as("operator")
    assert b"tiny-run" in client.get("/jobs/?state=queued").content
    assert b"tiny-run" not in client.get("/jobs/?state=running").content
    assert b"tiny-run" in client.get(f"/jobs/?owner={cast['operator'].pk}").content
    assert b"tiny-run" not in client.get(f"/jobs/?owner={cast['admin'].pk}").content
    assert b"tiny-run" not in client.get(f"/jobs/?dataset={run.dataset_version_id + 99}").content
    assert client.get("/jobs/?state=bogus").status_code == 400


def test_cancel_from_the_page(client_as, fake, run, run_tasks):
    response = client_as("operator").post(f"/jobs/runs/{run.pk}/cancel/")
    run_tasks()
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.state == RunState.CANCELLED


def test_the_api_launches_lists_and_acts(client_as, fake, run_tasks, make_version):
    client = client_as("operator")
    version = make_version()
    preview = client.post(
        "/api/jobs/runs/preview/", form_data(version), content_type="application/json"
    )
    assert preview.status_code == 200 and "--resume latest" in preview.json()["script"]
    created = client.post("/api/jobs/runs/", form_data(version), content_type="application/json")
    assert created.status_code == 201, created.content
    run_id = created.json()["id"]
    run_tasks()
    body = client.get(f"/api/jobs/runs/{run_id}/").json()
    assert body["state"] == "queued" and body["current_attempt"]["job_id"] == "100"
    listed = client.get("/api/jobs/runs/?state=queued").json()
    assert [r["id"] for r in listed["results"]] == [run_id]
    attempts = client.get(f"/api/jobs/attempts/?run={run_id}").json()["results"]
    assert attempts[0]["token"] in fake.specs["100"].comment
    assert client.post(f"/api/jobs/runs/{run_id}/resume/").status_code == 409
    assert client.post(f"/api/jobs/runs/{run_id}/cancel/").status_code == 202
    run_tasks()
    assert client.get(f"/api/jobs/runs/{run_id}/").json()["state"] == "cancelled"
    cluster = client.get("/api/jobs/cluster/").json()
    assert cluster["total_gpus"] == 8 and cluster["free_gpus"] == 6


def test_the_api_returns_planner_errors_by_field(client_as, fake, make_version):
    response = client_as("operator").post(
        "/api/jobs/runs/",
        form_data(make_version(), data_parallel=3),
        content_type="application/json",
    )
    assert response.status_code == 400 and "data_parallel" in response.json()


def test_the_runs_api_list_does_not_query_per_run(
    client_as, fake, run_tasks, make_spec, operator, django_assert_max_num_queries
):
    for n in range(5):
        services.launch_run(make_spec(name=f"r{n}"), acting_user=operator)
    run_tasks()
    client = client_as("operator")
    client.get("/api/jobs/runs/")  # warm the session and role caches
    with django_assert_max_num_queries(12):
        assert len(client.get("/api/jobs/runs/").json()["results"]) == 5


@pytest.mark.django_db(transaction=True)  # the consumer queries from its own thread
def test_the_websocket_sends_the_state_and_log_tail_to_readers_only(run, cast):
    from concurrent.futures import ThreadPoolExecutor

    from asgiref.sync import async_to_sync
    from channels.testing import WebsocketCommunicator

    from apps.jobs.consumers import RunConsumer

    async def talk(user, pk):
        app = RunConsumer.as_asgi()
        comm = WebsocketCommunicator(app, f"/ws/jobs/runs/{pk}/")
        comm.scope["user"] = user
        comm.scope["url_route"] = {"kwargs": {"pk": pk}}
        connected, code = await comm.connect()
        messages = []
        if connected:
            messages.append(await comm.receive_json_from())
            messages.append(await comm.receive_json_from())
            await comm.disconnect()
        return connected, code, messages

    def in_own_loop(user, pk):
        # A Playwright test earlier in the session leaves an event loop in this thread.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(async_to_sync(talk), user, pk).result()

    connected, _, messages = in_own_loop(cast["auditor"], run.pk)
    assert connected
    assert messages[0] == {"type": "run.state", "state": "queued"}
    assert messages[1]["type"] == "log.tail" and "log of 100" in messages[1]["text"]
    connected, code, _ = in_own_loop(cast["data_steward"], run.pk)
    assert not connected and code == 4403


def cluster_card(page: str) -> list[str]:
    """The figures of the overview's cluster card."""
    from tests.core.test_overview import cards

    return cards(page)["cluster"]


def test_the_cluster_card_asks_the_scheduler_at_most_every_half_minute(
    client_as, fake, monkeypatch
):
    from django.core.cache import cache

    from apps.jobs.schedulers import SchedulerError

    cache.delete("jobs:cluster-overview")
    calls = []
    real = fake.cluster_info
    monkeypatch.setattr(fake, "cluster_info", lambda: calls.append(1) or real())
    for _ in range(3):
        assert cluster_card(client_as("operator").get("/").content.decode()) == [
            "1 / 1",
            "6 / 8",
        ]
    assert len(calls) == 1
    cache.delete("jobs:cluster-overview")

    def outage():
        raise SchedulerError("Unable to contact slurm controller", permanent=False)

    monkeypatch.setattr(fake, "cluster_info", outage)
    page = client_as("operator").get("/")
    assert page.status_code == 200 and cluster_card(page.content.decode()) == ["not answering"]


def test_the_run_page_leads_to_the_data_behind_the_run(run, client_as):
    files = f"/datasets/lineage/of/jobs.trainingrun/{run.pk}/"
    for role in ("operator", "auditor"):
        client = client_as(role)
        page = client.get(f"/jobs/runs/{run.pk}/").content.decode()
        assert f'href="{files}"' in page and f'href="/datasets/{run.dataset_version_id}/"' in page
        lineage = client.get(files).content.decode()
        assert run.dataset_version.label in lineage and f'href="/jobs/runs/{run.pk}/"' in lineage
    # Project managers read runs but not datasets: no links they could not follow.
    page = client_as("project_manager").get(f"/jobs/runs/{run.pk}/").content.decode()
    assert run.dataset_version.label in page and files not in page


def test_the_latest_metrics_read_as_words_and_units_with_the_metric_names_kept():
    from django.utils import translation

    from apps.jobs.views import _readable

    record = {
        "step": 12000,
        "training_loss": 1.629319965839386,
        "training_tokens_per_second": 4049.4,
        "training_step_seconds": 0.06323,
        "training_checkpoint_seconds": 12.5,
        "training_device_memory_bytes": 434600000,
        "training_learning_rate": 0.0003054,
        "some_new_metric": 0.123456789,
    }
    with translation.override("en"):
        shown = {m["name"]: (m["label"], m["text"]) for m in _readable(record)}
    assert shown == {
        "step": ("Step", "12,000"),
        "training_loss": ("Loss", "1.629"),
        "training_tokens_per_second": ("Tokens per second", "4,049"),
        "training_step_seconds": ("Step time", "63.2 ms"),
        "training_checkpoint_seconds": ("Last checkpoint took", "12.50 s"),
        "training_device_memory_bytes": ("Device memory", "414.5\xa0MB"),
        "training_learning_rate": ("Learning rate", "3.054e-04"),
        "some_new_metric": ("some_new_metric", "0.1235"),
    }
    with translation.override("zh-hans"):
        labels = {m["name"]: m["label"] for m in _readable(record)}
    assert labels["training_loss"] == "损失" and labels["step"] == "步数"


def test_the_timeline_reads_as_events_states_and_names(cast):
    import json

    from django.utils import timezone, translation

    from apps.audit.models import AuditEvent
    from apps.jobs.views import _timeline

    operator = cast["operator"]
    events = [
        AuditEvent(
            action="jobs.run_launched",
            user_id=operator.pk,
            timestamp=timezone.now(),
            details_json=json.dumps({"preset": "tiny", "nodes": 1, "script_sha256": "ab" * 32}),
        ),
        AuditEvent(
            action="jobs.attempt_state_changed",
            user_id=None,
            timestamp=timezone.now(),
            details_json=json.dumps(
                {"attempt_state": "RUNNING", "job_id": "17", "exit_code": None}
            ),
        ),
        AuditEvent(action="jobs.something_new", timestamp=timezone.now(), details_json="{}"),
    ]
    with translation.override("en"):
        rows = _timeline(events)
    assert [(r["label"], r["state"], r["summary"], r["who"]) for r in rows] == [
        ("Run launched", "", "preset tiny · nodes 1", operator.username),
        ("Attempt state", "Running", "job 17", ""),
        ("jobs.something_new", "", "", ""),
    ]

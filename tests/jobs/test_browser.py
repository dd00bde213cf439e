"""In a real browser: an operator launches a tiny trainer run through the form's preview step
and watches it go queued/running to completed, with its checkpoint on the run page."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from playwright.sync_api import Page, expect

from apps.jobs import services
from apps.jobs.models import TrainingRun
from tests.browser.conftest import browser_type_launch_args  # noqa: F401 - Debian chromium
from tests.browser.test_navigation import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("scheduler", ["local", "slurm"])
def test_an_operator_launches_a_tiny_run_and_watches_it_complete(
    scheduler, cast, live_server, page: Page, jobs_settings, make_version, run_tasks, tmp_path
):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    if scheduler == "slurm":  # the real single-node cluster of deploy/slurm
        from tests.conftest import require_service
        from tests.jobs.test_slurm_runs import _slurm_up

        ok, why = _slurm_up()
        require_service("Slurm", ok, why)
        jobs_settings.JOBS_SCHEDULER = "slurm"
        jobs_settings.JOBS_SCHEDULER_OPTIONS = {"slurm": {"timeout": 30}}

    data = tmp_path / "synth"
    subprocess.run(
        [sys.executable, "-m", "trainer", "synth", "--out", str(data), "--samples", "32"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shards = len(json.loads((data / "manifest.json").read_text())["shards"])
    version = make_version(root=str(data), shards=shards)
    operator = cast["operator"]
    sign_in(page, live_server.url, operator, TOTPDevice.objects.get(user=operator))

    page.goto(f"{live_server.url}/jobs/new/")
    form = page.locator("[data-testid=run-form]")
    form.locator("#id_name").fill(f"browser-tiny-{scheduler}")
    form.locator("#id_preset").select_option("tiny")
    form.locator("#id_dataset_version").select_option(str(version.pk))
    form.locator("#id_engine").select_option("single")
    for field, value in {
        "nodes": "1",
        "gpus_per_node": "0",
        "data_parallel": "1",
        "micro_batch_size": "2",
        "global_batch_size": "2",
        "seq_len": "64",
        "max_steps": "3",
        "time_limit_minutes": "10",
    }.items():
        form.locator(f"#id_{field}").fill(value)
    page.click("[data-testid=preview]")
    expect(page.locator("[data-testid=script]")).to_contain_text("--resume latest")
    expect(page.locator("[data-testid=plan]")).to_be_visible()
    assert TrainingRun.objects.count() == 0  # nothing before the second click
    page.click("[data-testid=launch]")
    run = TrainingRun.objects.get()
    expect(page).to_have_url(f"{live_server.url}/jobs/runs/{run.pk}/")

    run_tasks()  # the Celery worker's submission
    seen = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        services.reconcile()
        page.reload()
        state = page.locator("[data-run-state]").get_attribute("data-current")
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in ("completed", "failed"):
            break
        time.sleep(1)
    assert seen[-1] == "completed", (seen, services.log_tail(run.attempts.get()))
    assert {"queued", "running"} & set(seen)
    checkpoints = page.locator("[data-testid=checkpoints] tbody tr")
    expect(checkpoints.first).to_contain_text("3")
    expect(checkpoints.first.locator(".ok")).to_be_visible()
    expect(
        page.locator("[data-testid=timeline] [data-action='jobs.run_launched']")
    ).to_contain_text("Run launched")
    # The trainer's metrics, charted: plotly draws loss and tokens/s over the 3 steps.
    expect(page.locator("[data-metric=training_loss]")).to_be_visible()
    expect(page.locator("#run-loss-chart .main-svg").first).to_be_visible()
    expect(page.locator("#run-speed-chart .main-svg").first).to_be_visible()


def test_a_long_log_stays_in_a_box_that_opens_at_the_newest_line(
    cast, live_server, page: Page, fake, make_spec, run_tasks, monkeypatch
):
    """A day's log must not push the charts and checkpoints off the page: the tail sits in a
    bounded box, scrolled to its last line."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    lines = "".join(f"step {i} loss 1.0\n" for i in range(1, 401))
    monkeypatch.setattr(fake, "logs", lambda job_id, tail_bytes=65536: lines)
    operator = cast["operator"]
    run = services.launch_run(make_spec(), acting_user=operator)
    run_tasks()
    sign_in(page, live_server.url, operator, TOTPDevice.objects.get(user=operator))
    page.goto(f"{live_server.url}/jobs/runs/{run.pk}/")
    log = page.locator("[data-testid=log]")
    expect(log).to_contain_text("step 400 loss")
    box = log.evaluate("e => [e.clientHeight, e.scrollHeight, e.scrollTop]")
    height, full, top = box
    assert height < 500 < full, box  # bounded, and the log is longer than the box
    assert top + height >= full - 4, box  # scrolled to the newest line
    # The metrics come before the log, so an operator sees them first.
    titles = page.locator("main h2").all_inner_texts()
    assert titles.index("Latest metrics") < titles.index("Log (tail)"), titles

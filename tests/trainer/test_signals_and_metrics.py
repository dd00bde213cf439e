"""A real run: its /metrics endpoint is scraped mid-run, then SIGTERM asks it to stop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from trainer import EXIT_REQUEUE
from trainer.checkpoint import verify

pytestmark = pytest.mark.slow

NAMES = (
    "training_iterations_total",
    "training_tokens_per_second",
    "training_loss",
    "training_gradient_norm",
    "training_learning_rate",
    "training_step_seconds",
    "training_dataloader_queue_depth",
    "training_device_memory_bytes",
)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def stopped_run(dataset, tmp_path_factory, python, repo, sub_env, metrics_port) -> dict:
    """Start a long run, scrape /metrics once it has done 3 steps, then send SIGTERM."""
    save = tmp_path_factory.mktemp("sigterm")
    cmd = [str(python), "-m", "trainer", "train", "--config", "tiny", "--engine", "single"]
    cmd += ["--data", str(dataset), "--save-dir", str(save), "--max-steps", "100000"]
    cmd += ["--metrics-port", str(metrics_port), "--set", "checkpoint.interval=0"]
    proc = subprocess.Popen(cmd, env=sub_env, cwd=repo, stderr=subprocess.PIPE, text=True)
    scraped = ""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    scraped = resp.read().decode()
                if metric(scraped, "training_iterations_total") >= 3:
                    break
            except (OSError, AssertionError):
                pass
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"code": proc.returncode, "metrics": scraped, "save": save, "stderr": stderr}


@pytest.fixture(scope="module")
def metrics_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_endpoint_serves_the_seed_alert_names_during_a_run(stopped_run) -> None:
    text = stopped_run["metrics"]
    for name in NAMES:
        assert name in text, name
    assert metric(text, "training_iterations_total") >= 3
    assert 0 < metric(text, "training_loss") < 10
    assert metric(text, "training_learning_rate") > 0


def test_sigterm_writes_a_checkpoint_and_exits_with_the_requeue_code(stopped_run) -> None:
    assert stopped_run["code"] == EXIT_REQUEUE, stopped_run["stderr"][-2000:]
    folders = sorted(stopped_run["save"].glob("step-*"))
    assert len(folders) == 1
    assert verify(folders[0]) == (True, "ok")
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    assert manifest["step"] >= 3
    assert manifest["data"]["position"] == manifest["step"] * 4
    marker = json.loads((stopped_run["save"] / "requeue.json").read_text())
    assert marker == marker | {"exit_code": 75, "signal": 15, "step": manifest["step"]}


def test_jsonl_log_holds_the_config_and_every_step(stopped_run) -> None:
    records = [
        json.loads(x) for x in (stopped_run["save"] / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[0]["event"] == "config"
    assert records[0]["config"]["model"]["d_model"] == 128
    steps = [r["step"] for r in records if "training_loss" in r]
    assert steps == list(range(1, len(steps) + 1))
    assert any(r.get("event") == "stopped" for r in records)

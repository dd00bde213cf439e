"""The trainer's JSONL log as the run page reads it: events are not metrics, long runs are
thinned for the charts, a cut or half-written line is skipped."""

from __future__ import annotations

import itertools
import json

from apps.jobs.checkpoints import latest_metrics, metric_series


def _write(folder, records, tail=""):
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8"
    )


def test_a_long_run_is_thinned_to_the_chart_size_keeping_the_last_step(tmp_path):
    _write(tmp_path, [{"step": s, "training_loss": 1.0 / s} for s in range(1, 2501)])
    series = metric_series(str(tmp_path), points=1000)
    steps = series["step"]
    assert len(steps) <= 1000 and steps[-1] == 2500
    assert steps == sorted(steps) and len({b - a for a, b in itertools.pairwise(steps)}) == 1
    assert series["training_loss"][-1] == 1.0 / 2500


def test_events_and_a_half_written_line_are_not_metrics(tmp_path):
    _write(
        tmp_path,
        [
            {"event": "config"},
            {"step": 1, "training_loss": 2.0},
            {"event": "checkpoint", "step": 1},
        ],
        tail='{"step": 2, "training_lo',
    )
    assert latest_metrics(str(tmp_path)) == {"step": 1, "training_loss": 2.0}
    assert metric_series(str(tmp_path))["step"] == [1.0]
    assert latest_metrics(str(tmp_path / "missing")) is None
    assert metric_series(str(tmp_path / "missing"))["step"] == []

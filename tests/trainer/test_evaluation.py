"""Seed 7.1 metrics through scikit-learn, scipy, rouge-score and sacrebleu."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="evaluation needs scikit-learn (trainer extra)")
pytest.importorskip("sacrebleu", reason="evaluation needs sacrebleu (trainer extra)")
pytest.importorskip("rouge_score", reason="evaluation needs rouge-score (trainer extra)")

from trainer.__main__ import main
from trainer.evaluation import (
    classification_metrics,
    segmentation_metrics,
    text_metrics,
    waveform_metrics,
)
from trainer.train import build_run


def test_classification_auc_sensitivity_specificity() -> None:
    m = classification_metrics([0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.8, 0.9])
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)


def test_segmentation_dice_and_miou() -> None:
    truth = np.array([[0, 1, 1, 0]])
    pred = np.array([[0, 1, 0, 0]])
    m = segmentation_metrics([truth], [pred])
    assert m["dice"] == pytest.approx(2 * 1 / (2 + 1))
    assert m["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_waveform_mae_and_pearson() -> None:
    t = np.sin(np.linspace(0, 6, 100))[None]
    m = waveform_metrics(t, 2 * t + 0.5)
    assert m["pearson"] == pytest.approx(1.0)
    assert m["mae"] == pytest.approx(np.abs(t + 0.5).mean())


def test_text_metrics_score_identical_reports_perfectly_in_both_languages() -> None:
    refs = ["CT shows a nodule in the left lobe.", "胸部CT未见明显异常。"]
    same = text_metrics(refs, refs)
    assert same["rouge1"] == pytest.approx(1.0) and same["bleu"] == pytest.approx(100.0)
    worse = text_metrics(["CT shows nothing.", "胸部CT见结节。"], refs)
    assert 0 < worse["rouge1"] < 1 and worse["bleu"] < 100


def test_metrics_command_reads_prediction_records(tmp_path) -> None:
    path = tmp_path / "preds.jsonl"
    rows = [{"label": 0, "score": 0.2}, {"label": 1, "score": 0.7}, {"label": 1, "score": 0.9}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "m.json"
    args = ["metrics", "--task", "classification", "--predictions", str(path), "--out", str(out)]
    assert main(args) == 0
    assert json.loads(out.read_text())["auc"] == pytest.approx(1.0)


@pytest.mark.slow
def test_evaluate_generates_reports_and_scores_them(dataset, tmp_path, tiny) -> None:
    cfg = tiny(dataset, tmp_path, "optim.max_steps=40", "checkpoint.interval=40")
    run = build_run(cfg)
    try:
        run.trainer.train()
    finally:
        run.close()
    out = tmp_path / "report.json"
    args = ["evaluate", "--checkpoint", str(tmp_path / "step-000040"), "--samples", "8"]
    assert main([*args, "--generate", "3", "--max-new-tokens", "20", "--out", str(out)]) == 0
    report = json.loads(out.read_text())["report_generation"]
    assert report["samples"] == 3 and report["keys"] == ["s000000", "s000001", "s000002"]
    assert report["rouge1"] > 0.3  # the trained model writes report-like text
    assert 0 <= report["bleu"] <= 100

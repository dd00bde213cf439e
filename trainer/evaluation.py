"""The seed plan's evaluation metrics (section 7.1), computed with established libraries.

- Text: perplexity (the trainer's held-out loss), ROUGE (``rouge-score``) and BLEU
  (``sacrebleu``) of reports generated from a study's images and waveform.
- Imaging: AUC, sensitivity and specificity (``scikit-learn``) for classification scores;
  Dice and mIoU for segmentation masks.
- Waveforms: MAE and Pearson correlation for reconstructed or regressed signals.

The model has no classification or segmentation heads yet; those functions take predictions
(``python -m trainer metrics --task ... --predictions file.jsonl``), so any head added later,
or any external model, is scored the same way. The libraries are imported lazily: training
never needs them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


class _MixedTokenizer:
    """ROUGE tokens: lower-cased words, and every CJK character as its own token.

    ``rouge-score``'s default tokenizer drops non-ASCII text, which would score Chinese
    reports as empty.
    """

    def tokenize(self, text: str) -> list[str]:
        spaced = _CJK.sub(lambda m: f" {m.group(0)} ", text.lower())
        return re.findall(r"[\w]+", spaced)


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (``rouge-score``) and corpus BLEU (``sacrebleu``, 0-100)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"need as many predictions as references (got {len(predictions)} and {len(references)})"
        )
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_MixedTokenizer())
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)
        for key in totals:
            totals[key] += scores[key].fmeasure
    has_cjk = any(_CJK.search(r) for r in references)
    bleu = sacrebleu.corpus_bleu(
        list(predictions), [list(references)], tokenize="zh" if has_cjk else "13a"
    )
    out = {key: value / len(predictions) for key, value in totals.items()}
    out["bleu"] = float(bleu.score)
    return out


def classification_metrics(
    y_true: Sequence[int], y_score: Sequence[float], threshold: float = 0.5
) -> dict[str, float]:
    """ROC AUC, sensitivity (recall of positives) and specificity at ``threshold``."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    truth = np.asarray(y_true).astype(int)
    score = np.asarray(y_score, dtype=float)
    pred = (score >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(truth, pred, labels=[0, 1]).ravel()
    return {
        "auc": float(roc_auc_score(truth, score)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "threshold": threshold,
    }


def segmentation_metrics(
    masks_true: Sequence[np.ndarray], masks_pred: Sequence[np.ndarray], num_classes: int = 2
) -> dict[str, float]:
    """Dice of the foreground (classes >= 1, pooled) and mIoU over all classes (Jaccard)."""
    from sklearn.metrics import f1_score, jaccard_score

    truth = np.concatenate([np.asarray(m).ravel() for m in masks_true]).astype(int)
    pred = np.concatenate([np.asarray(m).ravel() for m in masks_pred]).astype(int)
    labels = list(range(num_classes))
    return {
        # Dice equals F1 of the foreground pixels.
        "dice": float(f1_score(truth > 0, pred > 0, zero_division=1.0)),
        "miou": float(
            jaccard_score(truth, pred, labels=labels, average="macro", zero_division=1.0)
        ),
    }


def waveform_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE and mean per-channel Pearson correlation of ``[channels, samples]`` signals."""
    from scipy.stats import pearsonr
    from sklearn.metrics import mean_absolute_error

    t, p = np.atleast_2d(np.asarray(true, float)), np.atleast_2d(np.asarray(pred, float))
    if t.shape != p.shape:
        raise ValueError(f"waveform shapes differ: {t.shape} vs {p.shape}")
    rs = [pearsonr(a, b).statistic for a, b in zip(t, p, strict=True)]
    return {"mae": float(mean_absolute_error(t.T, p.T)), "pearson": float(np.mean(rs))}


def metrics_for(task: str, records: list[dict[str, Any]]) -> dict[str, float]:
    """Score prediction records: ``classification`` ({label, score}), ``segmentation``
    ({mask_true, mask_pred}), ``waveform`` ({true, pred}) or ``text`` ({reference, prediction})."""
    if task == "classification":
        return classification_metrics([r["label"] for r in records], [r["score"] for r in records])
    if task == "segmentation":
        return segmentation_metrics(
            [np.asarray(r["mask_true"]) for r in records],
            [np.asarray(r["mask_pred"]) for r in records],
        )
    if task == "waveform":
        true = np.concatenate([np.atleast_2d(r["true"]) for r in records], axis=1)
        pred = np.concatenate([np.atleast_2d(r["pred"]) for r in records], axis=1)
        return waveform_metrics(true, pred)
    if task == "text":
        return text_metrics([r["prediction"] for r in records], [r["reference"] for r in records])
    raise ValueError(f"unknown task {task!r}: classification, segmentation, waveform or text")


def generate_reports(
    model: Any, collate: Any, samples: list[Any], max_new_tokens: int
) -> list[str]:
    """Greedy report generation from each sample's images/waveform prompt (no KV cache)."""
    import torch

    from trainer.data.tokenizer import EOS_ID

    model.eval()
    out = []
    with torch.no_grad():
        for sample in samples:
            batch = collate([sample], [0])
            _, text_start = collate.tokens(sample)
            ids = batch.input_ids[:, :text_start]  # [1, prompt]
            for _ in range(max_new_tokens):
                if ids.shape[1] >= collate.seq_len:
                    break
                logits = model(
                    input_ids=ids,
                    images=batch.images,
                    image_mask=batch.image_mask,
                    waves=batch.waves,
                    wave_mask=batch.wave_mask,
                )  # [1, T, V]
                nxt = int(logits[0, -1].argmax())
                if nxt == EOS_ID:
                    break
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
            out.append(collate.tok.decode(ids[0, text_start:].tolist()))
    return out

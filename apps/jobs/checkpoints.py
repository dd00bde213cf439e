"""The checkpoints a run's trainer wrote, read from their manifests (torch-free).

The trainer writes ``save_dir/step-<n>/manifest.json`` last, with the sha256 and size of every
other file (docs/trainer.md "Checkpoints"). ``newest_verified`` walks the folders newest first
and takes the first whose manifest verifies, exactly as ``--resume latest`` does in the
trainer (the same ``trainer.checkpoint.verify``), so the step recorded on the attempt is the
step the trainer resumes from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.checkpoint import verify

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One ``step-<n>`` folder: ``ok`` and ``reason`` from the manifest check."""

    path: str
    step: int
    ok: bool
    reason: str
    created: float | None = None
    loss: float | None = None
    hashed: bool = False  # True when every file's sha256 was recomputed


def _step_dirs(save_dir: str) -> list[tuple[int, Path]]:
    root = Path(save_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found, reverse=True)


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _quick_check(path: Path, manifest: dict[str, Any] | None) -> tuple[bool, str]:
    """Manifest present and every listed file there with its recorded size (no hashing)."""
    if manifest is None:
        return False, "no readable manifest.json"
    files = manifest.get("files") or {}
    if not files:
        return False, "manifest lists no files"
    for rel, meta in files.items():
        file = path / rel
        if not file.is_file():
            return False, f"{rel} is missing"
        if file.stat().st_size != meta.get("bytes"):
            return False, f"{rel} has the wrong size"
    return True, "sizes match the manifest (hashes not recomputed)"


def list_checkpoints(save_dir: str, *, hash_files: bool = False) -> list[CheckpointInfo]:
    """Every ``step-<n>`` folder, newest first. ``hash_files`` recomputes every sha256 (slow
    for big models: use it in tasks, not in page views)."""
    out = []
    for step, path in _step_dirs(save_dir):
        manifest = _manifest(path)
        ok, reason = verify(path) if hash_files else _quick_check(path, manifest)
        metrics = (manifest or {}).get("metrics") or {}
        loss = metrics.get("loss") if isinstance(metrics, dict) else None
        out.append(
            CheckpointInfo(
                path=str(path),
                step=int((manifest or {}).get("step", step)) if manifest else step,
                ok=ok,
                reason=reason,
                created=(manifest or {}).get("created"),
                loss=loss if isinstance(loss, int | float) else None,
                hashed=hash_files,
            )
        )
    return out


def newest_verified(save_dir: str) -> CheckpointInfo | None:
    """The newest checkpoint whose every file matches its manifest's sha256, or None."""
    for step, path in _step_dirs(save_dir):
        ok, reason = verify(path)
        if ok:
            manifest = _manifest(path) or {}
            return CheckpointInfo(
                path=str(path),
                step=int(manifest.get("step", step)),
                ok=True,
                reason=reason,
                created=manifest.get("created"),
                hashed=True,
            )
    return None


def _tail_records(save_dir: str, tail_bytes: int) -> list[dict[str, Any]]:
    """The records in the last ``tail_bytes`` of the trainer's JSONL log
    (``save_dir/metrics.jsonl``); a line cut by the window or being written is skipped."""
    path = Path(save_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(size - tail_bytes, 0))
            lines = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def latest_metrics(save_dir: str, *, tail_bytes: int = 65536) -> dict[str, Any] | None:
    """The last training-step record of the trainer's log (events such as the config,
    checkpoints and resumes are not metrics)."""
    steps = [r for r in _tail_records(save_dir, tail_bytes) if "event" not in r]
    return steps[-1] if steps else None


SERIES = (
    "training_loss",
    "training_gradient_norm",
    "training_learning_rate",
    "training_tokens_per_second",
)


def metric_series(
    save_dir: str, *, tail_bytes: int = 8 << 20, points: int = 1000
) -> dict[str, list[float | None]]:
    """Per-step series for the run page's charts: ``step`` and each of ``SERIES``, from the
    last ``tail_bytes`` of the log (about 20,000 steps), thinned to at most ``points`` by
    taking every k-th step (the last step is always kept)."""
    steps = [r for r in _tail_records(save_dir, tail_bytes) if "event" not in r and "step" in r]
    if len(steps) > points:
        stride = -(-len(steps) // points)
        steps = steps[::-stride][::-1]  # every k-th counted back from the newest
    out: dict[str, list[float | None]] = {"step": [float(r["step"]) for r in steps]}
    for key in SERIES:
        out[key] = [r.get(key) for r in steps]
    return out


def requeue_marker(save_dir: str) -> dict[str, Any] | None:
    """The trainer's ``requeue.json`` (written after its stop checkpoint, deleted by the next
    attempt when it starts): the launcher-independent "requeue me", since torchrun exits 1
    when its workers exit 75."""
    try:
        data = json.loads((Path(save_dir) / "requeue.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

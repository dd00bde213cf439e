"""Checkpoints that describe themselves and never leave a half-written step behind.

Layout under ``save_dir``::

    step-000100/
        manifest.json       written last; see MANIFEST_FORMAT below
        model.pt, optimizer.pt, rng-<rank>.pt       (single, ddp)
        dcp/.metadata, dcp/__<rank>_0.distcp, rng-<rank>.pt      (fsdp2)
        deepspeed/..., latest, zero_to_fp32.py, rng-<rank>.pt   (deepspeed)

Save protocol (every rank takes part): rank 0 makes ``.tmp-step-000100``; every rank writes its
files there; barrier; rank 0 fsyncs every file, hashes it, writes ``manifest.json`` (fsync),
renames the folder to ``step-000100`` and fsyncs ``save_dir``; barrier. A process killed at
any point leaves either a ``.tmp-*`` folder (ignored, removed at the next start) or a complete
checkpoint.

``resume="latest"`` walks ``step-*`` folders newest first and takes the first whose manifest
parses, has the expected format, and whose files all exist with the recorded sha256; each
skipped folder is logged with its reason.

Manifest (``format: "trainer-checkpoint"``, ``format_version: 1``): ``step``, ``tokens_seen``,
``data`` (sampler state: the exact next sample), ``engine``, ``world_size``, ``config`` (the
whole TrainConfig), ``code_version`` (package version and git commit when known),
``created`` (unix time), ``metrics`` (last loss etc.), ``tokenizer`` (fingerprint and size:
a resume with another tokenizer is refused) and ``files`` (relative path ->
``{"sha256", "bytes"}`` for every other file in the folder).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import trainer
from trainer.data.shards import fsync_dir, sha256_file

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "trainer-checkpoint"
MANIFEST_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


def code_version() -> dict[str, str]:
    """Package version and, when run from a git checkout, the commit."""
    out = {"trainer": trainer.__version__}
    commit = os.environ.get("TRAINER_GIT_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    if commit:
        out["git_commit"] = commit
    return out


def verify(path: Path) -> tuple[bool, str]:
    """(ok, reason) for one checkpoint folder: manifest present and every hash matching."""
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        return False, "no manifest.json (partial or foreign folder)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return False, f"manifest.json unreadable: {exc}"
    if manifest.get("format") != MANIFEST_FORMAT:
        return False, f"manifest format {manifest.get('format')!r} is not {MANIFEST_FORMAT!r}"
    if manifest.get("format_version") != MANIFEST_VERSION:
        return False, f"manifest format_version {manifest.get('format_version')!r} unsupported"
    files = manifest.get("files") or {}
    if not files:
        return False, "manifest lists no files"
    for rel, meta in sorted(files.items()):
        file = path / rel
        if not file.is_file():
            return False, f"{rel} is missing"
        if file.stat().st_size != meta["bytes"]:
            return False, f"{rel} has {file.stat().st_size} bytes, manifest says {meta['bytes']}"
        if sha256_file(file) != meta["sha256"]:
            return False, f"{rel} sha256 does not match the manifest"
    return True, "ok"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint folder."""
    return json.loads((Path(path) / "manifest.json").read_text())


class CheckpointManager:
    """``save``, ``load`` and ``close``: the trainer's only way to touch checkpoints.

    ``engine`` supplies ``rank``, ``barrier()``, ``broadcast_object()``, ``save_state(dir)``
    and ``load_state(dir)``; the manager owns folders, hashing, manifests and retention.
    """

    def __init__(self, save_dir: str | Path, engine: Any, keep_last: int = 3) -> None:
        self.dir = Path(save_dir)
        self.engine = engine
        self.keep_last = keep_last
        self.rank = engine.rank
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".tmp-step-*"):
                log.warning("removing interrupted checkpoint write %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        engine.barrier()

    @staticmethod
    def folder_name(step: int) -> str:
        """``step-000100`` (zero-padded so names sort by step)."""
        return f"step-{step:06d}"

    def save(self, step: int, meta: dict[str, Any]) -> Path:
        """Write a checkpoint of the engine at ``step``; ``meta`` goes into the manifest."""
        final = self.dir / self.folder_name(step)
        tmp = self.dir / f".tmp-{self.folder_name(step)}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.engine.barrier()
        self.engine.save_state(tmp)
        self.engine.barrier()
        if self.rank == 0:
            files = {}
            for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
                rel = file.relative_to(tmp).as_posix()
                files[rel] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
            for sub in sorted({p.parent for p in tmp.rglob("*") if p.is_file()}):
                fsync_dir(sub)
            manifest = {
                "format": MANIFEST_FORMAT,
                "format_version": MANIFEST_VERSION,
                "step": step,
                "created": time.time(),
                "code_version": code_version(),
                **meta,
                "files": files,
            }
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            with open(tmp / "manifest.json", "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(tmp)
            if final.exists():  # re-saving a step (e.g. signal right after a periodic save)
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(self.dir)
            self._retain()
        self.engine.barrier()
        return final

    def _retain(self) -> None:
        if self.keep_last <= 0:
            return
        steps = self.list_steps()
        for step, path in steps[: max(0, len(steps) - self.keep_last)]:
            log.info("retention: removing %s (keep_last=%d)", path, self.keep_last)
            shutil.rmtree(path, ignore_errors=True)
            del step

    def list_steps(self) -> list[tuple[int, Path]]:
        """``(step, folder)`` of every ``step-*`` folder, oldest first (verified or not)."""
        out = []
        if self.dir.exists():
            for path in self.dir.iterdir():
                match = _STEP_DIR.match(path.name)
                if match and path.is_dir():
                    out.append((int(match.group(1)), path))
        return sorted(out)

    def latest(self) -> Path | None:
        """Newest checkpoint that verifies; rank 0 decides, every rank gets the answer."""
        choice = None
        if self.rank == 0:
            for _, path in reversed(self.list_steps()):
                ok, reason = verify(path)
                if ok:
                    choice = str(path)
                    break
                log.warning("skipping checkpoint %s: %s", path, reason)
        choice = self.engine.broadcast_object(choice)
        return Path(choice) if choice else None

    def resolve(self, resume: str) -> Path | None:
        """``""`` -> None, ``"latest"`` -> :meth:`latest`, else the given folder (verified)."""
        if not resume:
            return None
        if resume == "latest":
            return self.latest()
        path = Path(resume)
        ok, reason = verify(path)
        if not ok:
            raise ValueError(f"cannot resume from {path}: {reason}")
        return path

    def load(self, path: Path) -> dict[str, Any]:
        """Load engine state from ``path``; returns its manifest."""
        manifest = read_manifest(path)
        if manifest.get("engine") != self.engine.name:
            raise ValueError(
                f"{path} was written by engine {manifest.get('engine')!r}, this run uses "
                f"{self.engine.name!r}"
            )
        if self.engine.name == "deepspeed" and manifest.get("world_size") != self.engine.world:
            raise ValueError(
                f"{path} holds ZeRO shards for world size {manifest.get('world_size')}, this run "
                f"has {self.engine.world}"
            )
        self.engine.load_state(path)
        self.engine.barrier()
        return manifest

    def close(self) -> None:
        """Nothing is written asynchronously yet; kept for the narrow save/load/close contract."""

"""``deid_folder``: de-identify a whole tree with the engine, on every core, with a report.

Needs no database: the project key comes from ``apps.deid.config`` and no re-identification
map is kept unless a vault is asked for (``--vault``, which then needs the database). Every
input file appears exactly once in the report; a file the engine cannot make safe is
quarantined (reported, no output), and nothing is ever written half-cleaned: outputs are
written to a temporary name, fsynced and renamed into place.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from apps.deid.engine.api import DeidEngine
from apps.deid.engine.profile import DeidProfile
from apps.deid.engine.result import ERROR, OK, QUARANTINED

# Per-process engine, built once by the pool initializer (RapidOCR loads once per process).
_engine: DeidEngine | None = None


@dataclass(frozen=True)
class FolderJob:
    in_dir: str
    out_dir: str
    rels: tuple[str, ...]  # the files of one folder: they share the patient context


def _init(key_secret: bytes, profile: dict[str, Any], ocr: Any, vault: bool) -> None:
    global _engine
    from apps.deid.engine.keys import ProjectKey

    vault_obj = None
    if vault:
        from django.db import connections

        from apps.deid.services import make_vault

        connections.close_all()  # never share the parent's connection across fork
        vault_obj = make_vault()
    _engine = DeidEngine(
        ProjectKey(key_secret), DeidProfile.from_dict(profile), vault=vault_obj, ocr=ocr
    )


def _context(engine: DeidEngine, in_dir: Path, rels: tuple[str, ...]) -> Any:
    """The patient named by the first readable DICOM header of the folder, if any."""
    from apps.deid.engine.api import detect_kind
    from apps.deid.engine.dicom import patient_context, read_dicom

    for rel in rels:
        path = in_dir / rel
        if path.is_symlink() or not path.is_file():
            continue
        try:
            with path.open("rb") as fh:
                head = fh.read(4096)
            if detect_kind(head, path.name) != "dicom":
                continue
            return patient_context(read_dicom(path.read_bytes()), engine.key)
        except Exception:  # noqa: S112 - a bad header only means no shared context
            continue
    return None


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def _safe_rel(rel: PurePosixPath) -> bool:
    return not rel.is_absolute() and ".." not in rel.parts and "\x00" not in str(rel)


def process_folder(job: FolderJob) -> list[dict[str, Any]]:
    """De-identify the files of one folder; never raises (each file gets its entry)."""
    engine = _engine
    assert engine is not None, "pool initializer did not run"
    in_dir, out_dir = Path(job.in_dir), Path(job.out_dir)
    ctx = _context(engine, in_dir, job.rels)
    entries = []
    for rel in job.rels:
        entry: dict[str, Any] = {
            "input": rel,
            "output": None,
            "kind": "unknown",
            "status": ERROR,
            "reason": "",
            "findings": {},
        }
        try:
            path = in_dir / rel
            if path.is_symlink():
                entry.update(status=QUARANTINED, reason="symlink_not_followed")
                entries.append(entry)
                continue
            result = engine.process_path(path, context=ctx)
            entry.update(
                kind=result.kind,
                status=result.status,
                reason=result.reason,
                findings=dict(result.findings),
            )
            if result.status == OK and result.output is not None:
                out_rel = PurePosixPath(engine.pseudonymize_path(rel, context=ctx))
                if result.output_name:
                    out_rel = out_rel.parent / result.output_name
                if not _safe_rel(out_rel) or "/" in (result.output_name or ""):
                    raise ValueError("output_path_invalid")
                _write_atomic(out_dir / out_rel, result.output)
                for suffix, blob in result.extra_outputs.items():
                    extra = (
                        out_rel.with_suffix(suffix)
                        if suffix.startswith(".")
                        else out_rel.parent / suffix
                    )
                    if not _safe_rel(extra) or "/" in suffix:
                        raise ValueError("output_path_invalid")
                    _write_atomic(out_dir / extra, blob)
                entry["output"] = out_rel.as_posix()
        except Exception as exc:  # one file's failure must not lose the others
            entry.update(status=ERROR, output=None, reason=f"internal_error: {type(exc).__name__}")
        entries.append(entry)
    return entries


def iter_folders(in_dir: Path) -> Iterator[tuple[str, ...]]:
    """Every file (and symlink) under ``in_dir``, grouped by folder, in a stable order."""
    for root, dirs, files in os.walk(in_dir, followlinks=False):
        dirs.sort()
        rel_root = Path(root).relative_to(in_dir)
        # Symlinked folders are reported as files (not followed).
        names = sorted(files + [d for d in dirs if (Path(root) / d).is_symlink()])
        if names:
            yield tuple((rel_root / n).as_posix() for n in names)


def deid_folder(
    in_dir: Path,
    out_dir: Path,
    *,
    key_secret: bytes,
    profile: DeidProfile,
    ocr: Any = "auto",
    workers: int | None = None,
    vault: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """De-identify ``in_dir`` into ``out_dir``; returns the report (files + summary)."""
    in_dir, out_dir = in_dir.resolve(), out_dir.resolve()
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} does not exist")
    if out_dir == in_dir or out_dir.is_relative_to(in_dir):
        raise ValueError("the output folder must not be inside the input folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    jobs = [FolderJob(str(in_dir), str(out_dir), rels) for rels in iter_folders(in_dir)]
    entries: list[dict[str, Any]] = []
    workers = max(1, workers or os.cpu_count() or 1)
    init = (key_secret, profile.to_dict(), ocr, vault)
    if workers == 1:
        _init(*init)
        for job in jobs:
            done = process_folder(job)
            entries.extend(done)
            if progress:
                progress(len(done))
    else:
        with ProcessPoolExecutor(workers, initializer=_init, initargs=init) as pool:
            futures = {pool.submit(process_folder, job): job for job in jobs}
            for future in as_completed(futures):
                try:
                    done = future.result()
                except Exception as exc:  # a worker died (e.g. killed by the OOM killer)
                    done = [
                        {
                            "input": rel,
                            "output": None,
                            "kind": "unknown",
                            "status": ERROR,
                            "reason": f"worker_failed: {type(exc).__name__}",
                            "findings": {},
                        }
                        for rel in futures[future].rels
                    ]
                entries.extend(done)
                if progress:
                    progress(len(done))
    entries.sort(key=lambda e: e["input"])
    findings: Counter[str] = Counter()
    for e in entries:
        findings.update(e["findings"])
    summary = {
        "files": len(entries),
        "ok": sum(e["status"] == OK for e in entries),
        "quarantined": sum(e["status"] == QUARANTINED for e in entries),
        "error": sum(e["status"] == ERROR for e in entries),
        "by_kind": dict(Counter(e["kind"] for e in entries)),
        "findings": dict(findings),
        "profile": profile.fingerprint(),
        "workers": workers,
        "seconds": round(time.monotonic() - started, 3),
    }
    return {"files": entries, "summary": summary}

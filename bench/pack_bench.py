"""Packing throughput against GNU tar on the same files, and random access through the index.

    .venv/bin/python bench/pack_bench.py [--studies 40] [--slices 10] [--rounds 3]
        [--workers 1 [2 ...]] [--shard-mb 64] [--cold] [--dirty-mib 32]

Generates de-identified-looking CT studies (512×512 16-bit slices, one report each; the
defaults make about 200 MiB), reads them once so both sides start from a warm page cache, then
times, alternating, best of ``--rounds``:

- ``tar cf`` of the folder (the ceiling: it copies bytes), alone and followed by an fsync of
  the tar (the packer fsyncs every shard before a version can be marked ready);
- the packer, the steps ``apps.datasets.services`` runs: plan, re-hash the non-DICOM files,
  check each DICOM's file meta, write the shards (DICOM copied byte for byte and checked against
  its recorded sha256, the shard hashed as written, fsync), index files and manifest; once
  for each ``--workers`` count of shards written at once (threads, each shard with its own
  two hash streams; ``DATASETS_PACK_WORKERS`` sets it in the service, where it also sets the
  processes that convert reports and waveforms: here one, since these samples have nothing
  to convert and spawning processes would only add a fixed start-up cost);

- one SHA-256 pass over the same files (read included): the packer must make two (each DICOM
  file against its recorded hash, the shard for the manifest), so this bounds it;

then ``verify`` (re-hashing the shards on 1, 2 ... threads) against GNU ``sha256sum``, and
finally random reads of whole samples through the index, DICOM decoded into HU stacks (the
trainer's read), with the reader's short path for common files and, alternating, without it
(pydicom for every file). Goal (issue 5): packing ≥ 80 % of tar's MiB/s. Django-free.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.datasets import packing
from apps.demo import synthetic
from trainer.data.shards import ShardReader, ShardWriter, sha256_file


def make_files(root: Path, studies: int, slices: int) -> list[packing.SourceFile]:
    import numpy as np
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    files = []
    rid = 0
    for p in synthetic.patients(studies):
        study = generate_uid(entropy_srcs=[f"bench-{p.index}"])
        series = generate_uid(entropy_srcs=[f"bench-s-{p.index}"])
        for s in range(slices):
            path = root / f"s{p.index:03d}" / f"{s:03d}.dcm"
            synthetic.write_ct(path, p, s, study, series)
            ds = dcmread(path)  # enlarge to 512x512, as a CT slice is
            big = np.random.default_rng(rid).integers(0, 2000, (512, 512)).astype("<i2")
            ds.Rows, ds.Columns, ds.PixelData = 512, 512, big.tobytes()
            ds.save_as(path)
            rid += 1
            files.append(_source(rid, path, root, "dicom", "CT", p.index))
        note = root / f"s{p.index:03d}" / "report.txt"
        note.write_text(synthetic.report(p), encoding="utf-8")
        rid += 1
        files.append(_source(rid, note, root, "text", "", p.index))
    return files


def _source(rid: int, path: Path, root: Path, kind: str, modality: str, study: int):
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return packing.SourceFile(
        result_id=rid,
        raw_file_id=rid,
        raw_sha256=sha,
        run_id=1,
        kind=kind,
        modality=modality,
        path=path,
        relpath=str(path.relative_to(root)),
        output_sha256=sha,
        patient_pseudonym=f"P{study:04d}",
        study_key=f"study{study:04d}",
        profile="bench",
    )


def pack(files: list[packing.SourceFile], out: Path, workers: int, shard_mb: float) -> None:
    """What ``services._write`` does, without the database."""
    planned, _skipped = packing.plan_samples(files)
    for plan in planned:
        for f in plan.files:
            if f.kind not in packing.IMAGE_KINDS:  # DICOM: checked by the writer as it copies
                assert sha256_file(f.path) == f.output_sha256
    max_bytes = int(shard_mb * (1 << 20))
    with ShardWriter(
        out, samples_per_shard=1 << 40, max_shard_bytes=max_bytes, workers=workers
    ) as w:
        for _plan, samples, _tokens, reason in packing.build_samples(planned, 1):
            assert not reason, reason
            for sample in samples:
                w.write(sample)
    for index in sorted((out / "index").glob("*.json")):
        sha256_file(index)  # services pins the index files in the manifest


@contextlib.contextmanager
def _reader_path(path: str) -> Iterator[None]:
    """``pydicom only``: the reader's short path for common files switched off (its peer)."""
    from trainer.data import dicom

    if path == "short path":
        yield
        return
    quick = dicom._quick_header
    dicom._quick_header = lambda _data: None  # type: ignore[assignment]
    try:
        yield
    finally:
        dicom._quick_header = quick  # type: ignore[assignment]


def tar(src: Path, out: Path, fsync: bool) -> None:
    subprocess.run(["tar", "cf", str(out), "-C", str(src), "."], check=True)
    if fsync:
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def hash_shards(shards: list[Path], threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(sha256_file, shards))


def hash_once(files: list[packing.SourceFile]) -> None:
    for f in files:
        sha256_file(f.path)


def cpu() -> float:
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def drop_page_cache() -> None:
    """Write back and drop the page cache, so the next run reads its input from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"--cold needs root to drop the page cache: {exc}") from None


@contextlib.contextmanager
def dirty_limit(mib: int) -> Iterator[None]:
    """Cap the kernel's dirty page cache at ``mib`` MiB (root) for the runs, then restore it.

    ``tar cf`` leaves up to ``vm.dirty_ratio`` of memory (here 20% of 23 GiB) unwritten when
    it exits; on a dataset many times that size this residue is a few percent and ``tar`` runs
    at the disk's write speed. A small cap puts a bench-sized input in that regime, as
    ``--cold`` does for reads; the packer, which fsyncs each shard, is barely affected.
    """
    vm = Path("/proc/sys/vm")
    names = ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes")
    saved = {name: (vm / name).read_text().strip() for name in names}
    try:
        (vm / "dirty_bytes").write_text(f"{mib << 20}\n")
        (vm / "dirty_background_bytes").write_text(f"{mib << 19}\n")
    except OSError as exc:
        raise SystemExit(f"--dirty-mib needs root: {exc}") from None
    try:
        yield
    finally:
        for name in names:  # ratio and bytes exclude each other: restore the one that was set
            if saved[name] != "0":
                (vm / name).write_text(saved[name] + "\n")


def timed(run: Callable[[], None], clean: Path, cold: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its children) of one run."""
    if clean.is_dir():
        shutil.rmtree(clean)
    else:
        clean.unlink(missing_ok=True)
    os.sync()  # no run pays for the writeback of the one before
    if cold:
        drop_page_cache()
    c0, t0 = cpu(), time.perf_counter()
    run()
    return time.perf_counter() - t0, cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--slices", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--shard-mb", type=float, default=64.0)
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument(
        "--cold",
        action="store_true",
        help="drop the page cache before every run (root): input read from the disk, as a "
        "real dataset larger than memory is",
    )
    ap.add_argument(
        "--dirty-mib",
        type=int,
        default=0,
        help="cap the kernel's dirty page cache during the runs (root): outputs written at the "
        "disk's speed, as for a dataset many times larger than memory (see dirty_limit)",
    )
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        dirty_limit(args.dirty_mib) if args.dirty_mib else contextlib.nullcontext(),
    ):
        src, out, tar_out = Path(tmp) / "src", Path(tmp) / "shards", Path(tmp) / "all.tar"
        files = make_files(src, args.studies, args.slices)
        size = sum(f.path.stat().st_size for f in files) / 2**20
        if not args.cold:
            for f in files:
                f.path.read_bytes()  # warm page cache for both sides
        runs = {
            "GNU tar cf": (lambda: tar(src, tar_out, fsync=False), tar_out),
            "GNU tar cf + fsync": (lambda: tar(src, tar_out, fsync=True), tar_out),
            **{
                f"packer, {n} writer{'s' if n > 1 else ''}": (
                    lambda n=n: pack(files, out, n, args.shard_mb),
                    out,
                )
                for n in args.workers
            },
            "SHA-256, one pass": (lambda: hash_once(files), Path(tmp) / "none"),
        }
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, (run, clean) in runs.items():
                wall, cpu_s = timed(run, clean, args.cold)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu_s)
        shard_mib = sum(p.stat().st_size for p in out.glob("*.tar")) / 2**20
        shard_count = len(list(out.glob("*.tar")))

        # verify: re-hash the shards, as services.verify_version does with its thread pool,
        # against GNU sha256sum (one process, one file at a time) on the same shards
        shards = sorted(out.glob("*.tar"))
        checks = {
            "sha256sum (GNU)": lambda: subprocess.run(
                ["sha256sum", *map(str, shards)], check=True, capture_output=True
            ),
            **{
                f"verify, {n} thread{'s' if n > 1 else ''}": (lambda n=n: hash_shards(shards, n))
                for n in args.workers
            },
        }
        verify: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, check in checks.items():
                wall, cpu_s = timed(check, Path(tmp) / "none", args.cold)
                if name not in verify or wall < verify[name][0]:
                    verify[name] = (wall, cpu_s)

        reader = ShardReader(out)
        picks = [random.Random(0).randrange(len(reader)) for _ in range(args.reads)]
        for i in picks:  # untimed: both paths then read from the page cache
            reader[i]
        lat = {"short path": [], "pydicom only": []}
        for i in picks:  # alternating, so both see the same load
            for path, latencies in lat.items():
                with _reader_path(path):
                    t0 = time.perf_counter()
                    reader[i]
                    latencies.append((time.perf_counter() - t0) * 1000)
        reader.close()

    cache = "cold (dropped before each run)" if args.cold else "warm"
    if args.dirty_mib:
        cache += f" (dirty pages capped at {args.dirty_mib} MiB)"
    print(
        f"input: {len(files)} files, {size:.1f} MiB ({args.studies} studies × {args.slices} "
        f"slices of 512×512 + reports) -> {shard_mib:.1f} MiB in {shard_count} "
        f"shards of <= {args.shard_mb:g} MiB; best of {args.rounds} rounds, {cache} page cache, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'':24}{'MiB/s':>9}{'seconds':>9}{'CPU s':>8}")
    for name, (wall, cpu_s) in best.items():
        print(f"{name:24}{size / wall:>9.1f}{wall:>9.3f}{cpu_s:>8.2f}")
    for name, (wall, cpu_s) in verify.items():
        print(f"{name:24}{shard_mib / wall:>9.1f}{wall:>9.3f}{cpu_s:>8.2f}")
    for packer in (name for name in best if name.startswith("packer")):
        for peer in ("GNU tar cf", "GNU tar cf + fsync"):
            print(f"{packer} / {peer}: {best[peer][0] / best[packer][0]:.0%} (goal >= 80%)")
    for path, latencies in lat.items():
        print(
            f"random sample read through the index, DICOM decoded ({path}): median "
            f"{statistics.median(latencies):.2f} ms, p95 "
            f"{statistics.quantiles(latencies, n=20)[18]:.2f} ms over {len(latencies)} reads"
        )


if __name__ == "__main__":
    main()

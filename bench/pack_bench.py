"""Packing throughput against GNU tar on the same files, and random access through the index.

    .venv/bin/python bench/pack_bench.py [--studies 20] [--slices 10] [--workers 1]

Generates de-identified-looking CT studies (512×512 int16 slices, one report each), then times
(1) ``tar cf`` of the folder (the ceiling: it only copies bytes), (2) the packer: the same
plan/read/convert/write path ``apps.datasets.services`` runs (DICOM decoded into HU stacks,
sample JSON, tar members, per-shard index and manifest), and (3) random reads of whole samples
through the index. Goal (issue 5): packing ≥ 80 % of tar's MB/s. Django-free.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.datasets import packing
from apps.demo import synthetic
from trainer.data.shards import ShardReader, ShardWriter


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


def mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--slices", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reads", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out, tar = Path(tmp) / "src", Path(tmp) / "shards", Path(tmp) / "all.tar"
        files = make_files(src, args.studies, args.slices)
        size = mb(src)

        t0 = time.perf_counter()
        subprocess.run(["tar", "cf", str(tar), "-C", str(src), "."], check=True)
        tar_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        planned, _counts = packing.plan_samples(files)
        with ShardWriter(out, samples_per_shard=1 << 40, max_shard_bytes=256 << 20) as w:
            for _plan, samples, _tokens, reason in packing.build_samples(planned, args.workers):
                assert not reason, reason
                for sample in samples:
                    w.write(sample)
        pack_s = time.perf_counter() - t0

        reader = ShardReader(out)
        rng = random.Random(0)
        lat = []
        for _ in range(args.reads):
            i = rng.randrange(len(reader))
            t0 = time.perf_counter()
            reader[i]
            lat.append((time.perf_counter() - t0) * 1000)
        reader.close()
        shutil.rmtree(out, ignore_errors=True)

    print(
        f"input: {len(files)} files, {size:.1f} MiB ({args.studies} studies × {args.slices} "
        f"slices of 512×512 + reports), workers={args.workers}"
    )
    print(f"{'':28}{'MiB/s':>10}{'seconds':>10}")
    print(f"{'GNU tar cf (ceiling)':28}{size / tar_s:>10.1f}{tar_s:>10.2f}")
    print(f"{'packer (ours)':28}{size / pack_s:>10.1f}{pack_s:>10.2f}")
    print(f"packer / tar: {tar_s / pack_s:.0%} (goal >= 80%)")
    print(
        f"random sample read through the index: median {statistics.median(lat):.2f} ms, "
        f"p95 {statistics.quantiles(lat, n=20)[18]:.2f} ms over {len(lat)} reads"
    )


if __name__ == "__main__":
    main()

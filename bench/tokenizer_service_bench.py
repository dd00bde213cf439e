"""What the control plane adds to training a tokenizer: ``datasets.tokenizers.train_tokenizer``
(the worker's path: claim, heartbeat and cancel checks every 100 merges, write-once file,
lineage row, audit events) against the trainer's bare ``Tokenizer.train`` on the same text
read from the same version folder (the ceiling).

    .venv/bin/python bench/tokenizer_service_bench.py [--notes 2000 12000] [--vocab 4000 16000]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/...

The text is the de-identification bench's bilingual notes (``bench/deid_bench.py``), one note
per sample, written as a version folder through the trainer's ``ShardWriter`` (the real shard
format). Each figure is the best of ``--rounds``, the two alternated; the service gets a new
version each round (the same settings would return the ready row, which is the point of
determinism but not a measurement). Both learn the same merges, which is checked.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch_db import scratch_database


def write_version(root: Path, texts: list[str]) -> Path:
    from trainer.data.shards import Sample, ShardWriter

    with ShardWriter(root, samples_per_shard=500, lineage={"source": "bench"}) as writer:
        for i, text in enumerate(texts):
            writer.write(Sample(key=f"s{i:06d}", meta={"patient": f"P{i:06d}"}, text=text))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, nargs="+", default=[2000, 12000])
    parser.add_argument("--vocab", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with scratch_database():
        run(args)


def run(args: argparse.Namespace) -> None:
    from django.db import connection
    from tokenizer_bench import notes

    from apps.datasets import tokenizers
    from apps.datasets.models import DatasetVersion
    from trainer.data.tokenizer import Tokenizer, dataset_texts

    work = Path(tempfile.mkdtemp(prefix="tok-service-bench-"))
    print(f"database: {connection.vendor}")
    print(f"{'text':>24} {'vocab':>6} {'bare':>8} {'service':>8} {'overhead':>9}")
    try:
        number = 0
        for n in args.notes:
            texts = notes(n)
            mb = sum(len(t.encode()) for t in texts) / (1 << 20)
            folder = write_version(work / f"notes-{n}" / "v1", texts)
            Tokenizer.train(dataset_texts([folder], 1 << 40), 300)  # warm: page cache, imports
            for vocab in args.vocab:
                bare = service = float("inf")
                merges = None
                for _ in range(args.rounds):  # alternated, so drift hits both alike
                    gc.collect()
                    start = time.perf_counter()
                    tok = Tokenizer.train(dataset_texts([folder], 1 << 40), vocab)
                    bare = min(bare, time.perf_counter() - start)
                    merges = tok.merges
                    number += 1
                    version = DatasetVersion.objects.create(
                        name="bench",
                        number=number,
                        status="ready",
                        root=str(folder),
                        target_shard_mb=1,
                        modality_counts={"text": n},
                        sample_count=n,
                    )
                    gc.collect()
                    start = time.perf_counter()
                    row = tokenizers.train_tokenizer(
                        version, vocab_size=vocab, max_mb=4096, acting_user=None
                    )
                    service = min(service, time.perf_counter() - start)
                    assert Tokenizer.load(row.path).merges == merges, "different merges"
                    Path(row.path).chmod(0o644)
                    shutil.rmtree(Path(row.path).parent)
                overhead = 100 * (service - bare) / bare
                print(
                    f"{f'{n:,} notes, {mb:.2f} MB':>24} {vocab:>6} {bare:>7.2f}s "
                    f"{service:>7.2f}s {overhead:>8.1f}%"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Training the trainer's byte-level BPE tokenizer: ours against the first implementation and
HuggingFace ``tokenizers`` (Rust; the ceiling, when installed) on the same clinical notes.

    .venv/bin/python bench/tokenizer_bench.py [--notes 1000 12000] [--vocab 1000 4000]
        [--reference-max-notes 1000]

The notes are the de-identification bench's bilingual notes (``bench/deid_bench.py``:
Chinese and English sections, names, IDs, dates, clinical phrases; ~650 bytes each). "ours"
is ``Tokenizer.train`` (incremental pair counts, lazy heap); "reference" is the first
implementation (every pair of every word recounted for each merge), run only up to
``--reference-max-notes`` because it is quadratic; both learn the same merges, which is
checked. ``tokenizers`` (``pip install tokenizers``) trains a byte-level BPE of the same
vocabulary size with its own pre-tokenizer, on all cores: a ceiling, not the same merges.
Reported: wall seconds (best of ``--rounds``), MB of text per second, merges per second.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer.data.tokenizer import BYTE_OFFSET, Tokenizer, reference_merges


def hf_train(texts: list[str], vocab_size: int) -> int:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return int(tok.get_vocab_size())


def notes(n: int, seed: int = 2) -> list[str]:
    from deid_bench import make_note
    from faker import Faker

    rng = random.Random(seed)
    zh, en = Faker("zh_CN"), Faker("en_US")
    zh.seed_instance(seed)
    en.seed_instance(seed)
    return [make_note(rng, zh, en)[0] for _ in range(n)]


def best_of(rounds: int, fn: Callable[..., object], *args: object) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--notes", type=int, nargs="+", default=[1000, 12000])
    ap.add_argument("--vocab", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--reference-max-notes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    try:
        import tokenizers

        hf = f"tokenizers {tokenizers.__version__}"
    except ImportError:
        hf = ""
    peer = hf or "not installed"
    print(f"cores: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f}, peer: {peer}")
    head = ("notes", "MB", "vocab", "tool", "seconds", "MB/s", "merges/s")
    print("{:>6} {:>6} {:>6} {:<28} {:>8} {:>7} {:>9}".format(*head))
    for n in args.notes:
        texts = notes(n)
        mb = sum(len(t.encode()) for t in texts) / 1e6
        for vocab in args.vocab:
            merges = vocab - BYTE_OFFSET - 256
            rows: list[tuple[str, float]] = []
            secs, ours = best_of(args.rounds, Tokenizer.train, texts, vocab)
            rows.append(("ours (incremental)", secs))
            if n <= args.reference_max_notes:
                secs, ref = best_of(1, reference_merges, texts, vocab)
                assert isinstance(ours, Tokenizer) and ref == ours.merges, "merges differ"
                rows.append(("reference (first)", secs))
            if hf:
                secs, _ = best_of(args.rounds, hf_train, texts, vocab)
                rows.append((f"HF {hf} (Rust)", secs))
            for tool, secs in rows:
                print(
                    f"{n:>6} {mb:>6.2f} {vocab:>6} {tool:<28} {secs:>8.2f} {mb / secs:>7.2f} "
                    f"{merges / secs:>9.0f}"
                )
            sys.stdout.flush()


if __name__ == "__main__":
    main()

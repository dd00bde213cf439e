"""A byte-level BPE tokenizer that is trained and shipped offline (no hub downloads).

Ids ``0..8`` are the special tokens below (padding, sequence bounds, modality markers and the
placeholders that the model replaces with encoder output), ``9..264`` the 256 byte values, and
every further id one learned merge of two earlier ids. Any UTF-8 text (Chinese included)
round-trips exactly because the base alphabet is bytes.

Train with ``python -m trainer tokenizer --input notes.txt --vocab-size 8000 --out tok.json``.
Pure Python and torch-free, so the packing step can import it too.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

FORMAT = "trainer-bpe-1"
SPECIALS = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<img>",
    "</img>",
    "<wav>",
    "</wav>",
    "<img_patch>",
    "<wav_patch>",
)
PAD_ID, BOS_ID, EOS_ID, IMG_ID, IMG_END_ID, WAV_ID, WAV_END_ID, IMAGE_PATCH_ID, WAVE_PATCH_ID = (
    range(len(SPECIALS))
)
BYTE_OFFSET = len(SPECIALS)

# GPT-2 style pre-tokenisation with the standard library's Unicode-aware classes: merges never
# cross a word, number or punctuation boundary, which keeps training and encoding cheap.
_PRETOKEN = re.compile(
    r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|\s+(?!\S)|\s+", re.UNICODE
)


class Tokenizer:
    """Byte-level BPE: ``encode(text) -> ids`` and ``decode(ids) -> text``."""

    def __init__(self, merges: list[tuple[int, int]]) -> None:
        self.merges = [tuple(m) for m in merges]
        self.ranks = {pair: i for i, pair in enumerate(self.merges)}
        self.bytes_of: list[bytes] = [s.encode() for s in SPECIALS]
        self.bytes_of += [bytes([b]) for b in range(256)]
        for a, b in self.merges:
            self.bytes_of.append(self.bytes_of[a] + self.bytes_of[b])
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids (specials + bytes + merges)."""
        return len(self.bytes_of)

    def _encode_word(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ids = [b + BYTE_OFFSET for b in word.encode()]
        while len(ids) > 1:
            # Apply the earliest-learned merge present, as in training.
            best = min(
                (
                    (self.ranks.get((a, b), 1 << 60), i)
                    for i, (a, b) in enumerate(itertools.pairwise(ids))
                ),
            )
            rank, i = best
            if rank == 1 << 60:
                break
            ids[i : i + 2] = [rank + BYTE_OFFSET + 256]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        out: list[int] = []
        for word in _PRETOKEN.findall(text):
            out.extend(self._encode_word(word))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are dropped, invalid UTF-8 is replaced."""
        data = b"".join(self.bytes_of[i] for i in ids if i >= BYTE_OFFSET)
        return data.decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        """sha256 of what fixes the ids (format, specials, merges): checkpoints record it."""
        payload = {"format": FORMAT, "specials": list(SPECIALS), "merges": self.merges}
        return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()

    def dumps(self) -> bytes:
        """The tokenizer as the JSON :meth:`save` writes (format, specials, merges)."""
        payload = {"format": FORMAT, "specials": list(SPECIALS), "merges": self.merges}
        return json.dumps(payload).encode()

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (format, specials, merges)."""
        Path(path).write_bytes(self.dumps())

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by :meth:`save`; refuses other formats."""
        payload = json.loads(Path(path).read_text())
        if payload.get("format") != FORMAT or tuple(payload.get("specials", ())) != SPECIALS:
            raise ValueError(f"{path}: not a {FORMAT} tokenizer (format {payload.get('format')!r})")
        return cls([tuple(m) for m in payload["merges"]])

    @classmethod
    def for_dataset(cls, folder: str | Path, explicit: str | Path = "") -> Tokenizer:
        """The tokenizer a run on ``folder`` uses: ``explicit`` when given, else the dataset's
        own ``tokenizer.json``, else the byte-level base (no merges: 265 ids, every text
        still round-trips; about three ids per Chinese character instead of one or two).
        Versions packed by the control plane carry none: their tokenizers are trained next to
        them (the control plane's version page) and passed as ``explicit``."""
        if explicit:
            return cls.load(explicit)
        own = Path(folder) / "tokenizer.json"
        return cls.load(own) if own.is_file() else cls([])

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tokenizer:
        """Learn ``vocab_size - 265`` merges from ``texts`` (deterministic: the most frequent
        pair first, ties to the smaller ids).

        Incremental: pair counts are kept up to date and each merge rewrites only the words
        that hold the pair, with a lazy max-heap of counts (an entry whose count went stale is
        re-queued when it surfaces), instead of recounting every word for every merge.
        ``progress(merges learned, merges wanted)`` every 100 merges and at the end.
        """
        if vocab_size < BYTE_OFFSET + 256:
            raise ValueError(f"vocab_size {vocab_size} is below the {BYTE_OFFSET + 256} base ids")
        counts: collections.Counter[str] = collections.Counter()
        for text in texts:
            counts.update(_PRETOKEN.findall(text))
        words = [[b + BYTE_OFFSET for b in w.encode()] for w in counts]
        freqs = list(counts.values())
        pair_count: collections.Counter[tuple[int, int]] = collections.Counter()
        holders: dict[tuple[int, int], set[int]] = collections.defaultdict(set)
        for w, ids in enumerate(words):
            for pair in itertools.pairwise(ids):
                pair_count[pair] += freqs[w]
                holders[pair].add(w)
        heap = [(-c, a, b) for (a, b), c in pair_count.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        next_id = BYTE_OFFSET + 256
        while next_id < vocab_size and heap:
            neg, a, b = heapq.heappop(heap)
            best = (a, b)
            count = pair_count.get(best, 0)
            if count <= 0:
                continue
            if -neg != count:  # stale: its count fell since this entry was pushed
                heapq.heappush(heap, (-count, a, b))
                continue
            merges.append(best)
            changed: set[tuple[int, int]] = set()
            for w in holders.pop(best, ()):
                ids, freq = words[w], freqs[w]
                merged: list[int] = []
                i, n = 0, len(ids)
                while i < n:
                    if i < n - 1 and ids[i] == a and ids[i + 1] == b:
                        # Only the neighbours' pairs change: (left, a) -> (left, new) and
                        # (b, right) -> (new, right), left as already rewritten.
                        if merged:
                            left = merged[-1]
                            pair_count[(left, a)] -= freq
                            pair_count[(left, next_id)] += freq
                            holders[(left, next_id)].add(w)
                            changed.add((left, next_id))
                        if i + 2 < n:
                            right = ids[i + 2]
                            pair_count[(b, right)] -= freq
                            pair_count[(next_id, right)] += freq
                            holders[(next_id, right)].add(w)
                            changed.add((next_id, right))
                        merged.append(next_id)
                        i += 2
                    else:
                        merged.append(ids[i])
                        i += 1
                words[w] = merged
            del pair_count[best]
            for pair in changed:
                if pair_count[pair] > 0:
                    heapq.heappush(heap, (-pair_count[pair], *pair))
            next_id += 1
            if progress is not None and len(merges) % 100 == 0:
                progress(len(merges), vocab_size - BYTE_OFFSET - 256)
        if progress is not None:
            progress(len(merges), vocab_size - BYTE_OFFSET - 256)
        return cls(merges)


def reference_merges(texts: Iterable[str], vocab_size: int) -> list[tuple[int, int]]:
    """BPE as first written, every pair of every word recounted for each merge: quadratic,
    kept as the specification ``Tokenizer.train`` must match (tests, bench)."""
    counts = collections.Counter(w for t in texts for w in _PRETOKEN.findall(t))
    words = [[b + BYTE_OFFSET for b in w.encode()] for w in counts]
    freqs = list(counts.values())
    merges: list[tuple[int, int]] = []
    for new in range(BYTE_OFFSET + 256, vocab_size):
        pairs: collections.Counter[tuple[int, int]] = collections.Counter()
        for ids, freq in zip(words, freqs, strict=True):
            for pair in itertools.pairwise(ids):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))[0]
        merges.append(best)
        for ids in words:
            i = 0
            while i < len(ids) - 1:
                if (ids[i], ids[i + 1]) == best:
                    ids[i : i + 2] = [new]
                i += 1
    return merges


def dataset_texts(roots: Iterable[str | Path], max_bytes: int) -> Iterator[str]:
    """The text members of dataset version folders, in sample order, until ``max_bytes`` of
    UTF-8 are read: what ``python -m trainer tokenizer --data`` trains on."""
    from trainer.data.shards import ShardReader

    budget = max_bytes
    for root in roots:
        reader = ShardReader(root)
        try:
            for i in range(len(reader)):
                data = reader.read_member(i, "txt")
                if data is None:
                    continue
                if budget <= 0:
                    return
                budget -= len(data)
                yield data.decode("utf-8")
        finally:
            reader.close()

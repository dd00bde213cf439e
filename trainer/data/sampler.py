"""A deterministic, resumable sampler that splits each global batch across data-parallel ranks.

The order is a fixed function of ``(seed, epoch)``: epoch ``e`` is a permutation of the
training indices drawn from ``numpy.random.default_rng([seed, e])``. The whole state is one
integer, ``position`` (samples consumed by all ranks together), so a resumed run continues at
exactly the next sample, whatever the rank count was as long as the global batch is the same.

Global batch ``g`` of size ``micro * dp`` is the next ``micro * dp`` indices of the stream;
rank ``r`` takes ``g[r*micro:(r+1)*micro]``. A single process with ``micro * dp`` per step
therefore sees the same samples as ``dp`` ranks with ``micro`` each.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ResumableSampler:
    """Yields this rank's sample indices micro-batch by micro-batch; ``position`` is the state."""

    def __init__(
        self,
        indices: list[int] | range,
        micro_batch: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world size {world}")
        if len(indices) == 0:
            raise ValueError("the sampler got no indices (is the dataset empty?)")
        self.indices = np.asarray(list(indices), dtype=np.int64)
        self.micro, self.rank, self.world = micro_batch, rank, world
        self.seed, self.shuffle = seed, shuffle
        self.position = 0
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    @property
    def global_batch(self) -> int:
        """Samples consumed by all ranks together per micro-batch step."""
        return self.micro * self.world

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))
                order = self.indices[perm]
            else:
                order = self.indices
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def stream(self, start: int, count: int) -> list[int]:
        """Dataset indices at global stream positions ``start .. start+count`` (may span epochs)."""
        n = len(self.indices)
        out = []
        for pos in range(start, start + count):
            out.append(int(self._order(pos // n)[pos % n]))
        return out

    def at(self, position: int) -> list[int]:
        """This rank's indices for the global micro-batch that starts at stream ``position``."""
        return self.stream(position + self.rank * self.micro, self.micro)

    def peek(self, steps_ahead: int = 0) -> list[int]:
        """This rank's indices for the micro-batch ``steps_ahead`` after the current one."""
        return self.at(self.position + steps_ahead * self.global_batch)

    def next(self) -> list[int]:
        """This rank's indices for the next micro-batch; advances the shared position."""
        out = self.peek(0)
        self.position += self.global_batch
        return out

    @property
    def epoch(self) -> int:
        """Epoch that the next sample belongs to."""
        return self.position // len(self.indices)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position (stored in every checkpoint manifest)."""
        return {
            "position": self.position,
            "seed": self.seed,
            "samples": len(self.indices),
            "global_batch": self.global_batch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state['position']``; refuses a different dataset size or seed."""
        if state["samples"] != len(self.indices) or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for {state['samples']} samples with seed {state['seed']}, "
                f"this run has {len(self.indices)} samples with seed {self.seed}"
            )
        self.position = int(state["position"])

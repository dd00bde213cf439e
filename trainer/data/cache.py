"""Node-local shard cache with a background prefetcher (the seed's Lustre -> NVMe prefetcher).

Shards are copied from the dataset folder (shared storage) into ``cache_dir`` (local NVMe)
through a temporary name, checked against the manifest's sha256, then renamed into place, so a
half-copied shard is never read. The trainer tells the cache which shards it will need next
(:meth:`want`); a daemon thread copies up to ``prefetch`` of them ahead. Reading a shard that
is not cached yet copies it in the foreground.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

from trainer.data.shards import read_manifest

log = logging.getLogger(__name__)


class ShardCache:
    """Serves shard paths from a node-local directory, copying and verifying on first use."""

    def __init__(self, source: str | Path, cache_dir: str | Path, prefetch: int = 2) -> None:
        self.source = Path(source)
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefetch = prefetch
        self.sha = {s["name"]: s["sha256"] for s in read_manifest(self.source)["shards"]}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._wanted: list[str] = []
        self._busy: set[str] = set()
        self._stop = False
        self.copied = 0  # shards copied into the cache by this process (hits do not count)
        self._thread = threading.Thread(target=self._run, name="shard-prefetch", daemon=True)
        self._thread.start()

    def _copy(self, name: str) -> Path:
        dest = self.dir / name
        if dest.exists():
            return dest
        tmp = self.dir / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        digest = hashlib.sha256()
        with open(self.source / name, "rb") as src, open(tmp, "wb") as out:
            while block := src.read(1 << 20):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != self.sha[name]:
            tmp.unlink(missing_ok=True)
            raise OSError(f"{self.source / name}: sha256 does not match the manifest")
        os.replace(tmp, dest)
        self.copied += 1
        return dest

    def path(self, name: str) -> Path:
        """Local path of shard ``name``, copying it now if the prefetcher has not yet."""
        with self._cond:
            while name in self._busy:  # the prefetcher is copying it right now
                self._cond.wait()
            self._busy.add(name)
        try:
            return self._copy(name)
        finally:
            with self._cond:
                self._busy.discard(name)
                self._cond.notify_all()

    def want(self, names: list[str]) -> None:
        """Shards needed next, in order; the first ``prefetch`` not yet cached are copied ahead."""
        with self._cond:
            self._wanted = [n for n in names if not (self.dir / n).exists()][: self.prefetch]
            self._cond.notify_all()

    def queue_depth(self) -> int:
        """Shards still waiting to be prefetched (0 = the prefetcher is keeping up)."""
        with self._lock:
            return len(self._wanted)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._wanted:
                    self._cond.wait()
                if self._stop:
                    return
                name = self._wanted[0]
                if name in self._busy:
                    self._cond.wait()
                    continue
                self._busy.add(name)
            try:
                self._copy(name)
            except OSError as exc:
                log.warning("prefetch of shard %s failed: %s", name, exc)
            finally:
                with self._cond:
                    self._busy.discard(name)
                    if self._wanted and self._wanted[0] == name:
                        self._wanted.pop(0)
                    self._cond.notify_all()

    def close(self) -> None:
        """Stop the prefetcher thread (cached files stay for the next job on this node)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def clear(self) -> None:
        """Remove the cache directory."""
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

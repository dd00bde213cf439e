"""Metrics leave the trainer through one logger interface with Prometheus and JSONL sinks.

Only rank 0 logs (other ranks get a :class:`NullLogger`). The Prometheus names are the seed
plan's alert names (``training_loss``, ``training_gradient_norm``, ...); the JSONL file holds
the same values, one record per logged step (every ``log_interval`` steps, after each
evaluation, and at the last step), and a first ``{"event": "config"}`` record with
the full configuration.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

#: Gauge name -> help text. Keys of a logged record map onto these names.
GAUGES = {
    "training_tokens_per_second": "Text tokens processed per second (all ranks)",
    "training_loss": "Mean token cross-entropy of the last optimizer step",
    "training_gradient_norm": "Global gradient L2 norm before clipping",
    "training_learning_rate": "Learning rate of the last optimizer step",
    "training_step_seconds": "Wall time of the last optimizer step",
    "training_dataloader_queue_depth": "Micro-batches ready in the loader queue",
    "training_shard_prefetch_queue_depth": "Shards waiting to be copied to the node-local cache",
    "training_allreduce_seconds": "Time in the gradient all-reduce/step of the last step",
    "training_checkpoint_seconds": "Wall time of the last checkpoint save",
    "training_device_memory_bytes": "Peak device (or process) memory",
    "training_eval_loss": "Mean token cross-entropy on held-out data",
    "training_eval_perplexity": "Perplexity on held-out data",
    "training_step": "Optimizer step of the last record",
    "training_tokens_seen_total": "Tokens consumed since the start of the run",
}
COUNTER = "training_iterations_total"


class MetricsLogger(Protocol):
    """Where metrics go: ``log(step, values)`` with values keyed by the names above."""

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record ``values`` for optimizer ``step``."""

    def event(self, name: str, payload: dict[str, Any]) -> None:
        """Record a one-off event (config, resume, checkpoint, signal)."""

    def close(self) -> None:
        """Flush and release resources."""


class NullLogger:
    """Logger for ranks other than 0."""

    def log(self, step: int, values: dict[str, float]) -> None:
        """Drop the values."""

    def event(self, name: str, payload: dict[str, Any]) -> None:
        """Drop the event."""

    def close(self) -> None:
        """Nothing to release."""


class JsonlLogger:
    """Appends one JSON object per record to a file (line-buffered, survives a crash)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def log(self, step: int, values: dict[str, float]) -> None:
        """Write ``{"time", "step", **values}``."""
        self._fh.write(json.dumps({"time": time.time(), "step": step, **values}) + "\n")

    def event(self, name: str, payload: dict[str, Any]) -> None:
        """Write ``{"time", "event": name, **payload}``."""
        self._fh.write(json.dumps({"time": time.time(), "event": name, **payload}) + "\n")

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


class PrometheusLogger:
    """Serves ``/metrics`` on ``port`` from a private registry (safe to create twice in tests)."""

    def __init__(self, port: int, labels: dict[str, str] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.labels = labels or {}
        names = list(self.labels)
        self.gauges = {
            name: Gauge(name, text, names, registry=self.registry) for name, text in GAUGES.items()
        }
        self.counter = Counter(
            COUNTER.removesuffix("_total"),
            "Optimizer steps completed",
            names,
            registry=self.registry,
        )
        self._iterations = 0.0  # what the counter holds
        self._children: dict[Any, Any] = {}
        self.server, self.thread = start_http_server(port, registry=self.registry)
        self.port = self.server.server_port

    def _child(self, metric: Any) -> Any:
        # labels() validates and locks on every call; a series is created on its first value
        # (so gauges never set, like training_allreduce_seconds off DDP, stay absent).
        child = self._children.get(metric)
        if child is None:
            child = self._children[metric] = metric.labels(**self.labels) if self.labels else metric
        return child

    def log(self, step: int, values: dict[str, float]) -> None:
        """Set every known gauge present in ``values``; advance the iteration counter to
        ``values["training_iterations_total"]`` (optimizer steps this process completed)."""
        for name, value in values.items():
            gauge = self.gauges.get(name)
            if gauge is not None and value is not None:
                self._child(gauge).set(float(value))
        # Records may be every log_interval steps: the trainer sends the count so far.
        iterations = values.get(COUNTER)
        if iterations is not None and iterations > self._iterations:
            self._child(self.counter).inc(iterations - self._iterations)
            self._iterations = iterations
        self._child(self.gauges["training_step"]).set(step)

    def event(self, name: str, payload: dict[str, Any]) -> None:
        """Events are not metrics; the JSONL sink keeps them."""

    def close(self) -> None:
        """Stop the HTTP server."""
        self.server.shutdown()
        self.server.server_close()


class MultiLogger:
    """Fans out to several sinks."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def log(self, step: int, values: dict[str, float]) -> None:
        """Log to every sink."""
        for sink in self.sinks:
            sink.log(step, values)

    def event(self, name: str, payload: dict[str, Any]) -> None:
        """Send the event to every sink."""
        for sink in self.sinks:
            sink.event(name, payload)

    def close(self) -> None:
        """Close every sink."""
        for sink in self.sinks:
            sink.close()


def build_logger(
    rank: int, jsonl: str | Path | None, port: int, labels: dict[str, str] | None = None
) -> MetricsLogger:
    """The logger for this rank: JSONL and/or Prometheus on rank 0, nothing elsewhere."""
    if rank != 0:
        return NullLogger()
    sinks: list[Any] = []
    if jsonl:
        sinks.append(JsonlLogger(jsonl))
    if port:
        sinks.append(PrometheusLogger(port, labels))
    return MultiLogger(sinks)


def peak_memory_bytes() -> int:
    """Peak device memory on CUDA, else this process's peak resident set size."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    except ImportError:  # pragma: no cover - torch is always there in the trainer
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux

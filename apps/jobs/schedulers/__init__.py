"""Scheduler adapters: the only code in medctl that talks to a cluster.

    from apps.jobs.schedulers import get_scheduler, JobSpec
    scheduler = get_scheduler("slurm", {"timeout": 20})
    spec = JobSpec(script="#!/bin/bash\\n...", name="run-1", workdir="/shared/runs/1")
    job_id = scheduler.submit(spec)

`get_scheduler(name, options)` picks the implementation by name; the Django side passes its
settings as the options dict. This package imports no Django.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .base import (
    JOB_STATES,
    TERMINAL_STATES,
    ClusterInfo,
    JobSpec,
    JobState,
    NodeInfo,
    PartitionInfo,
    Scheduler,
    SchedulerError,
    normalize_state,
    submit_once,
)

__all__ = [
    "JOB_STATES",
    "SCHEDULERS",
    "TERMINAL_STATES",
    "ClusterInfo",
    "JobSpec",
    "JobState",
    "NodeInfo",
    "PartitionInfo",
    "Scheduler",
    "SchedulerError",
    "get_scheduler",
    "normalize_state",
    "submit_once",
]


def _local() -> Callable[..., Scheduler]:
    from .local import LocalScheduler

    return LocalScheduler


def _slurm() -> Callable[..., Scheduler]:
    from .slurm import SlurmCLI

    return SlurmCLI


def _slurmrestd() -> Callable[..., Scheduler]:
    from .slurmrestd import SlurmRestd

    return SlurmRestd


def _pyslurm() -> Callable[..., Scheduler]:
    from .pyslurm_adapter import PySlurmScheduler

    return PySlurmScheduler


# Imported lazily so that choosing one adapter never needs another's dependencies.
SCHEDULERS: dict[str, Callable[[], Callable[..., Scheduler]]] = {
    "local": _local,
    "slurm": _slurm,
    "slurmrestd": _slurmrestd,
    "pyslurm": _pyslurm,
}


def get_scheduler(name: str, options: Mapping[str, Any] | None = None) -> Scheduler:
    """The adapter called `name`, configured with `options` (keyword arguments of its
    class). Unknown names and unknown options are permanent errors, so a typo in settings
    fails at start-up rather than at the first submission."""
    try:
        factory = SCHEDULERS[name]()
    except KeyError:
        raise SchedulerError(
            f"unknown scheduler {name!r}; choose one of {', '.join(sorted(SCHEDULERS))}",
            permanent=True,
        ) from None
    options = dict(options or {})
    accepted = set(inspect.signature(factory).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SchedulerError(
            f"unknown option(s) for scheduler {name!r}: {', '.join(unknown)};"
            f" accepted: {', '.join(sorted(accepted))}",
            permanent=True,
        )
    return factory(**options)

"""Shared fixtures: one small synthetic dataset written through the real shard format."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# An editable install made before trainer/__init__.py existed maps ``trainer`` to a namespace
# package; put the checkout first so the real package (with __init__) is imported.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if "trainer" in sys.modules and getattr(sys.modules["trainer"], "__file__", None) is None:
    for name in [m for m in sys.modules if m == "trainer" or m.startswith("trainer.")]:
        del sys.modules[name]

from trainer.config import TrainConfig, load_config  # noqa: E402
from trainer.data.synthetic import write_synthetic  # noqa: E402

# The interpreter running the tests (the project venv in make test and CI).
PYTHON = Path(sys.executable)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 synthetic studies in 4 shards, plus a tokenizer trained on their text."""
    return write_synthetic(tmp_path_factory.mktemp("ds") / "v1", samples=64, per_shard=16)


def _tiny(dataset: Path, save_dir: Path | str = "", *extra: str) -> TrainConfig:
    return load_config(
        "tiny",
        [f"data.path={dataset}", f"checkpoint.save_dir={save_dir}", *extra],
    )


@pytest.fixture
def tiny():
    """Factory: ``tiny(dataset, save_dir, "optim.max_steps=3", ...)`` -> TrainConfig."""
    return _tiny


def _train_losses(cfg: TrainConfig) -> list[float]:
    import torch

    from trainer.train import build_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = build_run(cfg)
    try:
        assert run.trainer.train() == 0
        return run.trainer.losses
    finally:
        run.close()
        torch.set_num_threads(threads)


@pytest.fixture
def train_losses():
    """``train_losses(cfg)``: train in this process (one torch thread) -> per-step losses."""
    return _train_losses


@pytest.fixture
def free_port() -> int:
    """An unused TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def sub_env() -> dict[str, str]:
    """Environment for trainer subprocesses: one thread each on this 2-core machine."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    return env


@pytest.fixture(scope="session")
def python() -> Path:
    """The project's virtualenv interpreter."""
    return PYTHON


@pytest.fixture(scope="session")
def repo() -> Path:
    """Repository root (subprocess working directory)."""
    return REPO

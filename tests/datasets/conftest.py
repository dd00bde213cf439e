"""Fixtures of the datasets tests: a datasets root per test and the small world of files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _load_factories():
    # Test folders are not packages (import-mode=importlib): load the sibling module by path.
    name = "datasets_test_factories"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("factories.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def factories():
    return _load_factories()


@pytest.fixture(autouse=True)
def datasets_root(settings, tmp_path):
    settings.DATASETS_ROOT = tmp_path / "datasets"
    return settings.DATASETS_ROOT


@pytest.fixture
def world(db, tmp_path, factories):
    """A released run over three patients plus the files that must never be packed."""
    return factories.make_world(tmp_path)


@pytest.fixture
def unreleased_world(db, tmp_path, factories):
    return factories.make_world(tmp_path, released=False, name="ward-u")


def _cheap_user(role):
    # The shared ``cast`` hashes seven passwords (seconds on a loaded machine); these tests
    # log in with force_login, so a user without a usable password will do.
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from apps.core.testing import mfa_required, totp_device

    user = get_user_model().objects.create(username=f"ds_{role}")
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    if mfa_required(role):
        totp_device(user)
    return user


@pytest.fixture
def user_of(db):
    """``user_of("data_steward")`` -> a user in that role (one per role, made on first use)."""
    made = {}

    def get(role):
        if role not in made:
            made[role] = _cheap_user(role)
        return made[role]

    return get


@pytest.fixture
def as_role(user_of):
    """``as_role("auditor")`` -> a logged-in, TOTP-verified client in that role."""
    from apps.core.testing import client_for

    return lambda role: client_for(user_of(role))


@pytest.fixture
def steward(user_of):
    return user_of("data_steward")


@pytest.fixture
def built(world, steward):
    """``world`` packed into ``ct-demo v1`` by the data steward (several small shards)."""
    from apps.datasets import services

    version = services.build_version(
        "ct-demo", [world.run], target_shard_mb=0.004, acting_user=steward
    )
    assert version.status == "ready", version.error
    return version


@pytest.fixture
def verify_queue(monkeypatch):
    """The check ids the pages and the API queue for a worker, caught before the broker;
    ``verify_queue.run()`` hashes them here as the worker's task would."""
    from apps.datasets import services, tasks

    class Queue(list):
        def run(self) -> None:
            while self:
                services.run_verify_check(self.pop(0))

    queue = Queue()
    monkeypatch.setattr(tasks.run_verify_check, "delay", queue.append)
    return queue

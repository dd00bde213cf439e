"""The overview page: a card per area the user's roles reach, each with its headline figures."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db


def cards(page: str) -> dict[str, list[str]]:
    """{card key: [figure values]} as the page shows them."""
    out = {}
    for key, body in re.findall(r'data-card="(\w+)">(.*?)</section>', page, re.S):
        out[key] = re.findall(r'data-figure="\d+">([^<]*)</dd>', body)
    return out


def test_each_role_sees_the_cards_of_its_areas_only(client_as):
    steward = cards(client_as("data_steward").get("/").content.decode())
    assert {"inventory", "deid", "review", "datasets"} <= set(steward)
    assert "jobs" not in steward and "audit" not in steward
    clinician = cards(client_as("clinician_reviewer").get("/").content.decode())
    assert "review" in clinician and "deid" not in clinician and "datasets" not in clinician


def test_the_cards_count_what_the_areas_hold(client_as, tmp_path):
    from apps.audit.services import check_chain
    from apps.datasets.models import DatasetVersion

    for number, status in ((1, "ready"), (2, "ready"), (3, "building"), (4, "failed")):
        DatasetVersion.objects.create(
            name="ct", number=number, status=status, target_shard_mb=1, root=str(tmp_path)
        )
    before = cards(client_as("auditor").get("/").content.decode())
    assert before["datasets"] == ["2", "1"]  # ready, building
    assert before["jobs"] == ["0", "0", "0"]
    assert before["audit"][1] == "not verified yet"
    check_chain(with_digests=False)
    after = cards(client_as("auditor").get("/").content.decode())
    assert re.fullmatch(r"intact up to #\d+", after["audit"][1]), after["audit"]

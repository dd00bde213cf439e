"""The OpenAPI schema: generated without a warning, valid, and describing every API route.

drf-spectacular degrades quietly: a view it cannot describe keeps its path with "No response
body", a path parameter it cannot type becomes a string, colliding enums get hash suffixes.
Each of those is a warning or an error here, so the schema stays something clients can use.
The schema is built as ``manage.py spectacular`` builds it, without a request or a database:
describing a view must not depend on who asks or on what rows exist.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from drf_spectacular import plumbing
from drf_spectacular.drainage import GeneratorStats
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.validation import validate_schema
from drf_spectacular.views import SpectacularAPIView

from apps.core import access
from apps.jobs.api import ClusterSerializer, NodeSerializer, PartitionSerializer
from apps.jobs.schedulers.base import ClusterInfo, NodeInfo, PartitionInfo

# What a route may answer besides the methods it implements; DRF adds both to every view.
IMPLICIT_METHODS = {"head", "options"}


@pytest.fixture(scope="module")
def generated() -> tuple[dict[str, Any], list[str]]:
    """The schema, and every warning and error drf-spectacular emitted while building it."""
    emitted: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            GeneratorStats, "emit", lambda self, msg, severity: emitted.append(f"{severity}: {msg}")
        )
        # The overrides are loaded once per process (and warned about then); another test may
        # already have served the schema in this worker.
        plumbing._load_enum_name_overrides.cache_clear()
        schema = spectacular_settings.DEFAULT_GENERATOR_CLASS().get_schema(
            request=None, public=True
        )
    return schema, emitted


def _path_pattern(template: str) -> re.Pattern[str]:
    """``/api/x/{id}/`` as a regex matching the URLs it stands for."""
    parts = re.split(r"\{[^}]+\}", template)
    return re.compile("[^/]+".join(re.escape(p) for p in parts) + r"\Z")


def _methods(view: Any) -> set[str]:
    """The HTTP methods a DRF route implements (a viewset's routed actions, or the handlers)."""
    actions = getattr(view, "actions", None)
    if actions:
        return set(actions) - IMPLICIT_METHODS
    cls = view.cls
    return {m for m in cls.http_method_names if hasattr(cls, m)} - IMPLICIT_METHODS


def test_the_schema_is_generated_without_warnings_or_errors(generated):
    _, emitted = generated
    assert emitted == []


def test_the_schema_is_valid_openapi(generated):
    schema, _ = generated
    validate_schema(schema)


def test_every_api_route_and_method_is_in_the_schema(generated):
    schema, _ = generated
    paths = [(_path_pattern(template), ops) for template, ops in schema["paths"].items()]
    missing = []
    for ep in access.iter_endpoints():
        # The schema view leaves itself out (SERVE_INCLUDE_SCHEMA is off).
        if not ep["api"] or issubclass(ep["view"].cls, SpectacularAPIView):
            continue
        documented = {m for pattern, ops in paths if pattern.match(ep["sample"]) for m in ops}
        missing += [(ep["route"], method) for method in sorted(_methods(ep["view"]) - documented)]
    assert missing == []


def test_every_successful_response_describes_its_body(generated):
    schema, _ = generated
    undescribed = [
        (method.upper(), path, code)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        for code, response in op["responses"].items()
        if code.startswith("2") and code != "204" and "content" not in response
    ]
    assert undescribed == []


def test_the_cluster_endpoint_serializes_every_field_the_scheduler_reports():
    for serializer, info in [
        (ClusterSerializer, ClusterInfo),
        (NodeSerializer, NodeInfo),
        (PartitionSerializer, PartitionInfo),
    ]:
        reported = {f.name for f in dataclasses.fields(info)}
        assert reported <= set(serializer().fields), serializer.__name__

"""The OpenAPI schema: generated without a warning, valid, and describing every API route.

drf-spectacular degrades quietly: a view it cannot describe keeps its path with "No response
body", a path parameter it cannot type becomes a string, colliding enums get hash suffixes.
Each of those is a warning or an error here, so the schema stays something clients can use.
The schema is built as ``manage.py spectacular`` builds it, without a request or a database:
describing a view must not depend on who asks or on what rows exist.

A body or status documented wrong draws no warning at all, so the last tests call the API
for real and hold every request, status and JSON body to what the schema says.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core.files import File
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpResponse
from django.test import Client
from drf_spectacular import plumbing
from drf_spectacular.drainage import GeneratorStats
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.validation import validate_schema
from drf_spectacular.views import SpectacularAPIView
from jsonschema import Draft202012Validator

from apps.core import access
from apps.jobs.api import ClusterSerializer, NodeSerializer, PartitionSerializer
from apps.jobs.schedulers.base import ClusterInfo, NodeInfo, PartitionInfo
from apps.review.models import ReviewBatch
from tests.datasets import factories as dataset_factories
from tests.deid import factories as deid_factories
from tests.review import factories as review_factories

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


# --- real answers match the schema ---------------------------------------------------------


def _as_json_schema(node: Any, *, request: bool) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema for real bodies: ``nullable`` admits null, an
    object admits only the properties it documents, and a request leaves out the read-only
    ones (the server fills them)."""
    if isinstance(node, list):
        return [_as_json_schema(n, request=request) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _as_json_schema(v, request=request)
        for k, v in node.items()
        if k not in ("nullable", "properties")
    }
    if "properties" in node:
        props = {
            name: sub
            for name, sub in node["properties"].items()
            if not (request and sub.get("readOnly"))
        }
        out["properties"] = {name: _as_json_schema(s, request=request) for name, s in props.items()}
        out["required"] = [name for name in node.get("required", []) if name in props]
        out.setdefault("additionalProperties", False)
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") else out


def _mismatches(schema: dict[str, Any], documented: Any, body: Any, *, request: bool) -> list[str]:
    """Where ``body`` departs from the ``documented`` schema (its ``$ref``s resolved against
    the schema's components); empty when it fits."""
    components = {
        name: _as_json_schema(sub, request=request)
        for name, sub in schema["components"]["schemas"].items()
    }
    root = _as_json_schema(documented, request=request) | {"components": {"schemas": components}}
    return [
        f"{'/'.join(map(str, e.absolute_path)) or 'the body'}: {e.message}"
        for e in Draft202012Validator(root).iter_errors(body)
    ]


def _operation(schema: dict[str, Any], method: str, url: str) -> tuple[str, dict[str, Any]]:
    path = urlsplit(url).path
    templates = [t for t in schema["paths"] if _path_pattern(t).match(path)]
    assert templates, f"{path} is in no documented path"
    template = min(templates, key=lambda t: t.count("{"))  # runs/preview/ before runs/{id}/
    assert method in schema["paths"][template], f"{method.upper()} {template} is not documented"
    return template, schema["paths"][template][method]


class DocumentedApi:
    """A signed-in client whose every call must be one the schema documents: what it sends
    fits the operation's request body, and the status and JSON it gets back are a response
    the operation documents."""

    def __init__(self, client: Client, schema: dict[str, Any]) -> None:
        self.client = client
        self.schema = schema

    def get(self, url: str) -> HttpResponse:
        return self._checked("get", url, self.client.get(url))

    def post(self, url: str, data: dict[str, Any] | None = None) -> HttpResponse:
        if data is None:
            return self._checked("post", url, self.client.post(url))
        response = self.client.post(url, data, content_type="application/json")
        return self._checked("post", url, response, sent=data)

    def upload(self, url: str, data: dict[str, Any]) -> HttpResponse:
        """A multipart POST; files count as their names."""
        response = self.client.post(url, data)
        sent = {k: v.name if isinstance(v, File) else v for k, v in data.items()}
        return self._checked("post", url, response, sent=sent, content="multipart/form-data")

    def _checked(
        self,
        method: str,
        url: str,
        response: HttpResponse,
        *,
        sent: dict[str, Any] | None = None,
        content: str = "application/json",
    ) -> HttpResponse:
        template, op = _operation(self.schema, method, url)
        where = f"{method.upper()} {template}"
        request_body = op.get("requestBody", {})
        if sent is None:
            assert not request_body.get("required"), f"{where} documents a required body"
        else:
            documented = request_body.get("content", {}).get(content)
            assert documented, f"{where} documents no {content} body"
            problems = _mismatches(self.schema, documented["schema"], sent, request=True)
            assert problems == [], f"{where}: {sent} is not the documented request body: {problems}"
        code = str(response.status_code)
        assert code in op["responses"], (
            f"{where} answered {code}, documented: {sorted(op['responses'])}: {response.content!r}"
        )
        documented = op["responses"][code].get("content", {}).get("application/json")
        if documented:
            problems = _mismatches(
                self.schema, documented["schema"], response.json(), request=False
            )
            assert problems == [], f"{where} answered {code} with an undocumented body: {problems}"
        return response


@pytest.fixture
def api(generated, client_as):
    """``api("data_steward")``: a signed-in client held to the schema."""
    schema, _ = generated
    return lambda role: DocumentedApi(client_as(role), schema)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def test_the_check_refuses_a_body_the_schema_does_not_describe(generated):
    schema, _ = generated
    page = {"count": 0, "next": None, "previous": None, "results": []}
    assert _mismatches(schema, _ref("PaginatedMemberList"), page, request=False) == []
    assert _mismatches(schema, _ref("Version"), page, request=False)
    assert _mismatches(schema, _ref("PaginatedMemberList"), page | {"extra": 1}, request=False)
    assert _mismatches(schema, _ref("Version"), {"name": "x"}, request=True)  # name is read-only


@pytest.fixture
def built(db, settings, tmp_path, cast):
    """A released de-id run over three patients (tests/datasets/factories.py), packed into
    a ready dataset version."""
    from apps.datasets import services

    settings.DATASETS_ROOT = tmp_path / "datasets"
    world = dataset_factories.make_world(tmp_path)
    version = services.build_version(
        "ct-demo", [world.run], target_shard_mb=0.004, acting_user=cast["data_steward"]
    )
    assert version.status == "ready", version.error
    return version, world


def test_building_verifying_and_cancelling_versions_answer_as_documented(api, built):
    version, world = built
    steward, operator = api("data_steward"), api("operator")
    url = "/api/datasets/versions/"
    request = {"name": "api-built", "runs": [world.run.pk], "target_shard_mb": 1}
    building = steward.post(url, request)
    assert building.status_code == 202
    assert steward.post(url, request | {"runs": [999999]}).status_code == 400
    building_url = f"{url}{building.json()['id']}/"
    check = operator.post(f"{url}{version.pk}/verify/")
    assert check.status_code == 202
    assert operator.post(f"{building_url}verify/").status_code == 409
    assert steward.post(f"{building_url}cancel/").status_code == 200
    assert steward.post(f"{url}{version.pk}/cancel/").status_code == 409
    assert operator.get(f"{url}{version.pk}/lineage/?limit=3").status_code == 200
    assert operator.get(url).status_code == 200
    assert operator.get(f"{url}{version.pk}/").status_code == 200
    assert operator.get(f"/api/datasets/checks/?version={version.pk}").status_code == 200
    assert operator.get(f"/api/datasets/checks/{check.json()['id']}/").status_code == 200


def test_the_lineage_and_withdrawal_endpoints_answer_as_documented(api, built):
    _, world = built
    officer = api("privacy_officer")
    by_file = "/api/datasets/lineage/raw-file/"
    assert officer.get(f"{by_file}?id={world.raws['a_ecg'].pk}").status_code == 200
    assert officer.get(f"{by_file}?id=999999").status_code == 404
    assert officer.get(by_file).status_code == 400
    assert officer.get("/api/datasets/lineage/patient/?pseudonym=P-CCCC").status_code == 200
    assert officer.get("/api/datasets/lineage/patient/").status_code == 400
    consumers = "/api/datasets/consumer-lineage/"
    assert officer.get(f"{consumers}?kind=jobs.trainingrun&id=1").status_code == 404
    assert officer.get(f"{consumers}?kind=nope&id=1").status_code == 400
    withdrawal = {"patient_pseudonym": "P-CCCC", "reference": "DPO-12"}
    created = officer.post("/api/datasets/withdrawals/", withdrawal)
    assert created.status_code == 201
    assert officer.post("/api/datasets/withdrawals/", withdrawal).status_code == 200
    assert officer.get("/api/datasets/withdrawals/").status_code == 200
    assert officer.get(f"/api/datasets/withdrawals/{created.json()['id']}/").status_code == 200


def test_label_sets_answer_as_documented(api, built):
    version, _ = built
    keys = [
        key
        for index in sorted((Path(version.root) / "index").glob("*.json"))
        for key in json.loads(index.read_text())["samples"]
    ]
    labels = "".join(json.dumps({"key": k, "label": "a"}) + "\n" for k in keys).encode()
    reviewer = api("clinician_reviewer")
    upload = {"version": version.pk, "name": "nodules", "quality_score": 0.7}
    created = reviewer.upload(
        "/api/datasets/annotations/", upload | {"file": SimpleUploadedFile("l.jsonl", labels)}
    )
    assert created.status_code == 201
    refused = reviewer.upload(
        "/api/datasets/annotations/", upload | {"file": SimpleUploadedFile("l.jsonl", b"{")}
    )
    assert refused.status_code == 400
    assert reviewer.get(f"/api/datasets/annotations/?version={version.pk}").status_code == 200
    assert reviewer.get(f"/api/datasets/annotations/{created.json()['id']}/").status_code == 200


def _finished_run(root: Path, files: int) -> Any:
    run = review_factories.make_run(root, status="running")
    review_factories.bulk_results(run, files)
    return review_factories.finish(run)


def test_the_review_queue_answers_as_documented(api, cast, tmp_path):
    run = _finished_run(tmp_path, 5)
    steward, clinician = api("data_steward"), api("clinician_reviewer")
    sample = {"run": run.pk, "fraction": 0.05, "min_per_stratum": 5, "double_review_fraction": 0}
    created = steward.post("/api/review/batches/", sample)
    assert created.status_code == 201
    assert steward.post("/api/review/batches/", sample).status_code == 400  # one live batch
    batch = created.json()["id"]
    assert steward.get(f"/api/review/batches/{batch}/gate/").status_code == 200
    item = clinician.post("/api/review/leases/", {"batch": batch})
    assert item.status_code == 200
    verdict = {"item": item.json()["id"], "decision": "fail", "category": "name"}
    assert clinician.post("/api/review/verdicts/", verdict).status_code == 201
    assert clinician.post("/api/review/verdicts/", verdict).status_code == 409
    finding = steward.get(f"/api/review/findings/?batch={batch}").json()["results"][0]
    resolution = {"finding": finding["id"], "resolution": "fixed"}
    assert steward.post("/api/review/resolutions/", resolution).status_code == 200
    assert steward.post("/api/review/resolutions/", resolution).status_code == 400
    assert steward.post("/api/review/releases/", {"run": run.pk}).status_code == 409
    assert steward.post("/api/review/releases/", {"run": 999999}).status_code == 404
    review_factories.review_everything(
        ReviewBatch.objects.get(pk=batch), [cast["clinician_reviewer"]]
    )
    assert clinician.post("/api/review/leases/", {"batch": batch}).status_code == 204
    for url in ("batches/", f"batches/{batch}/", "items/", "verdicts/", "findings/"):
        assert steward.get(f"/api/review/{url}").status_code == 200


def test_a_release_through_an_open_gate_answers_as_documented(api, cast, tmp_path):
    from apps.review import services

    run = _finished_run(tmp_path, 60)
    batch = services.create_batch(
        run,
        acting_user=cast["data_steward"],
        fraction=0.05,
        min_per_stratum=60,
        threshold=0.95,
        double_review_fraction=0,
    )
    review_factories.mark_all_passed(batch, cast["clinician_reviewer"])
    assert api("data_steward").post("/api/review/releases/", {"run": run.pk}).status_code == 200


def test_the_runs_api_answers_as_documented(api, settings, tmp_path, monkeypatch):
    from apps.datasets.models import DatasetVersion
    from apps.jobs import services
    from apps.jobs.schedulers import ClusterInfo, SchedulerError

    settings.JOBS_RUNS_ROOT = str(tmp_path / "runs")
    settings.JOBS_SCHEDULER = "local"
    settings.JOBS_SCHEDULER_OPTIONS = {"local": {"state_dir": str(tmp_path / "sched")}}
    (tmp_path / "dataset").mkdir()
    version = DatasetVersion.objects.create(
        name="ct-notes",
        number=1,
        status="ready",
        root=str(tmp_path / "dataset"),
        target_shard_mb=64,
        shard_count=64,
    )
    operator = api("operator")
    spec = {
        "name": "tiny-run",
        "preset": "tiny",
        "dataset_version": version.pk,
        "engine": "single",
        "gpus_per_node": 0,
        "data_parallel": 1,
        "micro_batch_size": 2,
        "global_batch_size": 4,
        "seq_len": 64,
        "max_steps": 3,
        "time_limit_minutes": 10,
    }
    assert operator.post("/api/jobs/runs/preview/", spec).status_code == 200
    assert operator.post("/api/jobs/runs/preview/", spec | {"data_parallel": 3}).status_code == 400
    created = operator.post("/api/jobs/runs/", spec)
    assert created.status_code == 201
    run = f"/api/jobs/runs/{created.json()['id']}/"
    assert operator.post(f"{run}resume/").status_code == 409
    assert operator.post(f"{run}requeue/").status_code == 409
    assert operator.post(f"{run}cancel/").status_code == 202
    for url in ("/api/jobs/runs/", run, "/api/jobs/attempts/"):
        assert operator.get(url).status_code == 200
    monkeypatch.setattr(services, "cluster_info", lambda: ClusterInfo("c", (), ()))
    assert operator.get("/api/jobs/cluster/").status_code == 200

    def unreachable() -> ClusterInfo:
        raise SchedulerError("Unable to contact slurm controller", permanent=False)

    monkeypatch.setattr(services, "cluster_info", unreachable)
    assert operator.get("/api/jobs/cluster/").status_code == 503


def test_the_deid_runs_api_answers_as_documented(api, tmp_path, monkeypatch):
    from apps.deid import tasks

    monkeypatch.setattr(tasks.process_run, "delay", lambda run_id: None)
    (tmp_path / "raw").mkdir()
    source = deid_factories.make_source(tmp_path / "raw", tmp_path / "deid")
    batch = deid_factories.make_batch(source)
    steward = api("data_steward")
    created = steward.post("/api/deid/runs/", {"batch": batch.pk})
    assert created.status_code == 201
    assert steward.post("/api/deid/runs/", {"batch": 999999}).status_code == 400
    run = f"/api/deid/runs/{created.json()['id']}/"
    assert steward.post(f"{run}cancel/").status_code == 200
    assert steward.post(f"{run}cancel/").status_code == 409
    assert steward.get("/api/deid/runs/").status_code == 200
    assert steward.get(run).status_code == 200


def test_the_scans_api_answers_as_documented(api, tmp_path, monkeypatch):
    from apps.inventory import tasks
    from apps.inventory.models import DataSource

    monkeypatch.setattr(tasks.scan_source, "delay", lambda batch_id: None)
    (tmp_path / "raw").mkdir()
    source = DataSource.objects.create(
        source="PACS", type="DICOM", owner="Radiology", raw_root=str(tmp_path / "raw")
    )
    steward = api("data_steward")
    started = steward.post("/api/inventory/batches/", {"source": source.pk})
    assert started.status_code == 202
    assert steward.post("/api/inventory/batches/", {"source": source.pk}).status_code == 400
    batch = f"/api/inventory/batches/{started.json()['id']}/"
    assert steward.post(f"{batch}cancel/").status_code == 200
    assert steward.post(f"{batch}cancel/").status_code == 409
    for url in ("/api/inventory/batches/", "/api/inventory/sources/", "/api/inventory/files/"):
        assert steward.get(url).status_code == 200
    assert steward.get(f"/api/inventory/sources/{source.pk}/").status_code == 200


def test_issuing_a_token_answers_as_documented(api):
    auditor = api("auditor")
    issued = auditor.post("/api/tokens/", {"name": "ci", "hours": 1})
    assert issued.status_code == 201
    assert auditor.post("/api/tokens/", {"name": "ci", "scopes": ["admin"]}).status_code == 400
    assert auditor.get("/api/tokens/").status_code == 200
    assert auditor.get(f"/api/tokens/{issued.json()['id']}/").status_code == 200
    assert auditor.get("/api/me/").status_code == 200
    events = auditor.get("/api/audit/events/")
    assert events.status_code == 200
    assert (
        auditor.get(f"/api/audit/events/{events.json()['results'][0]['seq']}/").status_code == 200
    )

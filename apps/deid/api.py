"""API routes of this app, registered by controlplane/api.py: (prefix, viewset, basename).

``/api/deid/runs/`` (list, retrieve, create = start a run, ``cancel``/``resume``/
``retry_errors`` actions) and ``/api/deid/results/`` (read-only; filters ``run``, ``status``,
``kind``, ``flagged``). Every change goes through :mod:`apps.deid.services`.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.roles import AUDITOR, PRIVACY, STEWARD
from apps.deid import services
from apps.deid.filtersets import ResultFilterForm
from apps.deid.models import DeidFileResult, DeidRun, ProfileVersion
from apps.inventory.models import IngestBatch

VIEW_ROLES = {STEWARD, PRIVACY, AUDITOR}
RUN_ROLES = {STEWARD, PRIVACY}


class DeidRunSerializer(serializers.ModelSerializer):
    percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = DeidRun
        fields = [
            "id",
            "batch",
            "status",
            "profile_version",
            "profile_fingerprint",
            "files_total",
            "files_done",
            "files_ok",
            "files_quarantined",
            "files_error",
            "percent",
            "cancel_requested",
            "error",
            "output_root",
            "created",
            "started_at",
            "finished_at",
            "released_at",
        ]
        read_only_fields = fields


class StartRunSerializer(serializers.Serializer):
    batch = serializers.PrimaryKeyRelatedField(queryset=IngestBatch.objects.all())
    profile = serializers.JSONField(required=False, default=dict)
    profile_version = serializers.PrimaryKeyRelatedField(
        queryset=ProfileVersion.objects.all(), required=False, allow_null=True
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("profile") and attrs.get("profile_version"):
            raise serializers.ValidationError("give profile or profile_version, not both")
        return attrs

    def validate_profile(self, value: Any) -> Any:
        try:
            return services.profile_from_data(value) if value else None
        except services.DeidServiceError as exc:
            raise serializers.ValidationError(str(exc)) from None


# cancel, resume and retry-errors: no body; the run as it is now, or why it cannot.
_RUN_ACTION_SCHEMA = extend_schema(
    request=None,
    responses={
        200: DeidRunSerializer,
        409: OpenApiResponse(description="not in a state that allows it"),
    },
)


class DeidRunViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """De-identification runs, newest first. POST starts a run (``batch``, optional
    ``profile``); the actions change its state."""

    allowed_roles = VIEW_ROLES
    action_roles = {
        "create": RUN_ROLES,
        "cancel": RUN_ROLES,
        "resume": RUN_ROLES,
        "retry_errors": RUN_ROLES,
    }
    queryset = DeidRun.objects.order_by("-created", "-pk")
    serializer_class = DeidRunSerializer

    def get_serializer_class(self) -> Any:
        return StartRunSerializer if self.action == "create" else DeidRunSerializer

    @extend_schema(
        request=StartRunSerializer,
        responses={
            201: DeidRunSerializer,
            400: OpenApiResponse(description="the batch cannot be run (named), or a bad field"),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        ser = StartRunSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            run = services.start_run(
                ser.validated_data["batch"],
                profile=ser.validated_data.get("profile_version")
                or ser.validated_data.get("profile"),
                acting_user=request.user,
            )
        except services.DeidServiceError as exc:
            raise ValidationError({"batch": [str(exc)]}) from None
        return Response(DeidRunSerializer(run).data, status=status.HTTP_201_CREATED)

    def _change(self, fn: Any) -> Response:
        run = self.get_object()
        try:
            fn(run, acting_user=self.request.user)
        except services.DeidServiceError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        run.refresh_from_db()
        return Response(DeidRunSerializer(run).data)

    @_RUN_ACTION_SCHEMA
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        return self._change(services.cancel_run)

    @_RUN_ACTION_SCHEMA
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return self._change(services.resume_run)

    @_RUN_ACTION_SCHEMA
    @action(detail=True, methods=["post"], url_path="retry-errors")
    def retry_errors(self, request: Request, pk: str | None = None) -> Response:
        return self._change(services.retry_errors)


class DeidFileResultSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeidFileResult
        fields = [
            "id",
            "run",
            "raw_file",
            "status",
            "reason",
            "kind",
            "modality",
            "input_sha256",
            "output_relpath",
            "output_sha256",
            "extra_outputs",
            "findings",
            "actions",
            "patient_pseudonym",
            "study_key",
            "flagged",
            "flag_reasons",
            "profile_fingerprint",
            "processed_at",
        ]
        read_only_fields = fields


class DeidFileResultViewSet(viewsets.ReadOnlyModelViewSet):
    """Per-file results (no raw paths, no values). Filters: ``run``, ``status``, ``kind``,
    ``flagged``."""

    allowed_roles = VIEW_ROLES
    serializer_class = DeidFileResultSerializer
    queryset = DeidFileResult.objects.order_by("run_id", "raw_file_id")

    def get_queryset(self) -> Any:
        qs = super().get_queryset()
        if self.action != "list":
            return qs
        params = {
            k: v for k, v in self.request.query_params.items() if k in ResultFilterForm.base_fields
        }
        form = ResultFilterForm(params)
        if not form.is_valid():
            raise ValidationError(form.errors.get_json_data())
        return form.filter(qs)


class ProfileVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ProfileVersion
        fields = ["id", "name", "version", "fingerprint", "note", "data", "created"]
        read_only_fields = fields


class ProfileVersionViewSet(viewsets.ReadOnlyModelViewSet):
    """Saved de-identification profiles, every version (saved through the pages)."""

    allowed_roles = VIEW_ROLES
    serializer_class = ProfileVersionSerializer
    queryset = ProfileVersion.objects.order_by("name", "-version")


routes = [
    ("deid/profiles", ProfileVersionViewSet, "deidprofileversion"),
    ("deid/runs", DeidRunViewSet, "deidrun"),
    ("deid/results", DeidFileResultViewSet, "deidfileresult"),
]

"""REST access to the data map: sources (CRUD), batches (start, cancel), files, QA results.

Viewsets declare roles and filters only; writes call services. Filters are the pages' forms
(apps/inventory/filtersets.py), so ``?kind=dicom&excluded=true`` means the same in both.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.roles import ROLE_LABELS
from apps.inventory import services
from apps.inventory.filtersets import (
    BatchFilterForm,
    FilterForm,
    QAResultFilterForm,
    RawFileFilterForm,
    SourceFilterForm,
)
from apps.inventory.models import DataSource, IngestBatch, QACheckResult, RawFile
from apps.inventory.views import FILES, READ, WRITE, files_for

WRITE_ACTIONS = ("create", "update", "partial_update", "destroy")


def _drf_error(exc: DjangoValidationError) -> ValidationError:
    return ValidationError(getattr(exc, "message_dict", None) or {"detail": exc.messages})


class FilteredMixin:
    """List actions filter through the shared form; bad filters are a 400."""

    filter_form: type[FilterForm] | None = None
    request: Request
    action: str

    def filter_queryset(self, qs: Any) -> Any:
        if self.filter_form is None or self.action != "list":
            return qs
        form = self.filter_form.from_params(self.request.query_params)
        if not form.is_valid():
            raise ValidationError(form.errors.get_json_data())
        return form.filter(qs)


# --- sources ---------------------------------------------------------------------------------


class DataSourceSerializer(serializers.ModelSerializer):
    allowed_roles = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(ROLE_LABELS)), required=False
    )

    class Meta:
        model = DataSource
        read_only_fields = [
            "id",
            "scanned_count",
            "scanned_bytes",
            "last_scanned_at",
            "created",
            "updated",
        ]
        # What a client may change is what the service edits; the rest is the scanner's.
        fields = [*services.EDITABLE_FIELDS, *read_only_fields]


class DataSourceViewSet(FilteredMixin, viewsets.ModelViewSet):
    """The data map. Filters: ``q`` (source or owner contains), ``type``, ``consent_status``."""

    allowed_roles = set(READ)
    action_roles = {name: set(WRITE) for name in WRITE_ACTIONS}
    serializer_class = DataSourceSerializer
    queryset = DataSource.objects.order_by("source")
    filter_form = SourceFilterForm

    def perform_create(self, serializer: Any) -> None:
        try:
            serializer.instance = services.create_source(
                serializer.validated_data, acting_user=self.request.user
            )
        except DjangoValidationError as exc:
            raise _drf_error(exc) from None

    def perform_update(self, serializer: Any) -> None:
        try:
            serializer.instance = services.update_source(
                serializer.instance, serializer.validated_data, acting_user=self.request.user
            )
        except DjangoValidationError as exc:
            raise _drf_error(exc) from None

    def perform_destroy(self, instance: DataSource) -> None:
        try:
            services.delete_source(instance, acting_user=self.request.user)
        except DjangoValidationError as exc:
            raise _drf_error(exc) from None


# --- batches ---------------------------------------------------------------------------------


class IngestBatchSerializer(serializers.ModelSerializer):
    source = serializers.PrimaryKeyRelatedField(queryset=DataSource.objects.all())

    class Meta:
        model = IngestBatch
        fields = [
            "id",
            "source",
            "status",
            "files_total",
            "files_done",
            "files_skipped",
            "files_refused",
            "bytes_total",
            "error",
            "created_by_id",
            "created",
            "started_at",
            "finished_at",
        ]
        read_only_fields = [f for f in fields if f != "source"]


class IngestBatchViewSet(
    FilteredMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Scans. ``POST {"source": id}`` starts one (202); ``POST .../cancel/`` stops it.
    Filters: ``source``, ``status``."""

    allowed_roles = set(READ)
    action_roles = {"create": set(WRITE), "cancel": set(WRITE)}
    serializer_class = IngestBatchSerializer
    queryset = IngestBatch.objects.order_by("-created")
    filter_form = BatchFilterForm

    @extend_schema(
        responses={
            202: OpenApiResponse(IngestBatchSerializer, description="the scan is queued"),
            400: OpenApiResponse(description="the source cannot be scanned now (named)"),
        }
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            batch = services.start_scan(
                serializer.validated_data["source"], acting_user=request.user
            )
        except services.ScanError as exc:
            raise ValidationError({"source": [str(exc)]}) from None
        return Response(self.get_serializer(batch).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=None,
        responses={
            200: OpenApiResponse(IngestBatchSerializer, description="the scan is stopping"),
            409: OpenApiResponse(IngestBatchSerializer, description="it had already ended"),
        },
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        batch = self.get_object()
        cancelled = services.cancel_scan(batch, acting_user=request.user)
        batch.refresh_from_db()
        return Response(
            self.get_serializer(batch).data,
            status=status.HTTP_200_OK if cancelled else status.HTTP_409_CONFLICT,
        )


# --- files and QA ----------------------------------------------------------------------------


class RawFileSerializer(serializers.ModelSerializer):
    class Meta:
        model = RawFile
        fields = [
            "id",
            "batch",
            "source",
            "relpath",
            "sha256",
            "size",
            "kind",
            "modality",
            "study_key",
            "series_key",
            "instance_number",
            "excluded",
            "excluded_reason",
            "registered_at",
        ]
        read_only_fields = fields


class ExcludeSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=200)


class RawFileViewSet(FilteredMixin, viewsets.ReadOnlyModelViewSet):
    """Registered raw files (paths can carry names: stewards and privacy officers only).
    Filters: ``source``, ``batch``, ``kind``, ``modality``, ``excluded``, ``sha256`` (prefix),
    ``qa_failed``. ``POST .../exclude/ {"reason": ...}`` and ``.../include/``."""

    allowed_roles = set(FILES)
    action_roles = {"exclude": set(WRITE), "include": set(WRITE)}
    serializer_class = RawFileSerializer
    # The model for the schema (a typed ``{id}``) without a query; it grants no rows, which
    # come only from files_for().
    queryset = RawFile.objects.none()
    filter_form = RawFileFilterForm

    def get_queryset(self) -> Any:
        return files_for(self.request).order_by("id")

    @extend_schema(request=ExcludeSerializer, responses=RawFileSerializer)
    @action(detail=True, methods=["post"], serializer_class=ExcludeSerializer)
    def exclude(self, request: Request, pk: str | None = None) -> Response:
        raw = self.get_object()
        body = ExcludeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            services.exclude_file(
                raw, reason=body.validated_data["reason"], acting_user=request.user
            )
        except DjangoValidationError as exc:
            raise _drf_error(exc) from None
        raw.refresh_from_db()
        return Response(RawFileSerializer(raw).data)

    @extend_schema(request=None, responses=RawFileSerializer)
    @action(detail=True, methods=["post"], serializer_class=serializers.Serializer)
    def include(self, request: Request, pk: str | None = None) -> Response:
        raw = self.get_object()
        services.include_file(raw, acting_user=request.user)
        raw.refresh_from_db()
        return Response(RawFileSerializer(raw).data)


class QACheckResultSerializer(serializers.ModelSerializer):
    batch = serializers.IntegerField(source="raw_file.batch_id", read_only=True)
    source = serializers.IntegerField(source="raw_file.source_id", read_only=True)

    class Meta:
        model = QACheckResult
        fields = [
            "id",
            "raw_file",
            "batch",
            "source",
            "check_type",
            "result",
            "severity",
            "notes",
            "checked_at",
        ]
        read_only_fields = fields


class QACheckResultViewSet(FilteredMixin, viewsets.ReadOnlyModelViewSet):
    """Data QA results, latest per file and check. Filters: ``source``, ``batch``,
    ``check_type``, ``result``, ``severity``."""

    allowed_roles = set(FILES)
    serializer_class = QACheckResultSerializer
    queryset = QACheckResult.objects.none()  # the model for the schema, as on RawFileViewSet
    filter_form = QAResultFilterForm

    def get_queryset(self) -> Any:
        return (
            QACheckResult.objects.filter(raw_file__in=files_for(self.request))
            .select_related("raw_file")
            .order_by("id")
        )


routes = [
    ("inventory/sources", DataSourceViewSet, "inventory-source"),
    ("inventory/batches", IngestBatchViewSet, "inventory-batch"),
    ("inventory/files", RawFileViewSet, "inventory-file"),
    ("inventory/qa-results", QACheckResultViewSet, "inventory-qa-result"),
]

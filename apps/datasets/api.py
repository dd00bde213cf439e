"""REST API of the datasets app: versions (create = build, verify), lineage, label sets.

Routes (registered by controlplane/api.py):
- ``/api/datasets/versions/``: list, retrieve, create (queues a build; 202), ``{id}/verify/``
  (POST queues a re-hash on a worker; 202 with the check), ``{id}/cancel/`` (POST),
  ``{id}/lineage/`` (every raw file behind it, paginated).
- ``/api/datasets/checks/``: verification checks (``?version=``), newest first; poll one by id
  for ``status``, ``bytes_done``/``bytes_total`` and, once ``done``, ``ok`` and ``problems``.
- ``/api/datasets/lineage/raw-file/?id=`` or ``?sha256=``, and
  ``/api/datasets/lineage/patient/?pseudonym=``: every version and consumer the data reached.
- ``/api/datasets/consumer-lineage/?kind=jobs.trainingrun&id=<run id>``: every raw file behind
  a training run (across the versions it read), paginated.
- ``/api/datasets/withdrawals/``: patients who withdrew consent; create (privacy officers)
  records one (201, or 200 when one is already in force).
- ``/api/datasets/reinstatements/``: re-consents that ended a withdrawal; create (privacy
  officers, with a case number).
- ``/api/datasets/tokenizers/``: tokenizers trained on a version's text; create queues one.
- ``/api/datasets/annotations/``: list (``?version=``), retrieve, create (multipart upload).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from apps.datasets import registry, services, tokenizers
from apps.datasets.access import (
    BUILD,
    LABELS_READ,
    LABELS_WRITE,
    LINEAGE,
    READ,
    TOKENIZE,
    VERIFY,
    WITHDRAW,
)
from apps.datasets.filtersets import VersionFilterForm
from apps.datasets.models import (
    AnnotationSet,
    ConsentReinstatement,
    ConsentWithdrawal,
    DatasetMember,
    DatasetTokenizer,
    DatasetUse,
    DatasetVersion,
    VerifyCheck,
)
from apps.inventory.models import RawFile


class VersionSerializer(serializers.ModelSerializer):
    runs = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    label = serializers.CharField(read_only=True)

    class Meta:
        model = DatasetVersion
        fields = [
            "id",
            "name",
            "number",
            "label",
            "status",
            "runs",
            "root",
            "target_shard_mb",
            "build_settings",
            "manifest_sha256",
            "shard_count",
            "bytes_total",
            "sample_count",
            "file_count",
            "modality_counts",
            "token_estimate",
            "skipped",
            "progress_done",
            "progress_total",
            "error",
            "cancel_requested",
            "created_by",
            "created",
            "finished_at",
        ]
        read_only_fields = fields


class CheckSerializer(serializers.ModelSerializer):
    class Meta:
        model = VerifyCheck
        fields = [
            "id",
            "version",
            "status",
            "ok",
            "problems",
            "files_checked",
            "bytes_done",
            "bytes_total",
            "checked_at",
            "heartbeat_at",
            "finished_at",
            "error",
            "checked_by_id",
        ]
        read_only_fields = fields


class BuildSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=80)
    runs = serializers.ListField(child=serializers.IntegerField(min_value=1), allow_empty=False)
    target_shard_mb = serializers.FloatField(default=512.0)


class MemberSerializer(serializers.ModelSerializer):
    raw_sha256 = serializers.CharField(source="raw_file.sha256")
    source = serializers.IntegerField(source="raw_file.source_id")
    batch = serializers.IntegerField(source="raw_file.batch_id")

    class Meta:
        model = DatasetMember
        fields = [
            "version",
            "sample_key",
            "member",
            "raw_file",
            "raw_sha256",
            "source",
            "batch",
            "run",
            "deid_result",
            "patient_pseudonym",
        ]
        read_only_fields = fields


class UseSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetUse
        fields = ["version", "consumer_kind", "consumer_id", "label", "recorded_at"]
        read_only_fields = fields


class VersionReachSerializer(serializers.Serializer):
    """One version holding the data: how many of its files, and the affected sample keys."""

    id = serializers.IntegerField(source="version.pk")
    label = serializers.CharField(source="version.label")
    files = serializers.IntegerField()
    samples = serializers.ListField(child=serializers.CharField())


class ReachSerializer(serializers.Serializer):
    """Where some raw data went (``services.Reach``): the consent-withdrawal report."""

    subject = serializers.CharField()
    raw_files = serializers.ListField(child=serializers.IntegerField(), source="raw_file_ids")
    versions = VersionReachSerializer(many=True)
    uses = UseSerializer(many=True)


class AnnotationSetSerializer(serializers.ModelSerializer):
    class Meta:
        model = AnnotationSet
        fields = [
            "id",
            "version",
            "name",
            "number",
            "author",
            "created",
            "quality_score",
            "notes",
            "sha256",
            "size",
            "format",
            "label_count",
            "sample_count",
        ]
        read_only_fields = fields


class AnnotationUploadSerializer(serializers.Serializer):
    version = serializers.PrimaryKeyRelatedField(queryset=DatasetVersion.objects.all())
    name = serializers.SlugField(max_length=80)
    file = serializers.FileField()
    quality_score = serializers.FloatField(min_value=0, max_value=1)
    notes = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")


class DatasetVersionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Dataset versions; ``POST`` queues a build of released runs (refused, naming the run,
    for any run not released). Filters: ``name``, ``status``."""

    allowed_roles = set(READ)
    action_roles = {"create": set(BUILD), "verify": set(VERIFY), "cancel": set(BUILD)}
    serializer_class = VersionSerializer
    queryset = DatasetVersion.objects.prefetch_related("runs").order_by("name", "-number")

    def get_queryset(self) -> Any:
        qs = super().get_queryset()
        if self.action != "list":
            return qs
        form = VersionFilterForm(
            {k: v for k, v in self.request.query_params.items() if k in ("name", "status")}
        )
        if not form.is_valid():
            raise ValidationError(form.errors.get_json_data())
        return form.filter(qs)

    @extend_schema(
        request=BuildSerializer,
        responses={
            202: OpenApiResponse(VersionSerializer, description="the build is queued"),
            400: OpenApiResponse(description="a run not released (named), or a bad field"),
        },
    )
    def create(self, request: Request) -> Response:
        data = BuildSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            version = services.request_build(
                data.validated_data["name"],
                data.validated_data["runs"],
                target_shard_mb=data.validated_data["target_shard_mb"],
                acting_user=request.user,
            )
        except services.DatasetError as exc:
            raise _refused(exc) from None
        return Response(VersionSerializer(version).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=None,
        responses={
            202: OpenApiResponse(CheckSerializer, description="the check queued or running"),
            409: OpenApiResponse(description="the version is not ready"),
        },
    )
    @action(detail=True, methods=["post"])
    def verify(self, request: Request, pk: str | None = None) -> Response:
        """Queue a re-hash of every file (202 with the check to poll at
        ``/api/datasets/checks/{id}/``); one already queued or running is returned instead."""
        try:
            check = services.request_verify(self.get_object(), acting_user=request.user)
        except services.DatasetError as exc:
            raise _refused(exc, conflict=True) from None
        return Response(CheckSerializer(check).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=None,
        responses={
            200: VersionSerializer,
            409: OpenApiResponse(description="the version is not building"),
        },
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        try:
            version = services.cancel_build(self.get_object(), acting_user=request.user)
        except services.DatasetError as exc:
            raise _refused(exc, conflict=True) from None
        return Response(VersionSerializer(version).data)

    @extend_schema(responses=MemberSerializer(many=True))
    @action(detail=True, methods=["get"])
    def lineage(self, request: Request, pk: str | None = None) -> Response:
        page = self.paginate_queryset(services.lineage_of_version(self.get_object()))
        return self.get_paginated_response(MemberSerializer(page, many=True).data)


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


def _refused(exc: services.DatasetError, *, conflict: bool = False) -> APIException:
    """A service's refusal as the API answers it: ``{"detail": reason}`` with 400 (the request
    cannot be done) or, with ``conflict``, 409 (not in the object's present state)."""
    return Conflict(str(exc)) if conflict else ValidationError({"detail": str(exc)})


def _of_version(view: viewsets.GenericViewSet, qs: Any) -> Any:
    """A list narrowed by ``?version=<id>``."""
    version = view.request.query_params.get("version")
    if view.action == "list" and version:
        if not version.isdigit():
            raise ValidationError({"version": "must be an id"})
        qs = qs.filter(version_id=int(version))
    return qs


class VerifyCheckViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Verification checks of dataset versions, newest first (``?version=`` narrows)."""

    allowed_roles = set(READ)
    serializer_class = CheckSerializer
    queryset = VerifyCheck.objects.order_by("-checked_at", "-pk")

    def get_queryset(self) -> Any:
        return _of_version(self, super().get_queryset())


class LineageViewSet(viewsets.ViewSet):
    """Where raw data went (the consent-withdrawal report), by raw file or by patient."""

    allowed_roles = set(LINEAGE)

    @extend_schema(
        parameters=[
            OpenApiParameter("id", OpenApiTypes.INT, description="a raw file id"),
            OpenApiParameter(
                "sha256", OpenApiTypes.STR, description="a raw file's SHA-256 (when no id)"
            ),
        ],
        responses={
            200: ReachSerializer(many=True),
            400: OpenApiResponse(description="neither id nor sha256 given"),
            404: OpenApiResponse(description="no such raw file"),
        },
    )
    @action(detail=False, methods=["get"], url_path="raw-file")
    def raw_file(self, request: Request) -> Response:
        params = request.query_params
        if params.get("id", "").isdigit():
            files = RawFile.objects.filter(pk=int(params["id"]))
        elif params.get("sha256"):
            files = services.find_raw_files(params["sha256"])
        else:
            raise ValidationError({"detail": "give ?id=<raw file id> or ?sha256=<hex>"})
        files = list(files[:20])
        if not files:
            return Response({"detail": "no such raw file"}, status=status.HTTP_404_NOT_FOUND)
        reaches = [services.reach_of_raw_file(f) for f in files]
        return Response(ReachSerializer(reaches, many=True).data)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "pseudonym", OpenApiTypes.STR, required=True, description="a patient pseudonym"
            )
        ],
        responses={
            200: ReachSerializer,
            400: OpenApiResponse(description="no pseudonym, or one too long"),
        },
    )
    @action(detail=False, methods=["get"])
    def patient(self, request: Request) -> Response:
        pseudonym = request.query_params.get("pseudonym", "").strip()
        if not pseudonym or len(pseudonym) > 80:
            raise ValidationError({"detail": "give ?pseudonym=<patient pseudonym>"})
        return Response(ReachSerializer(services.reach_of_patient(pseudonym)).data)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter(
                "kind", OpenApiTypes.STR, required=True, description="e.g. jobs.trainingrun"
            ),
            OpenApiParameter(
                "id", OpenApiTypes.STR, required=True, description="the consumer's id"
            ),
        ],
        responses={
            200: MemberSerializer(many=True),
            400: OpenApiResponse(description="kind or id malformed"),
            404: OpenApiResponse(description="it read no dataset version"),
        },
    )
)
class ConsumerLineageViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Every raw file behind a training run (or another consumer of dataset versions):
    ``?kind=jobs.trainingrun&id=<run id>``, paginated; 404 when it read no version."""

    allowed_roles = set(READ)
    serializer_class = MemberSerializer

    def _consumer(self) -> tuple[str, str]:
        kind = self.request.query_params.get("kind", "")
        consumer_id = self.request.query_params.get("id", "")
        if not registry.KIND_PATTERN.match(kind) or not registry.ID_PATTERN.match(consumer_id):
            raise ValidationError({"detail": "give ?kind=<app.model>&id=<consumer id>"})
        return kind, consumer_id

    def get_queryset(self) -> Any:
        return services.lineage_of_consumer(*self._consumer())

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if not services.versions_used_by(*self._consumer()).exists():
            raise NotFound("no dataset version was read by this consumer")
        return super().list(request, *args, **kwargs)


class WithdrawalSerializer(serializers.ModelSerializer):
    recorded_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    reinstated_at = serializers.DateTimeField(
        source="reinstatement.recorded_at",
        read_only=True,
        allow_null=True,
        help_text="when a re-consent ended this withdrawal; null while it is in force",
    )

    class Meta:
        model = ConsentWithdrawal
        fields = [
            "id",
            "patient_pseudonym",
            "reference",
            "recorded_at",
            "recorded_by",
            "reinstated_at",
        ]
        read_only_fields = fields


class WithdrawalRequestSerializer(serializers.Serializer):
    patient_pseudonym = serializers.CharField(max_length=80)
    reference = serializers.CharField(max_length=80, required=False, allow_blank=True, default="")


class ConsentWithdrawalViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Patients who withdrew consent (docs/datasets.md "Consent withdrawal"): read by those
    who read lineage; recorded only by privacy officers. Append-only: no update or delete."""

    allowed_roles = set(LINEAGE)
    action_roles = {"create": set(WITHDRAW)}
    serializer_class = WithdrawalSerializer
    queryset = ConsentWithdrawal.objects.select_related("recorded_by", "reinstatement")

    @extend_schema(
        request=WithdrawalRequestSerializer,
        responses={
            201: WithdrawalSerializer,
            200: OpenApiResponse(WithdrawalSerializer, description="already recorded"),
            400: OpenApiResponse(description="unknown pseudonym or not a case number"),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = WithdrawalRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            row, created = services.withdraw_consent(
                data.validated_data["patient_pseudonym"],
                reference=data.validated_data["reference"],
                acting_user=request.user,
            )
        except services.DatasetError as exc:
            raise _refused(exc) from None
        return Response(
            WithdrawalSerializer(row).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class ReinstatementSerializer(serializers.ModelSerializer):
    recorded_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    patient_pseudonym = serializers.CharField(source="withdrawal.patient_pseudonym", read_only=True)

    class Meta:
        model = ConsentReinstatement
        fields = [
            "id",
            "withdrawal",
            "patient_pseudonym",
            "reference",
            "recorded_at",
            "recorded_by",
        ]
        read_only_fields = fields


class ReinstatementRequestSerializer(serializers.Serializer):
    patient_pseudonym = serializers.CharField(max_length=80)
    reference = serializers.CharField(max_length=80)


class ConsentReinstatementViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Re-consents that ended a withdrawal (docs/datasets.md "Consent withdrawal"): read by
    those who read lineage; recorded only by privacy officers, with a case number.
    Append-only: no update or delete."""

    allowed_roles = set(LINEAGE)
    action_roles = {"create": set(WITHDRAW)}
    serializer_class = ReinstatementSerializer
    queryset = ConsentReinstatement.objects.select_related("recorded_by", "withdrawal")

    @extend_schema(
        request=ReinstatementRequestSerializer,
        responses={
            201: ReinstatementSerializer,
            400: OpenApiResponse(
                description="no withdrawal in force for that patient, or not a case number"
            ),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = ReinstatementRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            row = services.reinstate_consent(
                data.validated_data["patient_pseudonym"],
                reference=data.validated_data["reference"],
                acting_user=request.user,
            )
        except services.DatasetError as exc:
            raise _refused(exc) from None
        return Response(ReinstatementSerializer(row).data, status=status.HTTP_201_CREATED)


class AnnotationSetViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Label sets, append-only: create uploads a new version; there is no update or delete."""

    allowed_roles = set(LABELS_READ)
    action_roles = {"create": set(LABELS_WRITE)}
    serializer_class = AnnotationSetSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    queryset = AnnotationSet.objects.order_by("version_id", "name", "-number")

    def get_queryset(self) -> Any:
        return _of_version(self, super().get_queryset())

    @extend_schema(
        request={"multipart/form-data": AnnotationUploadSerializer},
        responses={
            201: AnnotationSetSerializer,
            400: OpenApiResponse(description="the file's problems, or a bad field"),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = AnnotationUploadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        try:
            created = services.add_annotation_set(
                data.validated_data["version"],
                name=data.validated_data["name"],
                data=upload.read(services.MAX_ANNOTATION_BYTES + 1),
                filename=upload.name,
                quality_score=data.validated_data["quality_score"],
                notes=data.validated_data["notes"],
                acting_user=request.user,
            )
        except services.AnnotationError as exc:
            raise ValidationError({"file": exc.errors}) from None
        except services.DatasetError as exc:
            raise _refused(exc) from None
        return Response(AnnotationSetSerializer(created).data, status=status.HTTP_201_CREATED)


class TokenizerSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetTokenizer
        fields = [
            "id",
            "version",
            "vocab_size",
            "max_mb",
            "status",
            "merges_done",
            "merges_total",
            "ids",
            "path",
            "sha256",
            "fingerprint",
            "requested_at",
            "finished_at",
            "error",
            "cancel_requested",
        ]
        read_only_fields = fields


class TokenizerRequestSerializer(serializers.Serializer):
    version = serializers.PrimaryKeyRelatedField(queryset=DatasetVersion.objects.all())
    vocab_size = serializers.IntegerField(
        min_value=tokenizers.MIN_VOCAB, max_value=tokenizers.MAX_VOCAB
    )
    max_mb = serializers.FloatField(default=256.0)


class TokenizerViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Tokenizers trained on a version's text (``?version=`` narrows). ``POST`` queues one
    (stewards, operators): 202 with the row to poll, 200 when the same tokenizer is already
    there or being made."""

    allowed_roles = set(READ)
    action_roles = {"create": set(TOKENIZE), "cancel": set(TOKENIZE)}
    serializer_class = TokenizerSerializer
    queryset = DatasetTokenizer.objects.all()

    def get_queryset(self) -> Any:
        return _of_version(self, super().get_queryset())

    @extend_schema(
        request=TokenizerRequestSerializer,
        responses={
            202: TokenizerSerializer,
            200: OpenApiResponse(TokenizerSerializer, description="already asked for"),
            400: OpenApiResponse(description="not a ready version with text, or a bad range"),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = TokenizerRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            row, created = tokenizers.request_tokenizer(
                data.validated_data["version"],
                vocab_size=data.validated_data["vocab_size"],
                max_mb=data.validated_data["max_mb"],
                acting_user=request.user,
            )
        except services.DatasetError as exc:
            raise _refused(exc) from None
        return Response(
            TokenizerSerializer(row).data,
            status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        request=None,
        responses={
            200: TokenizerSerializer,
            409: OpenApiResponse(description="the tokenizer is already finished"),
        },
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Stop a queued or training tokenizer (at once, or at its next progress report)."""
        try:
            row = tokenizers.cancel_tokenizer(self.get_object(), acting_user=request.user)
        except services.DatasetError as exc:
            raise _refused(exc, conflict=True) from None
        return Response(TokenizerSerializer(row).data)


routes = [
    ("datasets/versions", DatasetVersionViewSet, "datasetversion"),
    ("datasets/checks", VerifyCheckViewSet, "verifycheck"),
    ("datasets/lineage", LineageViewSet, "datasetlineage"),
    ("datasets/consumer-lineage", ConsumerLineageViewSet, "datasetconsumerlineage"),
    ("datasets/annotations", AnnotationSetViewSet, "annotationset"),
    ("datasets/withdrawals", ConsentWithdrawalViewSet, "consentwithdrawal"),
    ("datasets/reinstatements", ConsentReinstatementViewSet, "consentreinstatement"),
    ("datasets/tokenizers", TokenizerViewSet, "datasettokenizer"),
]

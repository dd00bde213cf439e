"""REST access to review: batches (and their gate), items, leases, verdicts, findings,
resolutions and releases. Every write goes through ``apps.review.services``; a release
here meets the same gate as the page and ``manage.py review_release``.
"""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.access import roles_of
from apps.core.roles import AUDITOR, CLINICIAN, PRIVACY, STEWARD
from apps.deid.models import DeidRun
from apps.review import services
from apps.review.models import Category, Finding, ReviewBatch, ReviewItem, Verdict

READERS = {CLINICIAN, STEWARD, PRIVACY, AUDITOR}
RELEASERS = {STEWARD, PRIVACY}


def _service_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (services.GateClosed, services.LeaseLost):
        raise
    except services.ReviewError as exc:
        raise ValidationError({"detail": str(exc)}) from None
    except PermissionError as exc:
        raise PermissionDenied(str(exc)) from None


class ReviewBatchSerializer(serializers.ModelSerializer):
    class Meta:
        model = ReviewBatch
        fields = [
            "id",
            "run",
            "status",
            "fraction",
            "min_per_stratum",
            "seed",
            "threshold",
            "double_review_fraction",
            "lease_seconds",
            "items_total",
            "results_ok",
            "created",
            "released_at",
        ]
        read_only_fields = fields


class NewBatchSerializer(serializers.Serializer):
    run = serializers.PrimaryKeyRelatedField(queryset=DeidRun.objects.all())
    fraction = serializers.FloatField()
    min_per_stratum = serializers.IntegerField(required=False)
    threshold = serializers.FloatField(required=False)
    double_review_fraction = serializers.FloatField(required=False)
    lease_seconds = serializers.IntegerField(required=False)
    seed = serializers.IntegerField(required=False)


class PassRateSerializer(serializers.Serializer):
    """Items sampled, reviewed and passed; the pass rate and its lower bound."""

    items = serializers.IntegerField()
    reviewed = serializers.IntegerField()
    passed = serializers.IntegerField()
    rate = serializers.FloatField(allow_null=True)
    lower_bound = serializers.FloatField()


class StratumSerializer(PassRateSerializer):
    """One stratum of the gate (``services.StratumStat``)."""

    key = serializers.CharField()


class GateSerializer(PassRateSerializer):
    """The release gate of a batch (``services.Gate``); empty ``reasons`` = releasable."""

    batch_id = serializers.IntegerField()
    run_id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=ReviewBatch.Status.choices)
    failed = serializers.IntegerField()
    stale = serializers.IntegerField()
    withdrawn = serializers.IntegerField(
        help_text="sampled items left out because their patient withdrew consent"
    )
    required = serializers.IntegerField(help_text="items that must be reviewed: items − withdrawn")
    threshold = serializers.FloatField()
    confidence = serializers.FloatField()
    unresolved_findings = serializers.IntegerField()
    kappa = serializers.FloatField(allow_null=True)
    kappa_pairs = serializers.IntegerField()
    min_clean_sample = serializers.IntegerField()
    strata = StratumSerializer(many=True)
    reasons = serializers.ListField(child=serializers.CharField())
    releasable = serializers.BooleanField()


class ReviewBatchViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Review batches. ``POST`` draws a new sample (stewards, privacy officers);
    ``GET …/{id}/gate/`` returns pass rate, lower bound, kappa and every reason it is closed."""

    allowed_roles = READERS
    action_roles = {"create": RELEASERS}
    queryset = ReviewBatch.objects.order_by("-created")
    serializer_class = ReviewBatchSerializer

    def get_serializer_class(self) -> Any:
        return NewBatchSerializer if self.action == "create" else ReviewBatchSerializer

    @extend_schema(
        request=NewBatchSerializer,
        responses={
            201: ReviewBatchSerializer,
            400: OpenApiResponse(description="the run cannot be sampled, or a bad field"),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = NewBatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        d = dict(data.validated_data)
        run = d.pop("run")
        batch = _service_call(services.create_batch, run, acting_user=request.user, **d)
        return Response(ReviewBatchSerializer(batch).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=GateSerializer)
    @action(detail=True, methods=["get"])
    def gate(self, request: Request, pk: str | None = None) -> Response:
        return Response(services.gate(self.get_object()).as_dict())


class ReviewItemSerializer(serializers.ModelSerializer):
    kind = serializers.CharField(source="result.kind", read_only=True)
    modality = serializers.CharField(source="result.modality", read_only=True)
    output_sha256 = serializers.CharField(source="result.output_sha256", read_only=True)
    withdrawn = serializers.SerializerMethodField(
        help_text="the patient withdrew consent: the item is no longer offered or shown"
    )

    class Meta:
        model = ReviewItem
        fields = [
            "id",
            "batch",
            "result",
            "stratum",
            "flagged",
            "position",
            "needs_reviews",
            "round",
            "reviews_done",
            "status",
            "outcome",
            "lease_expires_at",
            "kind",
            "modality",
            "output_sha256",
            "withdrawn",
        ]
        read_only_fields = fields

    def get_withdrawn(self, item: ReviewItem) -> bool:
        root = self.root  # one read of the withdrawals per response, not per item
        if not hasattr(root, "_withdrawn"):
            root._withdrawn = services.withdrawn_pseudonyms()
        pseudonym = item.result.patient_pseudonym
        return bool(pseudonym) and pseudonym in root._withdrawn


class ReviewItemViewSet(viewsets.ReadOnlyModelViewSet):
    """Sampled items (``?batch=`` filters); a clinician sees only those leased to them or
    that they judged."""

    allowed_roles = {CLINICIAN, STEWARD, PRIVACY}
    serializer_class = ReviewItemSerializer

    def get_queryset(self) -> Any:
        qs = services.visible_items(self.request.user).order_by("batch_id", "position")
        batch = self.request.query_params.get("batch")
        if batch:
            if not batch.isdigit():
                raise ValidationError({"batch": "must be an integer id"})
            qs = qs.filter(batch_id=int(batch))
        return qs


class LeaseSerializer(serializers.Serializer):
    batch = serializers.IntegerField()


class LeaseViewSet(viewsets.GenericViewSet):
    """``POST {"batch": id}``: lease the caller's next item (the one held, if any); 204 when
    nothing is left for them."""

    allowed_roles = {CLINICIAN}
    serializer_class = LeaseSerializer

    @extend_schema(
        request=LeaseSerializer,
        responses={
            200: OpenApiResponse(ReviewItemSerializer, description="the item leased"),
            204: OpenApiResponse(description="nothing is left for the caller"),
            404: OpenApiResponse(description="no such batch"),
        },
    )
    def create(self, request: Request) -> Response:
        data = LeaseSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        batch = get_object_or_404(ReviewBatch, pk=data.validated_data["batch"])
        item = _service_call(services.next_item, batch, request.user)
        if item is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(ReviewItemSerializer(item).data)


class VerdictSerializer(serializers.ModelSerializer):
    # Blank on a pass; as a read-only model field its schema would leave blank out.
    category = serializers.ChoiceField(choices=Category.choices, allow_blank=True, read_only=True)

    class Meta:
        model = Verdict
        fields = [
            "id",
            "item",
            "reviewer",
            "round",
            "decision",
            "category",
            "region",
            "seconds",
            "output_sha256",
            "created",
        ]
        read_only_fields = fields


class NewVerdictSerializer(serializers.Serializer):
    item = serializers.IntegerField()
    # The models' choices (labels too), so the schema names each choice set once.
    decision = serializers.ChoiceField(choices=Verdict.Decision.choices)
    category = serializers.ChoiceField(
        choices=Category.choices, allow_blank=True, required=False, default=""
    )
    region = serializers.JSONField(required=False, allow_null=True, default=None)


class VerdictViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Verdicts. ``POST {"item", "decision", "category", "region"}`` by the clinician holding
    the item's lease; 409 when the lease is gone. Clinicians list only their own."""

    allowed_roles = READERS
    action_roles = {"create": {CLINICIAN}}
    queryset = Verdict.objects.order_by("-created")
    serializer_class = VerdictSerializer

    def get_serializer_class(self) -> Any:
        return NewVerdictSerializer if self.action == "create" else VerdictSerializer

    def get_queryset(self) -> Any:
        qs = super().get_queryset()
        if not roles_of(self.request.user, self.request.auth) & (RELEASERS | {AUDITOR}):
            qs = qs.filter(reviewer_id=self.request.user.pk)
        batch = self.request.query_params.get("batch")
        if batch and batch.isdigit():
            qs = qs.filter(item__batch_id=int(batch))
        return qs

    @extend_schema(
        request=NewVerdictSerializer,
        responses={
            201: VerdictSerializer,
            400: OpenApiResponse(description="the verdict is refused (named), or a bad field"),
            404: OpenApiResponse(description="no such item among the caller's"),
            409: OpenApiResponse(description="the caller's lease on the item is gone"),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = NewVerdictSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        d = data.validated_data
        item = get_object_or_404(services.visible_items(request.user), pk=d["item"])
        try:
            verdict = _service_call(
                services.submit_verdict,
                item,
                request.user,
                decision=d["decision"],
                category=d["category"],
                region=d["region"],
            )
        except services.LeaseLost as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(VerdictSerializer(verdict).data, status=status.HTTP_201_CREATED)


class FindingSerializer(serializers.ModelSerializer):
    # Blank while open; as a read-only model field its schema would leave blank out.
    resolution = serializers.ChoiceField(
        choices=Finding.Resolution.choices, allow_blank=True, read_only=True
    )

    class Meta:
        model = Finding
        fields = [
            "id",
            "batch",
            "item",
            "round",
            "category",
            "status",
            "resolution",
            "resolved_by_id",
            "resolved_at",
            "requeued",
            "created",
        ]
        read_only_fields = fields


class FindingViewSet(viewsets.ReadOnlyModelViewSet):
    """Findings opened by failing verdicts (``?batch=``, ``?status=open``)."""

    allowed_roles = READERS
    serializer_class = FindingSerializer

    def get_queryset(self) -> Any:
        qs = Finding.objects.order_by("-created")
        params = self.request.query_params
        if params.get("batch", "").isdigit():
            qs = qs.filter(batch_id=int(params["batch"]))
        if params.get("status") in Finding.Status.values:
            qs = qs.filter(status=params["status"])
        return qs


class ResolutionSerializer(serializers.Serializer):
    finding = serializers.IntegerField()
    resolution = serializers.ChoiceField(choices=Finding.Resolution.choices)
    scope = serializers.ChoiceField(choices=["item", "stratum"], default="item")


class ResolutionViewSet(viewsets.GenericViewSet):
    """``POST {"finding", "resolution", "scope"}``: the data steward closes a finding."""

    allowed_roles = RELEASERS
    serializer_class = ResolutionSerializer

    @extend_schema(
        request=ResolutionSerializer,
        responses={
            200: OpenApiResponse(FindingSerializer, description="the finding, resolved"),
            400: OpenApiResponse(description="the finding is not open, or a bad field"),
            404: OpenApiResponse(description="no such finding"),
        },
    )
    def create(self, request: Request) -> Response:
        data = ResolutionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        d = data.validated_data
        finding = get_object_or_404(Finding, pk=d["finding"])
        finding = _service_call(
            services.resolve_finding,
            finding,
            acting_user=request.user,
            resolution=d["resolution"],
            scope=d["scope"],
        )
        return Response(FindingSerializer(finding).data)


class ReleaseSerializer(serializers.Serializer):
    run = serializers.IntegerField()


class ReleasedSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    released_at = serializers.DateTimeField()


class ReleaseRefusedSerializer(serializers.Serializer):
    detail = serializers.CharField()
    reasons = serializers.ListField(child=serializers.CharField())


class ReleaseViewSet(viewsets.GenericViewSet):
    """``POST {"run": id}``: release a de-id run through the gate; 409 with every reason
    when the gate is closed."""

    allowed_roles = RELEASERS
    serializer_class = ReleaseSerializer

    @extend_schema(
        request=ReleaseSerializer,
        responses={
            200: ReleasedSerializer,
            404: OpenApiResponse(description="no such de-id run"),
            409: OpenApiResponse(
                ReleaseRefusedSerializer, description="the gate is closed: every reason"
            ),
        },
    )
    def create(self, request: Request) -> Response:
        data = ReleaseSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        run = get_object_or_404(DeidRun, pk=data.validated_data["run"])
        try:
            run = _service_call(services.release_run, run, acting_user=request.user)
        except services.GateClosed as exc:
            return Response(
                {"detail": "release refused by the review gate", "reasons": exc.reasons},
                status=status.HTTP_409_CONFLICT,
            )
        return Response({"run": run.pk, "released_at": run.released_at})


routes = [
    ("review/batches", ReviewBatchViewSet, "reviewbatch"),
    ("review/items", ReviewItemViewSet, "reviewitem"),
    ("review/leases", LeaseViewSet, "reviewlease"),
    ("review/verdicts", VerdictViewSet, "reviewverdict"),
    ("review/findings", FindingViewSet, "reviewfinding"),
    ("review/resolutions", ResolutionViewSet, "reviewresolution"),
    ("review/releases", ReleaseViewSet, "reviewrelease"),
]

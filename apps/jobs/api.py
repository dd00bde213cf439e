"""REST API of the jobs app: runs (launch, cancel, requeue, resume, preview), attempts and the
cluster. Viewsets only declare; every write calls a service (STYLE.md 8)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.jobs import reasons, services
from apps.jobs.access import READ_ROLES, WRITE_ROLES
from apps.jobs.filtersets import RunFilterForm
from apps.jobs.models import Attempt, TrainingRun
from apps.jobs.schedulers import SchedulerError
from apps.jobs.validation import RunSpec


class AttemptSerializer(serializers.ModelSerializer):
    reason_text = serializers.SerializerMethodField()

    class Meta:
        model = Attempt
        fields = [
            "id",
            "run",
            "number",
            "token",
            "job_id",
            "state",
            "reason",
            "reason_text",
            "error",
            "exit_code",
            "exit_signal",
            "restarts",
            "nodes_used",
            "trigger",
            "resumed_from_path",
            "resumed_from_step",
            "submitted_as",
            "submitted_via",
            "created",
            "submitted_at",
            "started_at",
            "ended_at",
            "script",
        ]
        read_only_fields = fields

    def get_reason_text(self, obj: Attempt) -> dict[str, str] | None:
        explanation = reasons.explain(obj.reason)
        if explanation is None:
            return None
        return {"what": str(explanation.what), "unblock": str(explanation.unblock)}


class RunSerializer(serializers.ModelSerializer):
    current_attempt = serializers.SerializerMethodField()

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "name",
            "preset",
            "dataset_version",
            "engine",
            "nodes",
            "gpus_per_node",
            "tensor_parallel",
            "pipeline_parallel",
            "data_parallel",
            "zero_stage",
            "offload_optimizer",
            "micro_batch_size",
            "global_batch_size",
            "seq_len",
            "max_steps",
            "loader_workers",
            "tokenizer",
            "time_limit_minutes",
            "partition",
            "account",
            "qos",
            "launcher",
            "resume_policy",
            "max_auto_requeues",
            "auto_requeues",
            "scheduler",
            "state",
            "plan",
            "created_by",
            "created",
            "current_attempt",
        ]
        read_only_fields = fields

    def get_current_attempt(self, obj: TrainingRun) -> dict[str, Any] | None:
        attempts = getattr(obj, "prefetched_attempts", None)
        attempt = attempts[0] if attempts else None
        if attempt is None:
            return None
        return {
            "id": attempt.pk,
            "number": attempt.number,
            "state": attempt.state,
            "job_id": attempt.job_id,
            "reason": attempt.reason,
        }


class RunSpecSerializer(serializers.Serializer):
    """The launch request; field checks here, the layout/memory/shard checks in the planner."""

    name = serializers.CharField(max_length=48, trim_whitespace=False)
    preset = serializers.CharField(max_length=32)
    dataset_version = serializers.IntegerField(min_value=1)
    engine = serializers.CharField(max_length=16, default="deepspeed")
    nodes = serializers.IntegerField(min_value=1, max_value=4096, default=1)
    gpus_per_node = serializers.IntegerField(min_value=0, max_value=64, default=8)
    tensor_parallel = serializers.IntegerField(min_value=1, default=1)
    pipeline_parallel = serializers.IntegerField(min_value=1, default=1)
    data_parallel = serializers.IntegerField(min_value=1, default=8)
    zero_stage = serializers.IntegerField(min_value=0, max_value=3, default=3)
    offload_optimizer = serializers.BooleanField(default=False)
    micro_batch_size = serializers.IntegerField(min_value=1, default=1)
    global_batch_size = serializers.IntegerField(min_value=1, default=8)
    seq_len = serializers.IntegerField(min_value=8, default=2048)
    max_steps = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    loader_workers = serializers.IntegerField(min_value=1, default=1)
    tokenizer = serializers.CharField(
        max_length=500, required=False, allow_blank=True, default="", trim_whitespace=False
    )
    time_limit_minutes = serializers.IntegerField(min_value=5, max_value=60 * 24 * 30, default=1440)
    partition = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    account = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    qos = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    launcher = serializers.ChoiceField(choices=TrainingRun.Launcher.choices, default="direct")
    resume_policy = serializers.ChoiceField(
        choices=TrainingRun.ResumePolicy.choices, default="latest"
    )
    max_auto_requeues = serializers.IntegerField(min_value=0, max_value=100, default=3)
    scheduler = serializers.ChoiceField(
        choices=list(services.SCHEDULER_NAMES), required=False, allow_blank=True, default=""
    )

    def spec(self) -> RunSpec:
        data = dict(self.validated_data)
        data["dataset_version_id"] = data.pop("dataset_version")
        data.setdefault("max_steps", None)
        return RunSpec(**data)


class RunPreviewSerializer(serializers.Serializer):
    """What a launch would do (``RunPlan.as_dict()``), its errors by field and the script."""

    world_size = serializers.IntegerField()
    grad_accum_steps = serializers.IntegerField()
    params_total = serializers.IntegerField()
    largest_layer = serializers.IntegerField()
    gpu_gib = serializers.FloatField(allow_null=True)
    cpu_gib_per_node = serializers.FloatField(allow_null=True)
    warnings = serializers.ListField(child=serializers.CharField())
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    ok = serializers.BooleanField()
    script = serializers.CharField(allow_null=True, help_text="null when the plan has errors")


# cancel, requeue and resume: no body; the run as it is now, or why it cannot.
_RUN_ACTION_SCHEMA = extend_schema(
    request=None,
    responses={
        202: OpenApiResponse(RunSerializer, description="the change is queued"),
        409: OpenApiResponse(description="not in a state that allows it"),
    },
)


class TrainingRunViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Runs, newest first (filters: ``state``, ``owner``, ``dataset``). ``POST`` launches a
    run (the same checks as the form; errors by field); ``preview`` returns the plan and the
    script without creating anything; ``cancel``, ``requeue`` and ``resume`` act on a run."""

    allowed_roles = READ_ROLES
    action_roles = {
        "create": WRITE_ROLES,
        "preview": WRITE_ROLES,
        "cancel": WRITE_ROLES,
        "requeue": WRITE_ROLES,
        "resume": WRITE_ROLES,
    }
    serializer_class = RunSerializer

    def get_queryset(self) -> Any:
        from django.db.models import Prefetch

        qs = TrainingRun.objects.order_by("-created", "-pk").prefetch_related(
            Prefetch(
                "attempts",
                queryset=Attempt.objects.order_by("-number").defer("script"),
                to_attr="prefetched_attempts",
            )
        )
        if self.action == "list":
            form = RunFilterForm(self.request.query_params)
            if not form.is_valid():
                raise ValidationError(form.errors.get_json_data())
            qs = form.filter(qs)
        return qs

    def get_serializer_class(self) -> Any:
        if self.action in ("create", "preview"):
            return RunSpecSerializer
        return RunSerializer

    @extend_schema(
        request=RunSpecSerializer,
        responses={
            201: RunSerializer,
            400: OpenApiResponse(description="the field and planner errors, by field"),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        incoming = RunSpecSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        try:
            run = services.launch_run(incoming.spec(), acting_user=request.user)
        except services.LaunchRefused as exc:
            raise ValidationError(exc.plan.errors) from None
        run = self.get_queryset().get(pk=run.pk)
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=RunSpecSerializer,
        responses={
            200: RunPreviewSerializer,
            400: OpenApiResponse(
                RunPreviewSerializer,
                description="the plan with its errors (a field that does not validate: "
                "the field errors alone)",
            ),
        },
    )
    @action(detail=False, methods=["post"])
    def preview(self, request: Request) -> Response:
        incoming = RunSpecSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        plan, script = services.preview_run(incoming.spec())
        body = plan.as_dict() | {"errors": plan.errors, "ok": plan.ok, "script": script}
        return Response(body, status=status.HTTP_200_OK if plan.ok else 400)

    def _act(self, operation: Any) -> Response:
        run = self.get_object()
        try:
            operation(run, acting_user=self.request.user)
        except services.JobsError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        run = self.get_queryset().get(pk=run.pk)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @_RUN_ACTION_SCHEMA
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        return self._act(services.cancel_run)

    @_RUN_ACTION_SCHEMA
    @action(detail=True, methods=["post"])
    def requeue(self, request: Request, pk: str | None = None) -> Response:
        return self._act(services.requeue_run)

    @_RUN_ACTION_SCHEMA
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return self._act(services.resume_run)


class AttemptViewSet(viewsets.ReadOnlyModelViewSet):
    """Attempts, newest first; ``?run=<id>`` narrows to one run."""

    allowed_roles = READ_ROLES
    serializer_class = AttemptSerializer

    def get_queryset(self) -> Any:
        qs = Attempt.objects.order_by("-created", "-pk")
        run = self.request.query_params.get("run")
        if self.action == "list" and run:
            if not run.isdigit():
                raise ValidationError({"run": ["must be a run id"]})
            qs = qs.filter(run_id=int(run))
        return qs


class PartitionSerializer(serializers.Serializer):
    """A scheduler's ``PartitionInfo``; ``max_time`` in minutes, null when unlimited."""

    name = serializers.CharField()
    state = serializers.CharField()
    nodes = serializers.ListField(child=serializers.CharField())
    default = serializers.BooleanField()
    max_time = serializers.IntegerField(allow_null=True)


class NodeSerializer(serializers.Serializer):
    """A scheduler's ``NodeInfo``; memory in MB, ``state`` Slurm's word with flags after '+'."""

    name = serializers.CharField()
    state = serializers.CharField()
    cpus = serializers.IntegerField()
    alloc_cpus = serializers.IntegerField()
    memory_mb = serializers.IntegerField()
    alloc_memory_mb = serializers.IntegerField()
    gpus = serializers.IntegerField()
    alloc_gpus = serializers.IntegerField()
    partitions = serializers.ListField(child=serializers.CharField())
    reason = serializers.CharField()


# One cluster, not a list of them: the route is a ViewSet's ``list``.
@extend_schema_serializer(many=False)
class ClusterSerializer(serializers.Serializer):
    """A scheduler's ``ClusterInfo`` with its GPU totals."""

    cluster = serializers.CharField()
    partitions = PartitionSerializer(many=True)
    nodes = NodeSerializer(many=True)
    total_gpus = serializers.IntegerField()
    free_gpus = serializers.IntegerField()


class ClusterViewSet(viewsets.ViewSet):
    """Partitions, nodes and GPUs of the configured scheduler (503 when it is unreachable)."""

    allowed_roles = READ_ROLES

    @extend_schema(
        responses={
            200: ClusterSerializer,
            503: OpenApiResponse(description="the scheduler is not answering"),
        }
    )
    def list(self, request: Request) -> Response:
        try:
            info = services.cluster_info()
        except SchedulerError as exc:
            return Response({"detail": exc.message}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response(ClusterSerializer(info).data)


routes = [
    ("jobs/runs", TrainingRunViewSet, "jobs-run"),
    ("jobs/attempts", AttemptViewSet, "jobs-attempt"),
    ("jobs/cluster", ClusterViewSet, "jobs-cluster"),
]

"""Training runs and their attempts (seed 8.3, appendix A).

A :class:`TrainingRun` is what the operator asked for: a preset, a ready dataset version and a
layout of nodes, GPUs and parallel degrees. Each submission of it to the scheduler is an
:class:`Attempt` with its own rendered batch script, idempotency token and scheduler job id.
A resume or an automatic requeue after a node failure is a new attempt of the same run, so the
run's history reads top to bottom. State only moves through ``apps.jobs.services`` by
conditional UPDATE, with an audit event in the same transaction.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

# Names end up in file names, job names and the batch script; the patterns below are the
# only characters that may reach those places (no spaces, quotes, '$', ';', '/', newlines).
RUN_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
SLURM_IDENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

run_name_validator = RegexValidator(
    rf"\A{RUN_NAME_RE.pattern}\Z",
    _("Use 1-48 lower-case letters, digits, '-' or '_', starting with a letter or digit."),
)
slurm_ident_validator = RegexValidator(
    rf"\A{SLURM_IDENT_RE.pattern}\Z",
    _("Use 1-64 letters, digits, '.', '-' or '_', starting with a letter or digit."),
)


class RunState(models.TextChoices):
    """Where a run stands, derived from its current attempt."""

    SUBMITTING = "submitting", _("Submitting")
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    COMPLETED = "completed", _("Completed")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    LOST = "lost", _("Lost")


ACTIVE_RUN_STATES = frozenset({RunState.SUBMITTING, RunState.QUEUED, RunState.RUNNING})


class AttemptState(models.TextChoices):
    """The scheduler's states (``apps.jobs.schedulers.JOB_STATES``) plus three of ours:
    ``CREATED`` (not yet accepted by the scheduler), ``SUBMIT_FAILED`` (the scheduler refused
    it for good) and ``LOST`` (the scheduler no longer knows a job that had not finished)."""

    CREATED = "CREATED", _("Waiting to be submitted")
    PENDING = "PENDING", _("Pending")
    REQUEUED = "REQUEUED", _("Requeued")
    RUNNING = "RUNNING", _("Running")
    COMPLETING = "COMPLETING", _("Completing")
    COMPLETED = "COMPLETED", _("Completed")
    FAILED = "FAILED", _("Failed")
    CANCELLED = "CANCELLED", _("Cancelled")
    TIMEOUT = "TIMEOUT", _("Timed out")
    NODE_FAIL = "NODE_FAIL", _("Node failure")
    PREEMPTED = "PREEMPTED", _("Pre-empted")
    OUT_OF_MEMORY = "OUT_OF_MEMORY", _("Out of memory")
    SUBMIT_FAILED = "SUBMIT_FAILED", _("Refused by the scheduler")
    LOST = "LOST", _("Lost")


FINAL_ATTEMPT_STATES = frozenset(
    {
        AttemptState.COMPLETED,
        AttemptState.FAILED,
        AttemptState.CANCELLED,
        AttemptState.TIMEOUT,
        AttemptState.NODE_FAIL,
        AttemptState.PREEMPTED,
        AttemptState.OUT_OF_MEMORY,
        AttemptState.SUBMIT_FAILED,
        AttemptState.LOST,
    }
)
# Attempts the reconciler polls: accepted by the scheduler and not finished.
POLLED_ATTEMPT_STATES = frozenset(
    {
        AttemptState.PENDING,
        AttemptState.REQUEUED,
        AttemptState.RUNNING,
        AttemptState.COMPLETING,
    }
)


class TrainingRun(models.Model):
    """One training run as the operator specified it; immutable once launched except for
    its state and the requeue counter (a changed spec is a new run)."""

    class Launcher(models.TextChoices):
        DIRECT = "direct", _("One task per GPU, started by the scheduler (recommended)")
        TORCHRUN = "torchrun", _("torchrun per node, rendezvous on the first node")

    class ResumePolicy(models.TextChoices):
        LATEST = "latest", _("Resume from the newest verified checkpoint")
        FRESH = "fresh", _("Always start from scratch")

    name = models.CharField(_("name"), max_length=48, validators=[run_name_validator])
    preset = models.CharField(_("model preset"), max_length=32)
    dataset_version = models.ForeignKey(
        "datasets.DatasetVersion",
        on_delete=models.PROTECT,
        related_name="training_runs",
        verbose_name=_("dataset version"),
    )
    engine = models.CharField(_("engine"), max_length=16, default="deepspeed")
    nodes = models.PositiveIntegerField(
        _("nodes"), default=1, validators=[MinValueValidator(1), MaxValueValidator(4096)]
    )
    # 0 means CPU processes (one per node): trials and CI clusters without GPUs.
    gpus_per_node = models.PositiveIntegerField(
        _("GPUs per node"), default=8, validators=[MaxValueValidator(64)]
    )
    tensor_parallel = models.PositiveIntegerField(
        _("tensor parallel (TP)"), default=1, validators=[MinValueValidator(1)]
    )
    pipeline_parallel = models.PositiveIntegerField(
        _("pipeline parallel (PP)"), default=1, validators=[MinValueValidator(1)]
    )
    data_parallel = models.PositiveIntegerField(
        _("data parallel (DP)"), default=1, validators=[MinValueValidator(1)]
    )
    zero_stage = models.PositiveSmallIntegerField(
        _("ZeRO stage"), default=3, validators=[MaxValueValidator(3)]
    )
    offload_optimizer = models.BooleanField(_("offload optimizer to CPU"), default=False)
    micro_batch_size = models.PositiveIntegerField(
        _("micro batch per GPU"), default=1, validators=[MinValueValidator(1)]
    )
    global_batch_size = models.PositiveIntegerField(
        _("global batch"), default=8, validators=[MinValueValidator(1)]
    )
    seq_len = models.PositiveIntegerField(
        _("sequence length"), default=2048, validators=[MinValueValidator(8)]
    )
    max_steps = models.PositiveIntegerField(
        _("max steps"), null=True, blank=True, help_text=_("Empty: the preset's value.")
    )
    loader_workers = models.PositiveIntegerField(
        _("loader workers per rank"), default=1, validators=[MinValueValidator(1)]
    )
    tokenizer = models.CharField(
        _("tokenizer"),
        max_length=500,
        blank=True,
        help_text=_("Empty: the dataset's own tokenizer.json, else byte-level ids."),
    )
    time_limit_minutes = models.PositiveIntegerField(
        _("time limit (minutes)"),
        default=24 * 60,
        validators=[MinValueValidator(5), MaxValueValidator(60 * 24 * 30)],
    )
    partition = models.CharField(
        _("partition"), max_length=64, blank=True, validators=[slurm_ident_validator]
    )
    account = models.CharField(
        _("account"), max_length=64, blank=True, validators=[slurm_ident_validator]
    )
    qos = models.CharField(_("QoS"), max_length=64, blank=True, validators=[slurm_ident_validator])
    launcher = models.CharField(
        _("launcher"), max_length=16, choices=Launcher.choices, default=Launcher.DIRECT
    )
    resume_policy = models.CharField(
        _("resume policy"),
        max_length=16,
        choices=ResumePolicy.choices,
        default=ResumePolicy.LATEST,
    )
    max_auto_requeues = models.PositiveIntegerField(
        _("automatic requeues allowed"), default=3, validators=[MaxValueValidator(100)]
    )
    auto_requeues = models.PositiveIntegerField(default=0)
    scheduler = models.CharField(_("scheduler"), max_length=16, default="local")
    state = models.CharField(
        max_length=16, choices=RunState.choices, default=RunState.SUBMITTING, db_index=True
    )
    # Someone has the run page open (its WebSocket pings): the reconciler pushes log tails
    # only for watched runs, so 1,000 running jobs do not mean 1,000 file reads per pass.
    watched_until = models.DateTimeField(null=True, blank=True)
    # The memory estimate and warnings the operator saw at launch (GiB per GPU, list of text).
    plan = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created", "-pk"]
        indexes = [models.Index(fields=["state", "-created"], name="jobs_run_state_created")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(auto_requeues__lte=models.F("max_auto_requeues")),
                name="jobs_run_requeues_within_limit",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"

    @property
    def world_size(self) -> int:
        """Ranks in the job: one per GPU, or one per node for CPU trials."""
        return self.nodes * max(self.gpus_per_node, 1)

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_RUN_STATES

    def clean(self) -> None:
        if self.name and not RUN_NAME_RE.fullmatch(self.name):
            raise ValidationError({"name": run_name_validator.message})


class Attempt(models.Model):
    """One submission of a run: its rendered script, token, scheduler job id and state.

    ``token`` goes into the scheduler's job comment, so a retried submission finds the job an
    earlier try created instead of submitting a second (``schedulers.submit_once``).
    """

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    token = models.CharField(max_length=64, unique=True)
    script = models.TextField()
    job_id = models.CharField(max_length=32, blank=True, db_index=True)
    state = models.CharField(
        max_length=16, choices=AttemptState.choices, default=AttemptState.CREATED, db_index=True
    )
    reason = models.CharField(max_length=200, blank=True)  # the scheduler's own word
    error = models.CharField(max_length=500, blank=True)  # why a submit/cancel/requeue failed
    exit_code = models.IntegerField(null=True, blank=True)
    exit_signal = models.IntegerField(null=True, blank=True)
    restarts = models.PositiveIntegerField(default=0)
    nodes_used = models.CharField(max_length=200, blank=True)
    resumed_from_path = models.CharField(max_length=500, blank=True)
    resumed_from_step = models.PositiveIntegerField(null=True, blank=True)
    trigger = models.CharField(max_length=16, default="launch")  # launch | resume | auto
    submitted_as = models.CharField(max_length=64, blank=True)  # the cluster user
    submitted_via = models.CharField(max_length=16, blank=True)  # scheduler adapter name
    submit_tries = models.PositiveIntegerField(default=0)
    # A submitting worker's lease: two workers never look up and submit the same token at once.
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["run", "number"], name="jobs_attempt_number_once"),
        ]
        indexes = [models.Index(fields=["state", "job_id"], name="jobs_attempt_state_job")]

    def __str__(self) -> str:
        return f"attempt {self.number} of run {self.run_id}"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_ATTEMPT_STATES

"""The launch form: a run spec, checked by the same planner the API and services use."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from apps.jobs import services
from apps.jobs.models import RUN_NAME_RE, TrainingRun, run_name_validator, slurm_ident_validator
from apps.jobs.validation import RunPlan, RunSpec, available_presets

ENGINE_CHOICES = [
    ("deepspeed", "DeepSpeed ZeRO"),
    ("fsdp2", "FSDP2"),
    ("ddp", "DDP"),
    ("single", _("Single process")),
]
SCHEDULER_CHOICES = [(name, name) for name in services.SCHEDULER_NAMES]
# Fields that are only checked by the planner and have no field of their own on the form.
_PLAN_ONLY = {"scheduler"}


class RunForm(forms.Form):
    """Every field of :class:`RunSpec`; ``clean`` runs the planner and puts each problem on
    the field it concerns, so the operator sees them all at once."""

    name = forms.CharField(
        label=_("Name"), max_length=48, validators=[run_name_validator], strip=False
    )
    preset = forms.ChoiceField(label=_("Model preset"), choices=())
    dataset_version = forms.ModelChoiceField(
        label=_("Dataset version (ready only)"),
        queryset=TrainingRun.objects.none(),
        help_text=_(
            "Versions holding data of a patient who withdrew consent after their build are "
            "not offered; build a new version."
        ),
    )
    engine = forms.ChoiceField(label=_("Engine"), choices=ENGINE_CHOICES, initial="deepspeed")
    nodes = forms.IntegerField(label=_("Nodes"), min_value=1, max_value=4096, initial=1)
    gpus_per_node = forms.IntegerField(
        label=_("GPUs per node"),
        min_value=0,
        max_value=64,
        initial=8,
        help_text=_("0 runs one CPU process per node (trials only)."),
    )
    tensor_parallel = forms.IntegerField(label=_("TP"), min_value=1, initial=1)
    pipeline_parallel = forms.IntegerField(label=_("PP"), min_value=1, initial=1)
    data_parallel = forms.IntegerField(label=_("DP"), min_value=1, initial=8)
    zero_stage = forms.TypedChoiceField(
        label=_("ZeRO stage"), choices=[(i, i) for i in range(4)], coerce=int, initial=3
    )
    offload_optimizer = forms.BooleanField(label=_("Offload optimizer to CPU"), required=False)
    micro_batch_size = forms.IntegerField(label=_("Micro batch per GPU"), min_value=1, initial=1)
    global_batch_size = forms.IntegerField(label=_("Global batch"), min_value=1, initial=8)
    seq_len = forms.IntegerField(label=_("Sequence length"), min_value=8, initial=2048)
    max_steps = forms.IntegerField(
        label=_("Max steps"), min_value=1, required=False, help_text=_("Empty: the preset's.")
    )
    loader_workers = forms.IntegerField(label=_("Loader workers per rank"), min_value=1, initial=1)
    tokenizer = forms.CharField(
        label=_("Tokenizer"),
        max_length=500,
        required=False,
        strip=False,
        widget=forms.TextInput(attrs={"list": "tokenizer-choices", "class": "mono"}),
        help_text=_(
            "A tokenizer trained on a version (its page, Tokenizers; offered as you type), or "
            "the absolute path of any tokenizer JSON the nodes can read. Empty: the dataset's "
            "own tokenizer.json, else byte-level ids."
        ),
    )
    time_limit_minutes = forms.IntegerField(
        label=_("Time limit (minutes)"), min_value=5, max_value=60 * 24 * 30, initial=24 * 60
    )
    partition = forms.CharField(
        label=_("Partition"), max_length=64, required=False, validators=[slurm_ident_validator]
    )
    account = forms.CharField(
        label=_("Account"), max_length=64, required=False, validators=[slurm_ident_validator]
    )
    qos = forms.CharField(
        label=_("QoS"), max_length=64, required=False, validators=[slurm_ident_validator]
    )
    launcher = forms.ChoiceField(
        label=_("Launcher"), choices=TrainingRun.Launcher.choices, initial="direct"
    )
    resume_policy = forms.ChoiceField(
        label=_("Resume policy"), choices=TrainingRun.ResumePolicy.choices, initial="latest"
    )
    max_auto_requeues = forms.IntegerField(
        label=_("Automatic requeues"), min_value=0, max_value=100, initial=3
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["preset"].choices = [(p, p) for p in available_presets()]
        self.fields["dataset_version"].queryset = services.ready_dataset_versions().order_by(
            "name", "-number"
        )
        self.plan: RunPlan | None = None

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if not RUN_NAME_RE.fullmatch(name):
            raise forms.ValidationError(run_name_validator.message)
        return name

    def spec(self) -> RunSpec:
        """The cleaned data as a RunSpec (call after is_valid())."""
        data = dict(self.cleaned_data)
        version = data.pop("dataset_version")
        data.setdefault("partition", "")
        return RunSpec(
            dataset_version_id=version.pk, scheduler=services.default_scheduler(), **data
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        self.plan = services.check_run(self.spec())
        for key, messages in self.plan.errors.items():
            target = key if key in self.fields else None
            for message in messages:
                self.add_error(target, message)
        return cleaned

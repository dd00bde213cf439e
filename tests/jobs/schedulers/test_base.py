"""The shared contract: validation, state mapping, parsing, idempotent submission, factory."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from apps.jobs.schedulers import (
    JOB_STATES,
    SCHEDULERS,
    JobSpec,
    JobState,
    SchedulerError,
    get_scheduler,
    normalize_state,
    submit_once,
)
from apps.jobs.schedulers import _slurm_common as common
from apps.jobs.schedulers.base import expand_output

GOOD = JobSpec(script="#!/bin/bash\necho hi\n", name="run-1", workdir="/srv/runs/1")

HOSTILE = [
    "; rm -rf ~",
    "$(id)",
    "`id`",
    "a\nb",
    "a\rb",
    "x'y",
    'x"y',
    "../etc",
    "a b",
    "",
    "-n",
    "a|b",
    "a&b",
    "a>b",
    "a\x00b",
    "ü",
]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", ["name", "partition", "account", "qos"])
def test_it_rejects_hostile_names(field, value):
    with pytest.raises(SchedulerError) as err:
        replace(GOOD, **{field: value}).validate()
    assert err.value.permanent
    assert field in err.value.message


@pytest.mark.parametrize(
    "path",
    [
        "relative/dir",
        "/srv/../etc",
        "/srv/runs/..",
        "../../root",
        "/srv/$(id)",
        "/srv/a;b",
        "/srv/a b",
        "/srv/a\nb",
        "/srv/`id`",
        "~/x",
        "",
        "/srv/%j",
    ],
)
def test_it_rejects_hostile_workdirs(path):
    with pytest.raises(SchedulerError, match="workdir"):
        replace(GOOD, workdir=path).validate()


@pytest.mark.parametrize("path", ["/srv/../x-%j.out", "/srv/%(id).out", "/srv/$(id).out", "x.out"])
def test_it_rejects_hostile_output_paths(path):
    with pytest.raises(SchedulerError, match="output"):
        replace(GOOD, output=path).validate()


def test_it_accepts_slurm_output_patterns():
    replace(GOOD, output="/srv/runs/1/%x-%j.out").validate()


@pytest.mark.parametrize(
    "env",
    [
        {"A B": "x"},
        {"1A": "x"},
        {"A;B": "x"},
        {"LD_PRELOAD": "/tmp/evil.so"},
        {"SBATCH_PARTITION": "gpu"},
        {"SLURM_CONF": "/tmp/x"},
        {"BASH_ENV": "/tmp/x"},
        {"BASH_FUNC_ls%%": "() { id; }"},
        {"A": "nul\x00byte"},
    ],
)
def test_it_rejects_dangerous_environment(env):
    with pytest.raises(SchedulerError, match="env"):
        replace(GOOD, env=env).validate()


def test_it_accepts_hostile_values_as_data():
    # Values are data, never parsed by a shell: quotes, $(), newlines are fine.
    replace(GOOD, env={"MSG": "$(id); rm -rf ~ 'q' \"q\"\nnext"}).validate()
    replace(GOOD, comment="medctl:abcdefgh op=alice; rm -rf ~ $(id) 'q'").validate()


@pytest.mark.parametrize("comment", ["a\nb", "x" * 513, "tab\there", "é"])
def test_it_rejects_multiline_or_binary_comments(comment):
    with pytest.raises(SchedulerError, match="comment"):
        replace(GOOD, comment=comment).validate()


@pytest.mark.parametrize(
    ("changes", "label"),
    [
        ({"script": "echo no shebang"}, "script"),
        ({"nodes": 0}, "nodes"),
        ({"nodes": True}, "nodes"),
        ({"ntasks_per_node": 0}, "ntasks_per_node"),
        ({"gpus_per_node": -1}, "gpus_per_node"),
        ({"time_limit": 0}, "time_limit"),
        ({"cpus_per_task": 0}, "cpus_per_task"),
        ({"signal": "USR1@120; id"}, "signal"),
        ({"signal": "$(id)"}, "signal"),
    ],
)
def test_it_rejects_bad_numbers_and_signals(changes, label):
    with pytest.raises(SchedulerError, match=label):
        replace(GOOD, **changes).validate()


def test_signal_parts():
    assert replace(GOOD, signal="USR1@120").signal_parts() == ("USR1", 120, False)
    assert replace(GOOD, signal="B:SIGTERM@60").signal_parts() == ("TERM", 60, True)
    assert GOOD.signal_parts() is None


def test_sbatch_args_keep_every_value_in_one_argv_element():
    spec = replace(
        GOOD,
        partition="debug",
        account="ai-lab",
        qos="normal",
        nodes=2,
        ntasks_per_node=4,
        gpus_per_node=8,
        time_limit=90,
        comment="medctl:abcdefgh; rm -rf ~ $(id)",
        output="/srv/runs/1/%j.out",
        signal="USR1@120",
        requeue=False,
    )
    spec.validate()
    args = common.sbatch_args(spec)
    assert "--comment=medctl:abcdefgh; rm -rf ~ $(id)" in args
    assert "--gpus-per-node=8" in args
    assert "--time=90" in args
    assert "--signal=USR1@120" in args
    assert "--no-requeue" in args
    assert "--export=ALL" in args
    assert all(a.startswith("--") for a in args)


# --- state mapping ---------------------------------------------------------------------

RAW_TO_STATE = {
    "PENDING": "PENDING",
    "PD": "PENDING",
    "RUNNING": "RUNNING",
    "R": "RUNNING",
    "COMPLETING": "COMPLETING",
    "CG": "COMPLETING",
    "COMPLETED": "COMPLETED",
    "CD": "COMPLETED",
    "FAILED": "FAILED",
    "F": "FAILED",
    "CANCELLED": "CANCELLED",
    "CANCELLED by 0": "CANCELLED",
    "CA": "CANCELLED",
    "TIMEOUT": "TIMEOUT",
    "TO": "TIMEOUT",
    "NODE_FAIL": "NODE_FAIL",
    "NF": "NODE_FAIL",
    "PREEMPTED": "PREEMPTED",
    "PR": "PREEMPTED",
    "OUT_OF_MEMORY": "OUT_OF_MEMORY",
    "OOM": "OUT_OF_MEMORY",
    "REQUEUED": "REQUEUED",
    "REQUEUE_HOLD": "REQUEUED",
    "REQUEUE_FED": "REQUEUED",
    "BOOT_FAIL": "NODE_FAIL",
    "DEADLINE": "TIMEOUT",
    "SPECIAL_EXIT": "FAILED",
    "REVOKED": "CANCELLED",
    "CONFIGURING": "RUNNING",
    "RESIZING": "RUNNING",
    "SIGNALING": "COMPLETING",
    "STAGE_OUT": "COMPLETING",
    "SUSPENDED": "PENDING",
    "STOPPED": "PENDING",
    "RESV_DEL_HOLD": "PENDING",
    "running": "RUNNING",
    "RUNNING+COMPLETING": "COMPLETING",
    "SOMETHING_NEW": "PENDING",
    "": "PENDING",
}


@pytest.mark.parametrize(("raw", "state"), RAW_TO_STATE.items())
def test_it_maps_every_slurm_state(raw, state):
    assert normalize_state(raw) == state


def test_it_maps_state_lists_of_newer_slurm():
    assert normalize_state(["RUNNING"]) == "RUNNING"
    assert normalize_state(["PENDING", "REQUEUED"]) == "REQUEUED"
    assert normalize_state(["COMPLETED"]) == "COMPLETED"
    assert normalize_state(None) == "PENDING"


def test_every_target_state_is_reachable():
    assert set(RAW_TO_STATE.values()) == set(JOB_STATES)


# --- parsing ---------------------------------------------------------------------------


def test_it_reads_a_slurm_22_05_job():
    job = {
        "job_id": 7,
        "job_state": "FAILED",
        "name": "run-1",
        "state_reason": "NonZeroExitCode",
        "exit_code": 768,
        "submit_time": 1795801515,
        "start_time": 1795801516,
        "end_time": 1795801520,
        "nodes": "vm",
        "partition": "debug",
        "restart_cnt": 2,
        "comment": "medctl:abcdefgh",
        "standard_output": "/srv/o-%x-%j.out",
        "current_working_directory": "/srv",
        "array_job_id": 0,
        "array_task_id": None,
    }
    state = common.job_from_json(job)
    assert state == JobState(
        job_id="7",
        state="FAILED",
        name="run-1",
        reason="NonZeroExitCode",
        exit_code=3,
        exit_signal=0,
        submit_time=datetime.fromtimestamp(1795801515, tz=UTC),
        start_time=datetime.fromtimestamp(1795801516, tz=UTC),
        end_time=datetime.fromtimestamp(1795801520, tz=UTC),
        nodes="vm",
        partition="debug",
        restarts=2,
        comment="medctl:abcdefgh",
        output="/srv/o-run-1-7.out",
        raw_state="FAILED",
    )
    assert state.is_terminal


def test_it_reads_a_newer_slurm_job_and_hides_estimated_times():
    job = {
        "job_id": 8,
        "job_state": ["RUNNING"],
        "name": "run-2",
        "exit_code": {"status": ["SUCCESS"], "return_code": {"set": True, "number": 0}},
        "start_time": {"set": True, "infinite": False, "number": 1795801516},
        "end_time": {"set": True, "infinite": False, "number": 1827337516},
        "current_working_directory": "/srv",
        "standard_output": "",
    }
    state = common.job_from_json(job)
    assert state.state == "RUNNING"
    assert state.start_time == datetime.fromtimestamp(1795801516, tz=UTC)
    assert state.end_time is None  # the time-limit estimate, not a real end
    assert state.exit_code is None  # not finished yet
    assert state.output == "/srv/slurm-8.out"


def test_it_splits_the_raw_wait_status():
    assert common.exit_status(768) == (3, 0)
    assert common.exit_status(15) == (0, 15)
    assert common.exit_status({"return_code": 2, "signal": {"id": 9}}) == (2, 9)
    assert common.exit_status(None) == (None, None)


def test_it_parses_scontrol_lines_with_spaces_in_values():
    line = (
        "JobId=5 JobName=wrap JobState=FAILED Reason=NonZeroExitCode Restarts=1 "
        "ExitCode=3:0 StartTime=2026-11-27T18:54:39 EndTime=2026-11-27T18:54:40 "
        "NodeList=vm Partition=debug Comment=medctl:abcdefgh operator alice  StdOut=/tmp/s-5.out"
    )
    state = common.job_from_scontrol(common.parse_key_values(line))
    assert (state.job_id, state.state, state.exit_code, state.restarts) == ("5", "FAILED", 3, 1)
    assert state.comment == "medctl:abcdefgh operator alice"
    assert state.output == "/tmp/s-5.out"
    assert state.end_time == datetime(2026, 11, 27, 18, 54, 40, tzinfo=UTC)


@pytest.mark.parametrize(
    ("gres", "count"),
    [("", 0), ("(null)", 0), ("gpu:2", 2), ("gpu:a100:4(S:0-1)", 4), ("gpu:a:1,gpu:b:2", 3)],
)
def test_it_counts_gpus_in_gres(gres, count):
    assert common.gpu_count(gres) == count


@pytest.mark.parametrize(
    ("message", "permanent"),
    [
        ("sbatch: error: Batch job submission failed: Invalid partition name specified", True),
        ("sbatch: error: Invalid generic resource (gres) specification", True),
        ("More processors requested than permitted", True),
        ("Job violates accounting/QOS policy (job submit limit, user's size and/or time)", True),
        ("sbatch: error: Batch job submission failed: Unable to contact slurm controller", False),
        ("squeue: error: Socket timed out on send/recv operation", False),
        ("something nobody has seen", False),
    ],
)
def test_it_classifies_slurm_errors(message, permanent):
    assert common.classify(message) is permanent


def test_expand_output():
    assert expand_output("/o/%x-%j-%%.out", "12", "run") == "/o/run-12-%.out"


# --- idempotent submission and the factory -----------------------------------------------


class FakeScheduler:
    name = "fake"

    def __init__(self) -> None:
        self.submitted: list[JobSpec] = []

    def submit(self, spec):
        self.submitted.append(spec)
        return str(len(self.submitted))

    def find_by_comment(self, token):
        return [
            JobState(job_id=str(i + 1), state="PENDING", comment=s.comment)
            for i, s in enumerate(self.submitted)
            if token in s.comment
        ]


def test_submit_once_never_submits_twice():
    fake = FakeScheduler()
    spec = replace(GOOD, comment="medctl:run-1-attempt-1 op=alice")
    first = submit_once(fake, spec, "medctl:run-1-attempt-1")
    again = submit_once(fake, spec, "medctl:run-1-attempt-1")
    assert first == again == "1"
    assert len(fake.submitted) == 1


def test_submit_once_wants_the_token_in_the_comment():
    with pytest.raises(SchedulerError, match="comment"):
        submit_once(FakeScheduler(), GOOD, "medctl:run-1-attempt-1")


def test_the_factory_knows_every_adapter_by_name():
    assert set(SCHEDULERS) == {"local", "slurm", "slurmrestd", "pyslurm"}
    with pytest.raises(SchedulerError, match="unknown scheduler") as err:
        get_scheduler("pbs")
    assert err.value.permanent


def test_the_factory_refuses_unknown_options(tmp_path):
    with pytest.raises(SchedulerError, match="unknown option"):
        get_scheduler("local", {"state_dir": str(tmp_path), "stat_dir": "typo"})


def test_pyslurm_explains_why_it_cannot_run_here():
    try:
        import pyslurm  # noqa: F401
    except Exception:
        with pytest.raises(SchedulerError, match="pyslurm") as err:
            get_scheduler("pyslurm")
        assert err.value.permanent
        assert "slurmrestd" in err.value.message
    else:
        pytest.skip("pyslurm is importable here")


def test_the_package_imports_no_django():
    import subprocess
    import sys

    code = (
        "import sys, apps.jobs.schedulers as s\n"
        "from apps.jobs.schedulers import local, slurm, slurmrestd, pyslurm_adapter\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'django'], 'django imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_repo_root()))


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[3]

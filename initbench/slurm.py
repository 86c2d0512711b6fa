"""The SLURM job a process runs in, from SLURM's environment and `scontrol`: the id a run is tagged
with, and what a stop signal meant (SLURM sends SIGTERM both to a job it cancels and to one past its
time limit)."""

import datetime
import functools
import os
import subprocess
import time

SCONTROL_TIMEOUT_S = 5.0


def job_id() -> str | None:
    """This job as sacct and scancel name it: JOBID, or ARRAYJOBID_TASK for a task of an array (what
    submitit makes of a sweep); None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def seconds(duration: str) -> int | None:
    """SLURM's [DAYS-][HH:]MM:SS as seconds; None for UNLIMITED or anything else."""
    days, _, clock = duration.rpartition("-")
    parts = clock.split(":")
    if not (days.isdigit() or not days) or not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    hours, minutes, secs = ([0] * (3 - len(parts)) + [int(p) for p in parts])
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs


@functools.lru_cache(maxsize=1)
def time_limit() -> tuple[float, int] | None:
    """(start, limit): this SLURM job's start (Unix time) and time limit (s) from `scontrol show job`,
    read once, before training (a job step that SLURM is stopping got empty answers from scontrol);
    None outside SLURM, for an unlimited job, or where scontrol does not answer in SCONTROL_TIMEOUT_S."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                               timeout=SCONTROL_TIMEOUT_S).stdout
        fields = dict(field.split("=", 1) for field in shown.split() if "=" in field)
        start = datetime.datetime.fromisoformat(fields["StartTime"]).timestamp()  # the node's local time
    except (OSError, subprocess.TimeoutExpired, KeyError, ValueError):
        return None
    limit = seconds(fields.get("TimeLimit", ""))
    return (start, limit) if limit is not None else None


def stop_reason(signal_name: str) -> str | None:
    """Under SLURM, what a stop signal means for this job: SIGUSR2 is submitit's warning before the time
    limit (or a preemption); SIGTERM once the job has run its time limit is the limit itself (before it,
    a cancellation). None otherwise, outside SLURM, or where time_limit() is unknown."""
    known = time_limit()
    if known is None or signal_name not in ("SIGUSR2", "SIGTERM"):
        return None
    start, limit = known
    ran, job = time.time() - start, job_id()
    shown = f"time limit {_clock(limit)} (ran {_clock(ran)})"
    if signal_name == "SIGUSR2":
        return (f"timed out: SLURM's warning before job {job}'s {shown}; sent hydra.launcher.signal_delay_s "
                "before the limit, or at a preemption; raise hydra.launcher.timeout_min")
    if ran < limit:
        return None  # cancelled (scancel), or stopped by a person
    return f"timed out: SLURM job {job} reached its {shown}; raise hydra.launcher.timeout_min"


def _clock(secs: float) -> str:
    secs = int(secs)
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"

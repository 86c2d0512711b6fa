"""initbench.slurm without a cluster: the job id from SLURM's environment, and SLURM's durations."""

import time

import pytest

from initbench import slurm


@pytest.mark.parametrize("env,expected", [({}, None), ({"SLURM_JOB_ID": "42"}, "42"),
                                          ({"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "40",
                                            "SLURM_ARRAY_TASK_ID": "3"}, "40_3")])
def test_the_job_id_is_what_sacct_and_scancel_take(monkeypatch, env, expected):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert slurm.job_id() == expected


@pytest.mark.parametrize("text,expected", [("00:01:00", 60), ("01:00", 60), ("1-02:03:04", 93784),
                                           ("UNLIMITED", None), ("Partition_Limit", None), ("", None)])
def test_slurm_durations_read_as_seconds(text, expected):
    assert slurm.seconds(text) == expected


def test_outside_slurm_a_stop_signal_means_nothing_more(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    slurm.time_limit.cache_clear()
    assert slurm.stop_reason("SIGTERM") is None and slurm.stop_reason("SIGUSR2") is None


def test_a_sigterm_means_the_time_limit_only_once_the_job_has_run_it(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setattr(slurm, "time_limit", lambda: (time.time() - 61, 60))
    assert slurm.stop_reason("SIGTERM") == ("timed out: SLURM job 7 reached its time limit 00:01:00 (ran 00:01:01); "
                                            "raise hydra.launcher.timeout_min")
    monkeypatch.setattr(slurm, "time_limit", lambda: (time.time() - 30, 60))
    assert slurm.stop_reason("SIGTERM") is None  # a cancellation
    assert slurm.stop_reason("SIGUSR2").startswith("timed out: SLURM's warning before job 7's time limit 00:01:00")

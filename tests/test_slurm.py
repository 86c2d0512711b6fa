"""hydra/launcher=submitit_slurm on a real one-node SLURM cluster (tests/slurm_cluster.py: munged,
MariaDB, slurmdbd, slurmctld and slurmd, started once for the module and stopped by their PIDs), the
jobs logging to an `mlflow server` on 127.0.0.1: each job of a sweep is a SLURM job, a job cancelled
with scancel ends KILLED and the same sweep again runs exactly it, a job past its time limit says so."""

import re
from collections.abc import Iterator

import pytest

from initbench.analysis.cli import main as analyze
from initbench.testing import cli, history_steps, mlflow_server, parent_runs_in, runs_in

from .slurm_cluster import PARTITION, Cluster, missing, slurm_cluster
from .support import Job, needs_plugin, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(missing() is not None, reason=str(missing())),
              needs_plugin("submitit")]

LAUNCHER = ["-m", "hydra/launcher=submitit_slurm", f"hydra.launcher.partition={PARTITION}", "model=mlp",
            "dataset.train_size=128", "trainer.progress=false"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with slurm_cluster() as started:
        yield started


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-slurm")) as uri:
        yield uri


def test_each_job_of_a_sweep_is_a_slurm_job_and_the_analysis_covers_them_all(cluster, server, tmp_path, capsys):
    done = cli(*LAUNCHER, "hydra.launcher.timeout_min=10", "seed=0,1,2,3", "trainer.epochs=1",
               f"tracking.uri={server}", "tracking.experiment=slurm", cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_in(server, "slurm")
    assert sorted(r.info.run_name for r in runs) == [f"mlp-default-digits-s{seed}" for seed in range(4)]
    assert {r.data.tags["initbench.status"] for r in runs} == {"finished"}
    jobs = {r.data.tags["initbench.slurm_job"] for r in runs}  # ARRAYJOB_TASK: one array of 4 tasks
    assert len(jobs) == 4 and len({job.split("_")[0] for job in jobs}) == 1
    # submitit returns once each job wrote its result; SLURM ends the job a moment later
    wait_until("sacct to show the 4 jobs COMPLETED", lambda: {cluster.states().get(j) for j in jobs} == {"COMPLETED"},
               timeout=60, poll=1)
    [parent] = parent_runs_in(server, "slurm")
    assert parent.info.status == "FINISHED"
    assert analyze(["--tracking-uri", server, "--experiment", "slurm", "--out", str(tmp_path / "analysis")]) == 0
    assert "| 1 | default | 4 | 0 | 0 |" in capsys.readouterr().out


def test_a_job_cancelled_with_scancel_ends_killed_and_the_sweep_again_runs_exactly_it(cluster, server, tmp_path):
    # Two jobs; the one of seed 1 is cancelled once it has flushed an epoch, the other finishes.
    sweep = [*LAUNCHER, "hydra.launcher.timeout_min=10", "seed=0,1", "trainer.epochs=30", f"tracking.uri={server}",
             "tracking.experiment=scancel"]

    def trained_run_of_seed_1():
        found = [r for r in runs_in(server, "scancel") if r.data.params["seed"] == "1"]
        return found[0] if found and history_steps(server, found[0].info.run_id, "test/acc") else None

    job = Job(sweep, tmp_path, name="sweep")
    try:
        target = wait_until("an epoch of the job of seed 1", trained_run_of_seed_1, job=job, timeout=300, poll=0.5)
        slurm_id = target.data.tags["initbench.slurm_job"]
        cluster.command("scancel", slurm_id)
        assert job.proc.wait(300) != 0, job.output()[-3000:]  # the sweep says a job did not finish
    finally:
        job.stop()
    runs = {r.info.run_id: r for r in runs_in(server, "scancel")}
    assert runs[target.info.run_id].info.status == "KILLED", job.output()[-3000:]
    assert runs[target.info.run_id].data.tags["initbench.status"] == "killed"
    assert sorted(r.data.tags["initbench.status"] for r in runs.values()) == ["finished", "killed"]
    cancelled = lambda: cluster.states().get(slurm_id, "").startswith("CANCELLED")  # noqa: E731  "CANCELLED by 0"
    wait_until("sacct to record the cancellation", cancelled, timeout=60, poll=1)

    again = cli(*sweep, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    new = [r for r in runs_in(server, "scancel") if r.info.run_id not in runs]
    assert [(r.info.run_name, r.data.tags["initbench.status"]) for r in new] == [("mlp-default-digits-s1", "finished")]


def test_a_job_at_or_near_its_time_limit_is_stopped_and_recorded_as_timed_out(cluster, server, tmp_path):
    # Two sweeps of one long job at once. (a) The warning: SLURM sends SIGUSR2 signal_delay_s before the
    # limit, give or take its one-minute resolution; here by hand. (b) No warning (signal_delay_s=0):
    # SLURM's SIGTERM at the limit of 1 min, 60-90 s after the start (its resolution).
    def sweep(experiment: str, *launcher: str) -> Job:
        (tmp_path / experiment).mkdir()
        return Job([*LAUNCHER, *launcher, "seed=0", "trainer.epochs=100000", f"tracking.uri={server}",
                    f"tracking.experiment={experiment}"], tmp_path / experiment, name="sweep")

    def trained_run(experiment: str):
        runs = runs_in(server, experiment)
        return runs[0] if runs and history_steps(server, runs[0].info.run_id, "test/acc") else None

    at_limit = sweep("limit", "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=0")
    warned = sweep("warning", "hydra.launcher.timeout_min=10")
    try:
        run = wait_until("an epoch of the job to warn", lambda: trained_run("warning"), job=warned, timeout=300,
                         poll=1)
        cluster.command("scancel", "--signal=USR2", run.data.tags["initbench.slurm_job"])
        assert warned.proc.wait(300) != 0, warned.output()[-3000:]
        assert at_limit.proc.wait(300) != 0, at_limit.output()[-3000:]
    finally:
        warned.stop()
        at_limit.stop()
    errors = {}
    for experiment in ("warning", "limit"):
        [run] = runs_in(server, experiment)
        assert (run.info.status, run.data.tags["initbench.status"]) == ("KILLED", "killed")
        errors[experiment] = run.data.tags["initbench.error"]
    assert "stopped by SIGUSR2; timed out: SLURM's warning before job" in errors["warning"], errors
    assert "time limit 00:10:00" in errors["warning"] and "raise hydra.launcher.timeout_min" in errors["warning"]
    timed_out = r"stopped by SIGTERM; timed out: SLURM job \d+ reached its time limit 00:01:00 \(ran 00:01"
    assert re.search(timed_out, errors["limit"]), errors
    job_at_limit = runs_in(server, "limit")[0].data.tags["initbench.slurm_job"]
    wait_until("sacct to show TIMEOUT", lambda: cluster.states().get(job_at_limit) == "TIMEOUT", timeout=60, poll=1)

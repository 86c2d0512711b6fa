"""Real services and scale-out: a live `mlflow server`, unreachable tracking URIs, resumable sweeps (a job
killed with SIGKILL included), and Hydra's joblib and submitit launchers.

One tracking server serves the module: `mlflow server` on 127.0.0.1 and a free port, SQLite backend
store and a local artifact root under the module's tmp folder, stopped by its PID at the end. Each
test logs to its own experiment (the helpers are in initbench/testing.py).
"""

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, open_dict

from initbench import run as run_module
from initbench.devices import resolve_device
from initbench.run import run
from initbench.testing import cli, free_port, history_steps, initbench_env, mlflow_server, runs_in
from initbench.tracking import Tracker, TrackingUnavailable, check_reachable

from .conftest import compose_config
from .support import TEST_CONF, TINY, Job, needs_plugin, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


def tiny_config(uri: str, experiment: str, overrides: list[str] = ()):
    cfg = compose_config(["model=mlp", "dataset.train_size=128", *overrides])
    with open_dict(cfg):
        cfg.tracking.uri = uri
        cfg.tracking.experiment = experiment
    return cfg


# --- the tracking server and unreachable URIs ---------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket on 127.0.0.1 that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("kind,reason", [("closed", "Connection refused"), ("silent", "timed out")])
def test_unreachable_tracking_uri_fails_fast_before_training(kind, reason, request, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}" if kind == "closed" else request.getfixturevalue("silent_server")
    monkeypatch.setattr(run_module, "prepare", lambda *a, **k: pytest.fail("training started"))
    cfg = tiny_config(uri, "unreachable")
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as err:
        run(cfg)
    assert time.monotonic() - start < 10
    assert uri in str(err.value) and reason in str(err.value)


def test_rerun_skips_a_finished_config_unless_forced(server):
    cfg = tiny_config(server, "rerun", ["seed=5"])
    assert run(cfg).status == "finished"
    assert run(cfg) is None  # the same config again: skipped
    with open_dict(cfg):
        cfg.tracking.rerun = True
    assert run(cfg).status == "finished"
    [newest, first] = sorted(runs_in(server, "rerun"), key=lambda r: -r.info.start_time)
    assert newest.data.tags["initbench.config_hash"] == first.data.tags["initbench.config_hash"]
    artifacts = {a.path for a in MlflowClient(server).list_artifacts(first.info.run_id)}
    assert {"config.yaml", "init_report.csv"} <= artifacts  # stored under the server's artifact root


# --- resumable sweeps -----------------------------------------------------------------------------------


def lost_and_duplicated(uri: str, runs: list, epochs: int, steps_per_epoch: int) -> tuple[int, int, int, int]:
    """(expected, found, lost, duplicated) metric points of `runs`, runs of one config with other seeds:
    train/loss (every step) and train/acc, test/loss, test/acc (every epoch) against what the config implies,
    every other key (gradient norms, the probe, validation) against the steps it has in any of the runs."""
    core = {"train/loss": list(range(1, epochs * steps_per_epoch + 1))}
    core.update({key: list(range(1, epochs + 1)) for key in ("train/acc", "test/loss", "test/acc")})
    histories = [{key: history_steps(uri, r.info.run_id, key) for key in r.data.metrics} for r in runs]
    expected = found = lost = duplicated = 0
    for key in set(core).union(*histories):
        steps = core.get(key) or sorted(set().union(*(h.get(key, []) for h in histories)))
        for history in histories:
            logged = history.get(key, [])
            expected, found = expected + len(steps), found + len(logged)
            duplicated += len(logged) - len(set(logged))
            lost += len(set(steps) - set(logged))
    return expected, found, lost, duplicated


@pytest.mark.stress(only_when_selected=True)
@needs_plugin("joblib")
def test_parallel_jobs_on_one_server_lose_no_metric_point(server, tmp_path, stress_size, stress_report):
    size = stress_size
    start = time.monotonic()
    done = cli("-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={size.jobs}", "model=mlp",
               f"seed={','.join(map(str, range(size.jobs)))}", f"dataset.train_size={size.train_size}",
               f"trainer.epochs={size.epochs}", "trainer.progress=false", f"tracking.uri={server}",
               "tracking.experiment=parallel", cwd=tmp_path, timeout=1800)
    wall = time.monotonic() - start
    runs = runs_in(server, "parallel")
    finished = sum(r.info.status == "FINISHED" and r.data.tags["initbench.status"] == "finished" for r in runs)
    expected, found, lost, duplicated = lost_and_duplicated(server, runs, size.epochs, size.steps_per_epoch())
    stress_report(f"{size.jobs} jobs in parallel (joblib), one server, {size.epochs} epochs x "
                  f"{size.steps_per_epoch()} steps each",
                  f"exit {done.returncode} after {wall:.0f} s; {len(runs)} runs, {finished} finished; {found} of "
                  f"{expected} metric points present, {lost} lost, {duplicated} duplicated")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(runs) == len({r.info.run_name for r in runs}) == finished == size.jobs
    assert (lost, duplicated, found) == (0, 0, expected)


@pytest.mark.slow
@pytest.mark.stress
@needs_plugin("joblib")
def test_joblib_sweep_on_the_server_then_resume_runs_only_the_failed_job(server, tmp_path, capsys, stress_report):
    sweep = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.searchpath=[file://{TEST_CONF}]",
             "model=exploding", "seed=0,1,2", *TINY, f"tracking.uri={server}", "tracking.experiment=resume"]
    first = cli(*sweep, cwd=tmp_path)
    assert first.returncode != 0, first.stderr[-3000:]  # seed=1 raised: the sweep says a job failed
    assert "boom" in first.stderr, first.stderr[-3000:]
    runs = runs_in(server, "resume")
    status = {r.info.run_name: (r.data.tags["initbench.status"], r.info.status) for r in runs}
    assert status == {"exploding-default-digits-s0": ("finished", "FINISHED"),
                      "exploding-default-digits-s1": ("failed", "FAILED"),
                      "exploding-default-digits-s2": ("finished", "FINISHED")}
    assert len({r.data.tags["initbench.sweep"] for r in runs}) == 1  # one id across worker processes
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert "boom: ExplodingNet was told to fail" in failed.data.tags["initbench.error"]
    for r in runs:
        if r.info.status == "FINISHED":
            assert history_steps(server, r.info.run_id, "train/loss") == [1]  # 128 examples, batch 128
    # each worker ran as its own Hydra job number: what trainer.device=auto turns into distinct GPUs
    nums = {OmegaConf.load(p).hydra.job.num for p in tmp_path.glob("multirun/*/*/*/.hydra/hydra.yaml")}
    assert nums == {0, 1, 2}

    # resume: the same jobs again (in this process, to save the start-up of another sweep)
    for seed in (0, 1, 2):
        cfg = compose_config([f"hydra.searchpath=[file://{TEST_CONF}]", "model=exploding", f"seed={seed}",
                              "dataset.train_size=128"])
        with open_dict(cfg):
            cfg.tracking.uri, cfg.tracking.experiment = server, "resume"
        if seed == 1:
            with pytest.raises(RuntimeError, match="boom"):
                run(cfg)
        else:
            assert run(cfg) is None
            assert f"skip exploding-default-digits-s{seed}: run" in capsys.readouterr().out
    new = [r for r in runs_in(server, "resume") if r.info.run_id not in {old.info.run_id for old in runs}]
    stress_report("a joblib sweep of 3 on the server, the job of seed 1 raises; the same jobs again",
                  f"exit {first.returncode}; runs {sorted(status.values())}; the failed run's error "
                  f"`{failed.data.tags['initbench.error'].strip().splitlines()[-1][:60]}`; "
                  f"again: new run(s) {[r.info.run_name for r in new]}")
    assert [r.info.run_name for r in new] == ["exploding-default-digits-s1"]  # only the failed job ran


@pytest.mark.slow
@pytest.mark.stress
def test_sigkilled_job_is_marked_killed_and_its_rerun_completes(server, tmp_path, stress_size, stress_report):
    epochs, per_epoch = stress_size.kill_epochs, stress_size.steps_per_epoch()  # flushed once per epoch
    args = ["model=mlp", f"dataset.train_size={stress_size.train_size}", f"trainer.epochs={epochs}",
            "trainer.progress=false", "seed=3", f"tracking.uri={server}", "tracking.experiment=sigkill"]

    def flushed() -> int:
        runs = runs_in(server, "sigkill")
        return len(history_steps(server, runs[0].info.run_id, "test/acc")) if runs else 0

    job = Job(args, tmp_path)
    try:  # kill it once it has flushed kill_after epochs to the server
        wait_until(f"{stress_size.kill_after} flushed epochs", lambda: flushed() >= stress_size.kill_after, job=job)
        os.kill(job.pid, signal.SIGKILL)
    finally:
        job.stop()
    [dead] = runs_in(server, "sigkill")
    assert dead.info.status == "RUNNING"

    cfg = compose_config([a for a in args if not a.startswith("tracking.")])
    with open_dict(cfg):  # the same config as the killed job (compose_config shrinks epochs)
        cfg.trainer.epochs = epochs
        cfg.tracking.uri, cfg.tracking.experiment = server, "sigkill"
    assert run(cfg).status == "finished"

    runs = {r.info.run_id: r for r in runs_in(server, "sigkill")}
    old = runs[dead.info.run_id]
    [new] = [r for rid, r in runs.items() if rid != dead.info.run_id]
    new_loss = history_steps(server, new.info.run_id, "train/loss")
    kept = history_steps(server, dead.info.run_id, "train/loss")  # what the dead run flushed before it died
    epochs_kept = len(history_steps(server, dead.info.run_id, "test/acc"))
    stress_report(f"a {epochs}-epoch job on the server killed with SIGKILL after {stress_size.kill_after} "
                  "flushed epochs, then run again",
                  f"killed after {epochs_kept} epochs; the re-run marks the stale run {old.info.status} "
                  f"({old.data.tags['initbench.status']}) and its new run is {new.info.status} ({len(new_loss)} "
                  f"of {epochs * per_epoch} train/loss points); the dead run keeps the {len(kept)} points it had "
                  "flushed")
    assert old.info.status == "KILLED" and old.data.tags["initbench.status"] == "killed"
    assert new.info.status == "FINISHED" and new.data.tags["initbench.status"] == "finished"
    assert new_loss == list(range(1, epochs * per_epoch + 1))
    assert stress_size.kill_after <= epochs_kept < epochs  # whole epochs, never a partial one
    assert kept == list(range(1, epochs_kept * per_epoch + 1))


def test_jobs_creating_the_experiment_at_once_both_run(server):
    # The parallel jobs of a sweep into a new experiment: job A finds no experiment, job B creates it,
    # then A tries to create it too.
    a, b = Tracker(server, "race"), Tracker(server, "race")
    lookup = a.client.get_experiment_by_name

    def b_creates_it_meanwhile(name):
        found = lookup(name)
        if found is None:
            b.start("b", {}, {})
        return found

    a.client.get_experiment_by_name = b_creates_it_meanwhile
    a.start("a", {}, {})
    assert sorted(r.info.run_name for r in runs_in(server, "race")) == ["a", "b"]


# --- launchers ------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_plugin("submitit")
def test_submitit_local_sweep_logs_one_run_per_job(server, tmp_path):
    done = cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model=mlp",
               "seed=0,1", *TINY, f"tracking.uri={server}", "tracking.experiment=submitit", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_in(server, "submitit")
    assert sorted(r.info.run_name for r in runs) == ["mlp-default-digits-s0", "mlp-default-digits-s1"]
    assert {r.data.tags["initbench.status"] for r in runs} == {"finished"}
    assert len({r.data.tags["initbench.sweep"] for r in runs}) == 1
    assert list(tmp_path.glob("multirun/*/*/.submitit/*/*_log.out"))  # each job ran under submitit


def test_auto_device_spreads_parallel_jobs_over_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [str(resolve_device("auto", num)) for num in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


@pytest.mark.gpu
@needs_plugin("joblib")
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a machine with at least 2 CUDA devices")
def test_joblib_jobs_get_distinct_gpus(server, tmp_path):
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=mlp", "seed=0,1", *TINY,
            "trainer.device=auto", f"tracking.uri={server}", "tracking.experiment=gpus"]
    done = subprocess.run([sys.executable, "-m", "initbench", *args], cwd=tmp_path, env=initbench_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    devices = {r.data.tags.get("initbench.torch_device") for r in runs_in(server, "gpus")}
    assert devices == {"cuda:0", "cuda:1"}, "tag initbench.torch_device = str(device) is set by run_tags"


@pytest.mark.slow
@needs_plugin("joblib")
def test_parallel_jobs_onto_a_new_sqlite_store_do_not_race(tmp_path):
    # The sweep opens the store once before its workers start (initbench.callbacks.SweepId).
    done = cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=mlp", "seed=0,1", *TINY,
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}", "initbench")
    assert sorted(r.info.run_name for r in runs) == ["mlp-default-digits-s0", "mlp-default-digits-s1"]


@pytest.mark.parametrize("status,reachable", [(401, True), (403, True), (503, False)])
def test_an_auth_proxy_counts_as_reachable_and_a_server_error_does_not(status, reachable):
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    proxy = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        if reachable:
            check_reachable(uri)
        else:
            with pytest.raises(TrackingUnavailable, match=f"{uri} answered HTTP {status}"):
                check_reachable(uri)
    finally:
        proxy.shutdown()
        proxy.server_close()

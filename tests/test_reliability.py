"""Edges that gave silently wrong results or broke a store: concurrent store creation, half-made and
foreign stores, live runs, interrupts, sweep ids across resumes, the config hash, credentials."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from initbench.analysis import analyze
from initbench.callbacks import scrub_credentials, sweep_id
from initbench.run import already_done, computed_config, config_hash, run
from initbench.store import TrackingUnavailable, check_reachable, clean_uri, redact
from initbench.testing import (
    QUIET,
    cli,
    free_port,
    history_steps,
    initbench_command,
    initbench_env,
    parent_runs_in,
    runs_in,
)
from initbench.tracking import MAX_ERROR_CHARS, PROCESS_TAG, Tracker, process_token

from .conftest import compose_config

# --- the SQLite store ------------------------------------------------------------------------------------

CREATE_AND_RUN = """
import sys
from initbench.tracking import Tracker
tracker = Tracker(sys.argv[1], "race")
tracker.start(sys.argv[2], {}, {})
tracker.log_points([("x", 1.0, 1)])
tracker.end("finished")
"""


@pytest.mark.parametrize("attempt", range(2))
def test_two_processes_creating_one_new_store_both_log_their_run(tmp_path, attempt):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, **QUIET}
    procs = [subprocess.Popen([sys.executable, "-c", CREATE_AND_RUN, uri, f"job{i}"], env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert sorted(r.info.run_name for r in runs_in(uri, "race")) == ["job0", "job1"]


@pytest.mark.parametrize("make,expected", [
    (lambda path: path.write_text("not a database at all, just text\n" * 4), "not an SQLite database"),
    (lambda path: _half_created(path), "half-created"),
])
def test_a_broken_store_is_named_with_the_way_out(tmp_path, make, expected):
    path = tmp_path / "mlflow.db"
    make(path)
    with pytest.raises(TrackingUnavailable) as err:
        Tracker(f"sqlite:///{path}", "initbench").ensure_experiment()
    message = str(err.value)
    assert str(path) in message and expected in message and f"delete {path}" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1


def _half_created(path) -> None:
    """What a creation stopped half-way leaves: some tables, an alembic work table, no finished version."""
    with sqlite3.connect(path) as db:
        db.execute("create table experiments (experiment_id integer primary key, name text)")
        db.execute("create table _alembic_tmp_experiments (experiment_id integer primary key)")


# --- live and dead runs ------------------------------------------------------------------------------------


def test_a_live_run_of_the_same_config_is_skipped_and_a_dead_one_marked_killed(tmp_path, capsys):
    cfg = compose_config(["model=mlp", "dataset.train_size=128"], tmp_path)
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        digest = config_hash(computed_config(cfg, torch.device("cpu")))
        tracker.start("elsewhere", {}, {"initbench.config_hash": digest})
        live_id = tracker.run_id
        tracker.client.set_tag(live_id, PROCESS_TAG, process_token(other.pid))  # as if `other` trained it
        reason = already_done(cfg, tracker)
        assert reason and f"run {live_id} of this config is running now" in reason
        assert f"its process {other.pid} on this host is alive" in reason
        assert tracker.client.get_run(live_id).info.status == "RUNNING"  # not touched
    finally:
        other.kill()
        other.wait()
    assert already_done(cfg, tracker) is None  # its process is gone: dead, so the job runs again
    dead = tracker.client.get_run(live_id)
    assert dead.info.status == "KILLED" and dead.data.tags["initbench.status"] == "killed"
    assert f"its process {other.pid} on this host is gone" in capsys.readouterr().out


def _wait_for_first_flush(uri: str, experiment: str, proc, log) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the job ended early:\n{log.read_text()[-3000:]}"
        runs = runs_in(uri, experiment)
        if runs and history_steps(uri, runs[0].info.run_id, "test/acc"):
            return runs[0].info.run_id
        time.sleep(0.2)
    raise AssertionError("the job flushed nothing in 180 s")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_ends_killed_at_once_with_what_it_flushed(tmp_path, sig):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        job = subprocess.Popen(initbench_command("model=mlp", "dataset.train_size=256", "trainer.epochs=500",
                                                 "trainer.progress=false"),
                               cwd=tmp_path, env=initbench_env(tmp_path), stdout=out, stderr=subprocess.STDOUT)
    try:
        run_id = _wait_for_first_flush(uri, "initbench", job, log)
        os.kill(job.pid, sig)
        job.wait(60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    [killed] = runs_in(uri, "initbench")
    assert killed.info.run_id == run_id
    assert killed.info.status == "KILLED" and killed.data.tags["initbench.status"] == "killed", log.read_text()
    epochs = len(history_steps(uri, run_id, "test/acc"))
    assert 1 <= epochs < 500
    assert history_steps(uri, run_id, "train/loss") == list(range(1, 2 * epochs + 1))  # whole epochs kept


# --- what a resume compares: the computation, and the sweep ------------------------------------------------


def test_config_hash_counts_what_is_computed_only():
    base = compose_config(["model=mlp"])

    def digest(*overrides):
        cfg = compose_config(["model=mlp", *overrides])
        return config_hash(computed_config(cfg, torch.device("cpu")))

    same = digest()
    assert digest("trainer.progress=true") == same  # a progress bar computes nothing
    assert digest("trainer.device=auto") == digest("trainer.device=cpu")  # how the device was spelled
    assert digest("trainer.compile=auto") == digest("trainer.compile=false")  # auto compiles on CUDA only
    for changed in ("trainer.epochs=2", "trainer.batch_size=64", "optimizer.lr=0.1", "seed=1", "init=kaiming",
                    "model.depth=4", "dataset.train_size=100", "trainer.precision=bf16"):
        assert digest(changed) != same, changed
    assert base.tracking.rerun is False and digest("tracking.rerun=true", "tracking.experiment=x") == same


def _changed(value):
    """Another value of the same kind (what an override could set instead)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[-1] if value else 1]
    return 1  # None


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    leaves = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            leaves += _leaves(value, f"{prefix}{key}.")
        else:
            leaves.append((f"{prefix}{key}", value))
    return leaves


# trainer.device and trainer.compile are hashed as what they resolve to (above); trainer.progress is a bar
SHOWN_NOT_COMPUTED = ("paths.", "tracking.", "trainer.progress", "trainer.device", "trainer.compile")


@pytest.mark.parametrize("group", ["model=mlp", "model=lenet", "model=transformer", "model=lstm", "init=lsuv",
                                   "optimizer=adam", "dataset=mnist1d", "init=critical"])
def test_every_key_that_changes_the_computation_changes_the_config_hash(group):
    """A resumed sweep skips a job only when its exact computation has run: every key of every group but
    where-things-go and how-they-show gives a new hash, so a changed config trains again."""
    cfg = compose_config([group])
    same = config_hash(computed_config(cfg, torch.device("cpu")))
    keys = [(k, v) for k, v in _leaves(OmegaConf.to_container(cfg, resolve=False))
            if not k.startswith(SHOWN_NOT_COMPUTED)]
    assert len(keys) > 10
    for key, value in keys:
        changed = cfg.copy()
        OmegaConf.update(changed, key, _changed(value), merge=False)
        assert config_hash(computed_config(changed, torch.device("cpu"))) != same, key


def _sweep(overrides: list[str], experiment: str = "initbench", params=None):
    return OmegaConf.create({"tracking": {"experiment": experiment, "uri": "sqlite:///mlflow.db"},
                             "hydra": {"overrides": {"task": overrides}, "sweeper": {"params": params},
                                       "job": {"override_dirname": ",".join(overrides)}}})


def test_the_same_sweep_command_gets_the_same_sweep_id():
    first = sweep_id(_sweep(["init=zeros,kaiming", "seed=0,1,2"]))
    assert sweep_id(_sweep(["seed=0,1,2", "init=zeros,kaiming"])) == first  # order of the overrides
    assert sweep_id(_sweep(["init=zeros,kaiming", "seed=0,1,2", "hydra/launcher=joblib",
                            "hydra.launcher.n_jobs=4", "tracking.rerun=true"])) == first  # how it runs
    assert sweep_id(_sweep(["init=zeros,kaiming", "seed=0,1,2,3"])) != first
    assert sweep_id(_sweep(["init=zeros,kaiming", "seed=0,1,2"], experiment="other")) != first
    assert sweep_id(_sweep(["seed=0,1"], params={"init": "zeros,kaiming"})) != sweep_id(_sweep(["seed=0,1"]))


@pytest.mark.slow
def test_a_resumed_sweep_keeps_its_sweep_id_and_is_analyzed_whole(tmp_path):
    sweep = ["-m", "model=mlp", "init=zeros,kaiming", "seed=0,1", "dataset.train_size=128", "trainer.epochs=1"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = cli(*sweep, "trainer.progress=true", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    lost = runs_in(uri, "initbench")[0]
    MlflowClient(uri).delete_run(lost.info.run_id)  # as if that job had never run
    again = cli(*sweep, "trainer.progress=false", cwd=tmp_path)  # the same sweep, shown differently
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skip mlp-") == 3 and f"MLflow run {lost.info.run_name}" in again.stdout
    runs = runs_in(uri, "initbench")
    assert len(runs) == 4 and len({r.data.tags["initbench.sweep"] for r in runs}) == 1
    [parent] = parent_runs_in(uri, "initbench")  # the resumed sweep reused its parent run
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    analysis = analyze(uri, out=tmp_path / "results", log_to_mlflow=False)  # the latest sweep: all 4 jobs
    assert len(analysis.runs) == 4


# --- credentials and URIs ----------------------------------------------------------------------------------


def test_credentials_in_the_tracking_uri_move_to_mlflows_variables(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    uri = "http://alice:s3cret@127.0.0.1:5999"
    config = _sweep([f"tracking.uri={uri}", "seed=0,1"])
    config.tracking.uri = uri
    scrub_credentials(config)
    assert config.tracking.uri == "http://127.0.0.1:5999"
    assert "s3cret" not in OmegaConf.to_yaml(config)  # what Hydra writes to .hydra/*.yaml
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert redact(uri) == "http://alice:***@127.0.0.1:5999"
    with pytest.raises(TrackingUnavailable) as err:  # nothing listens there: the message hides the password
        check_reachable(f"http://alice:s3cret@127.0.0.1:{free_port()}")
    assert "s3cret" not in str(err.value) and "alice:***@" in str(err.value)


@pytest.mark.parametrize("uri,expected", [("garbage://x", "unknown scheme 'garbage'"), ("", "tracking.uri is empty")])
def test_a_tracking_uri_mlflow_cannot_store_in_is_refused_with_the_valid_schemes(uri, expected):
    with pytest.raises(TrackingUnavailable, match=expected) as err:
        clean_uri(uri)
    assert "sqlite" in str(err.value) and "http" in str(err.value)


def test_an_empty_experiment_name_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TrackingUnavailable, match="tracking.experiment=''"):
        Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_failed_runs_error_keeps_the_line_that_names_the_exception(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "errors")
    run_id = tracker.start("long", {}, {})
    tracker.end("failed", error="  File x, line 1\n" * 1000 + "RuntimeError: the real reason\n")
    error = tracker.client.get_run(run_id).data.tags["initbench.error"]
    assert error.rstrip().endswith("RuntimeError: the real reason") and len(error) <= MAX_ERROR_CHARS + 3


def test_a_refused_job_of_a_sweep_is_recorded_as_a_failed_run(tmp_path, monkeypatch):
    monkeypatch.setenv("INITBENCH_SWEEP_ID", "refusals")
    cfg = compose_config(["model=lenet", "init=lstm_forget_bias"], tmp_path)  # the policy needs an LSTM
    with pytest.raises(ValueError, match="lstm"):
        run(cfg)
    [failed] = runs_in(cfg.tracking.uri, "initbench")
    assert failed.info.status == "FAILED" and failed.data.tags["initbench.sweep"] == "refusals"
    assert "InitError" in failed.data.tags["initbench.error"]

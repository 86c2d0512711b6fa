"""Edges that gave silently wrong results or broke a store: concurrent store creation, half-made and
foreign stores, live runs, interrupts, sweep ids across resumes, the config hash, credentials."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from initbench.analysis import analyze
from initbench.callbacks import scrub_credentials, sweep_id
from initbench.interrupts import child_pids
from initbench.run import already_done, computed_config, config_hash, run
from initbench.store import TrackingUnavailable, check_reachable, clean_uri, redact
from initbench.testing import (
    QUIET,
    cli,
    free_port,
    history_steps,
    parent_runs_in,
    runs_in,
)
from initbench.tracking import MAX_ERROR_CHARS, PROCESS_TAG, Tracker, process_token

from .conftest import compose_config
from .support import Job, needs_plugin, wait_until

# --- the SQLite store ------------------------------------------------------------------------------------

# What one job does to a new store (initbench/run.py: open_job, start_run, train_and_log) without the training:
# it imports first and waits for the go file, so that the two jobs of a pair open the store in one instant.
RACE_JOB = """
import sys, time
from pathlib import Path
from initbench.tracking import Tracker
uri, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
Path(name + ".ready").touch()
while not go.exists():
    time.sleep(0.001)
tracker = Tracker(uri, "initbench")
tracker.runs_with_hash("0" * 16)              # already_done: earlier runs of this config
tracker.start(name, {"seed": name[-1]}, {"initbench.status": "running", "initbench.sweep": "race"})
Path(name + ".txt").write_text(name)
tracker.log_artifact(name + ".txt")           # config.yaml, init_report.csv
tracker.log_points([("train/loss", 1.0 / s, s) for s in range(1, 11)] + [("test/acc", 0.5, 1)])
tracker.end("finished")
"""


def race_pair(folder) -> list[str]:
    """Two jobs started on the new store folder/mlflow.db and released at one barrier; their stderr."""
    folder.mkdir()
    go, names = folder / "go", ["race-s0", "race-s1"]
    procs = [subprocess.Popen([sys.executable, "-c", RACE_JOB, "sqlite:///mlflow.db", name, str(go)], cwd=folder,
                              env={**os.environ, **QUIET}, stderr=subprocess.PIPE, text=True) for name in names]
    deadline = time.monotonic() + 180
    while not all((folder / f"{name}.ready").exists() for name in names):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a job did not start"
        time.sleep(0.01)
    go.touch()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    return errors


@pytest.mark.stress
def test_pairs_of_processes_creating_one_new_store_log_every_run_and_leave_it_usable(tmp_path, stress_size,
                                                                                    stress_report):
    start = time.monotonic()
    for pair in range(stress_size.race_pairs):
        folder = tmp_path / f"pair{pair:02d}"
        race_pair(folder)
        runs = runs_in(f"sqlite:///{folder / 'mlflow.db'}", "initbench")
        assert sorted((r.info.run_name, r.info.status) for r in runs) == [("race-s0", "FINISHED"),
                                                                          ("race-s1", "FINISHED")]
    wall = time.monotonic() - start
    cfg = compose_config(["model=mlp", "dataset.train_size=128", "seed=2"], folder)  # the last store still works
    finished = run(cfg).status
    analysis = analyze(cfg.tracking.uri, out=folder / "results", log_to_mlflow=False)
    stress_report(f"{stress_size.race_pairs} pairs of processes, each pair creating one new SQLite store at "
                  "the same moment (what a job does to the store: Tracker, search, start, artifact, metrics, end; "
                  "released by one barrier)",
                  f"{2 * stress_size.race_pairs} of {2 * stress_size.race_pairs} jobs exit 0 in {wall:.0f} s, "
                  f"every store holds its 2 runs FINISHED; then a real job in the last store {finished} and its "
                  f"analysis counts {len(analysis.runs)} run")
    assert finished == "finished" and len(analysis.runs) == 1


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


@pytest.mark.slow
@pytest.mark.stress(only_when_selected=True)
def test_a_second_process_with_a_training_runs_config_skips_it_and_leaves_it_running(tmp_path, stress_size,
                                                                                     stress_report):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["model=mlp", "dataset.train_size=256", f"trainer.epochs={stress_size.long_epochs}",
            "trainer.progress=false"]
    first = Job(args, tmp_path, "a")
    try:
        run_id = wait_until("A flushes an epoch", lambda: first_flushed_run(uri), job=first)
        second = cli(*args, cwd=tmp_path)
        status_after = MlflowClient(uri).get_run(run_id).info.status
        flushed = len(history_steps(uri, run_id, "test/acc"))
        wait_until("A flushes another epoch", lambda: len(history_steps(uri, run_id, "test/acc")) > flushed,
                   job=first)
        os.kill(first.pid, signal.SIGINT)  # now stop A: its own handler ends its run
        first.proc.wait(60)
    finally:
        first.stop()
    skip = next((line for line in second.stdout.splitlines() if line.startswith("skip ")), "")
    ended = MlflowClient(uri).get_run(run_id)
    error = ended.data.tags.get("initbench.error", "")
    stress_report("job A RUNNING; the same config started in process B",
                  f"B exit {second.returncode}: `{skip}`; A's run {status_after} after B, A still flushing; then "
                  f"SIGINT to A: its run {ended.info.status} by A itself (`{error[:40]}`)")
    assert second.returncode == 0 and f"run {run_id} of this config is running now" in skip
    assert f"its process {first.pid} on this host is alive" in skip and "marking run" not in second.stdout
    assert status_after == "RUNNING"
    assert ended.info.status == "KILLED" and error.startswith("KeyboardInterrupt")


KILLED_WITHIN_S = 5.0  # a signalled run reads KILLED in the store this soon after the signal


@pytest.mark.slow
@pytest.mark.stress
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_ends_killed_at_once_with_what_it_flushed(tmp_path, sig, stress_size, stress_report):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    epochs = stress_size.long_epochs
    job = Job(["model=mlp", "dataset.train_size=256", f"trainer.epochs={epochs}", "trainer.progress=false"],
              tmp_path)
    try:
        run_id = wait_until("a first flushed epoch", lambda: first_flushed_run(uri), job=job)
        flushed = len(history_steps(uri, run_id, "test/acc"))
        sent = time.monotonic()
        os.kill(job.pid, sig)
        wait_until("the run reads KILLED", lambda: MlflowClient(uri).get_run(run_id).info.status == "KILLED", 60)
        killed_after = time.monotonic() - sent
        job.proc.wait(60)
        exited_after = time.monotonic() - sent
    finally:
        job.stop()
    [killed] = runs_in(uri, "initbench")
    kept = len(history_steps(uri, run_id, "test/acc"))
    loss = history_steps(uri, run_id, "train/loss")
    stress_report(f"{sig.name} to a single {epochs}-epoch run after its first flushed epoch ({flushed} flushed "
                  "when signalled)",
                  f"run {killed.info.status} (initbench.status={killed.data.tags['initbench.status']}) "
                  f"{killed_after:.1f} s after the signal; the process exits {job.proc.returncode} after "
                  f"{exited_after:.1f} s; kept {kept} whole epochs: train/loss steps 1..{len(loss)}")
    assert killed.info.run_id == run_id
    assert killed.info.status == "KILLED" and killed.data.tags["initbench.status"] == "killed", job.output()
    assert killed_after <= KILLED_WITHIN_S
    assert flushed <= kept < epochs
    assert loss == list(range(1, 2 * kept + 1))  # whole epochs kept


def first_flushed_run(uri: str, runs: int = 1) -> list[str] | str | None:
    """The id of the run in the store (of each of `runs` runs) once every one has flushed an epoch."""
    found = runs_in(uri, "initbench") if Path(uri.removeprefix("sqlite:///")).exists() else []
    ids = [r.info.run_id for r in found]
    if len(ids) < runs or not all(history_steps(uri, i, "test/acc") for i in ids):
        return None
    return ids[0] if runs == 1 else ids


def descendants(pid: int) -> dict[int, str]:
    """pid -> process token (initbench.tracking.process_token) of every live descendant of `pid`."""
    found, todo = {}, [pid]
    while todo:
        for child in child_pids(todo.pop()):
            if child not in found:
                found[child] = process_token(child)
                todo.append(child)
    return found


def alive(pid: int, token: str) -> bool:
    """The process `token` named still exists (the same start time: not a reused pid) and is no zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and process_token(pid) == token


SWEEP_GRACE_S = 20.0  # after SIGTERM to a sweep's parent, none of its processes is alive this much later


@pytest.mark.slow
@pytest.mark.stress(only_when_selected=True)
@needs_plugin("joblib")
def test_sigterm_to_a_sweeps_parent_ends_every_process_and_run_it_started(tmp_path, stress_size, stress_report):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = Job(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=mlp", "seed=0,1",
               "dataset.train_size=256", f"trainer.epochs={stress_size.long_epochs}", "trainer.progress=false"],
              tmp_path, new_session=True)
    started: dict[int, str] = {}
    try:
        ids = wait_until("both runs flush an epoch", lambda: first_flushed_run(uri, runs=2), job=job)
        started = descendants(job.pid)  # the workers and joblib's helpers, before the signal
        sent = time.monotonic()
        os.kill(job.pid, signal.SIGTERM)  # the parent only
        job.proc.wait(SWEEP_GRACE_S)
        parent_exit = time.monotonic() - sent
        while (left := [pid for pid, token in started.items() if alive(pid, token)]) and (
                time.monotonic() - sent < SWEEP_GRACE_S):
            time.sleep(0.2)
        all_ended = time.monotonic() - sent
    finally:
        if job.proc.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.stop()
        for pid, token in started.items():  # what the sweep left running, by the PIDs read above
            if alive(pid, token):
                os.kill(pid, signal.SIGKILL)
    runs = [MlflowClient(uri).get_run(i) for i in ids]
    [parent] = parent_runs_in(uri, "initbench")
    stress_report(f"SIGTERM to the parent of a joblib sweep (n_jobs=2, seeds 0,1) once both runs had flushed an "
                  f"epoch; {len(started)} processes under it read from /proc before",
                  f"parent exit {job.proc.returncode} after {parent_exit:.1f} s; "
                  + (f"alive {SWEEP_GRACE_S:.0f} s after the signal: {left}" if left else
                     f"none of them alive {all_ended:.1f} s after the signal")
                  + f"; runs {[r.info.status for r in runs]}; the sweep's parent run "
                  f"{parent.info.status}")
    assert not left
    assert all(r.info.status == "KILLED" and r.data.tags["initbench.status"] == "killed" for r in runs)
    assert parent.info.status == "FAILED"


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
@pytest.mark.stress
def test_a_resumed_sweep_keeps_its_sweep_id_and_is_analyzed_whole(tmp_path, stress_report):
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
    stress_report(f"a 2-init x 2-seed sweep, run {lost.info.run_name} deleted (MlflowClient.delete_run), the "
                  "same command again, then the analysis of the latest sweep",
                  f"{again.stdout.count('skip mlp-')} skipped, the deleted job re-ran; "
                  f"{len({r.data.tags['initbench.sweep'] for r in runs})} sweep id; the analysis counts "
                  f"{len(analysis.runs)} jobs")
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

"""hydra/launcher=batched end to end: the same MLflow runs as the basic launcher, trained together."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hydra_plugins.initbench_batched_launcher.batched_launcher import BatchedLauncher
from initbench.tracking import HEARTBEAT_TAG, PARENT_TAG, PROCESS_TAG

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["model=mlp", "init=default,kaiming", "seed=0,1", "dataset.train_size=256", "trainer.epochs=1"]
# What differs between any two runs, whoever launched them.
RUN_SPECIFIC_TAGS = {"initbench.sweep", "mlflow.parentRunId", PROCESS_TAG, HEARTBEAT_TAG, "mlflow.runName",
                     "mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"}


def sweep(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """A multirun of `python -m initbench` in `cwd`, on the CPU, logging to cwd/mlflow.db; datasets in
    cwd/../data, so that two sweeps side by side log the same paths.data_dir."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "INITBENCH_DATA_DIR": str(cwd.parent / "data"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "initbench", "-m", "trainer.device=cpu", "trainer.progress=false",
                           f"tracking.uri=sqlite:///{cwd / 'mlflow.db'}", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def logged(store: Path) -> dict:
    """run name -> (status, params, tags, {metric key: [(step, value)]}, artifact texts), for the jobs'
    runs (not the sweep's parent run)."""
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    out = {}
    for run in client.search_runs([client.get_experiment_by_name("initbench").experiment_id]):
        if PARENT_TAG in run.data.tags:
            continue
        rid = run.info.run_id
        metrics = {key: [(m.step, m.value) for m in client.get_metric_history(rid, key)]
                   for key in run.data.metrics}
        artifacts = {a.path: Path(client.download_artifacts(rid, a.path, str(store / rid))).read_text()
                     for a in client.list_artifacts(rid)}
        params = {k: v for k, v in run.data.params.items() if k != "tracking.uri"}  # the store's path
        tags = {k: v for k, v in run.data.tags.items() if k not in RUN_SPECIFIC_TAGS}
        out[run.info.run_name] = (run.info.status, params, tags, metrics, artifacts)
    return out


@pytest.mark.slow
def test_batched_sweep_logs_what_the_basic_launcher_logs(tmp_path):
    basic = sweep(tmp_path / "basic", *SWEEP)
    assert basic.returncode == 0, basic.stderr
    batched = sweep(tmp_path / "batched", *SWEEP, "hydra/launcher=batched", "hydra.launcher.mode=batched")
    assert batched.returncode == 0, batched.stderr
    assert "batched: 4 jobs in chunks of up to 4 models" in batched.stdout + batched.stderr
    want, got = logged(tmp_path / "basic"), logged(tmp_path / "batched")
    assert sorted(got) == sorted(want) == ["mlp-default-digits-s0", "mlp-default-digits-s1",
                                           "mlp-kaiming-digits-s0", "mlp-kaiming-digits-s1"]
    for name, (status, params, tags, metrics, artifacts) in want.items():
        status_b, params_b, tags_b, metrics_b, artifacts_b = got[name]
        assert (status_b, params_b, tags_b) == (status, params, tags)
        steps = {k: [s for s, _ in v] for k, v in metrics.items()}
        assert {k: [s for s, _ in v] for k, v in metrics_b.items()} == steps
        for key, history in metrics.items():  # float32, summed in another order: close, not equal
            assert [v for _, v in metrics_b[key]] == pytest.approx([v for _, v in history], rel=1e-4, abs=1e-6), key
        assert artifacts_b["config.yaml"].replace("batched/mlflow.db", "basic/mlflow.db") == artifacts["config.yaml"]
        assert artifacts_b["init_report.csv"] == artifacts["init_report.csv"]


@pytest.mark.slow
def test_a_failing_job_fails_alone_and_the_sweep_exits_non_zero(tmp_path):
    # seed=1's model raises during training; the others (each its own group: the model config holds
    # the seed) finish, as with the basic launcher.
    done = sweep(tmp_path / "sweep", f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "model=exploding",
                 "seed=0,1,2", "dataset.train_size=256", "hydra/launcher=batched")
    assert done.returncode != 0
    status = {name: (tags["initbench.status"], run_status)
              for name, (run_status, _, tags, _, _) in logged(tmp_path / "sweep").items()}
    assert status == {"exploding-default-digits-s0": ("finished", "FINISHED"),
                      "exploding-default-digits-s1": ("failed", "FAILED"),
                      "exploding-default-digits-s2": ("finished", "FINISHED")}


def test_run_jobs_fails_a_bad_job_alone_batches_the_rest_in_chunks_and_skips_done_ones(store, monkeypatch):
    from initbench.batched.sweep import run_jobs

    from .conftest import compose_config

    monkeypatch.chdir(store)  # MLflow puts a sqlite store's artifacts in ./mlruns

    cfgs = [compose_config(["model=mlp", "dataset.train_size=256", *job], store)
            for job in (["seed=0"], ["init=lstm_forget_bias"], ["seed=1", "optimizer.lr=0.1"], ["seed=2"])]
    said = []
    outcomes = run_jobs(cfgs, max_models=2, mode="batched", say=said.append)
    assert type(outcomes[1].error).__name__ == "InitError"  # no LSTM in an MLP: fails in prepare()
    assert [outcomes[i].result.status for i in (0, 2, 3)] == ["finished"] * 3
    assert said == ["batched: 3 jobs in chunks of up to 2 models"]
    names = {run_name: tags["initbench.status"] for run_name, (_, _, tags, _, _) in logged(store).items()}
    assert names == {f"mlp-default-digits-s{seed}": "finished" for seed in (0, 1, 2)}
    again = run_jobs(cfgs, mode="batched", say=said.append)  # resuming: finished configs are skipped
    assert again[0].result is None and again[0].value() is None and again[3].value() is None
    with pytest.raises(type(outcomes[1].error)):
        again[1].value()


@pytest.mark.parametrize("knob,value,valid", [
    ("mode", "parallel", "valid: auto, batched, sequential"),
    ("compile", "yes", "valid: auto, true, false"),
    ("compile_mode", "fast", "valid: null, default, reduce-overhead, max-autotune"),
    ("max_models", 0, "must be >= 1, got 0"),
])
def test_a_bad_launcher_knob_names_the_value_and_the_valid_ones(knob, value, valid):
    with pytest.raises(ValueError, match=f"hydra.launcher.{knob}.*{valid}"):
        BatchedLauncher(**{knob: value})

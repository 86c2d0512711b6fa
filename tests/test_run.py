"""End to end: `python -m initbench` logs one MLflow run per job with the conventions analysis relies on."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from initbench import data as data_module
from initbench import footprint
from initbench.run import prepare, run
from initbench.testing import ROOT, cli, parent_runs_in, runs_in

from .conftest import compose_config


def runs_of(folder: Path, experiment: str = "initbench"):
    """The runs of `experiment` in the store `folder`/mlflow.db, and a client for it."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return runs_in(uri, experiment), MlflowClient(uri)


def test_run_logs_params_tags_metrics_and_artifacts(store):
    cfg = compose_config(["model=lenet", "init=kaiming", "dataset.train_size=256", "seed=7"], store)
    result = run(cfg)
    [logged], client = runs_of(store)
    assert logged.info.run_name == "lenet-kaiming-digits-s7"
    assert logged.info.status == "FINISHED"
    params, tags = logged.data.params, logged.data.tags
    assert params["model.name"] == "lenet" and params["init.name"] == "kaiming"
    assert params["dataset.name"] == "digits" and params["seed"] == "7"
    assert params["optimizer._target_"] == "torch.optim.SGD"
    assert tags["initbench.status"] == "finished"
    for tag in ("initbench.sweep", "initbench.version", "initbench.torch", "initbench.device",
                "initbench.config_hash"):
        assert tags[tag]
    metrics = logged.data.metrics
    assert metrics["test/acc"] == pytest.approx(result.final["test/acc"])
    history = client.get_metric_history(logged.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]  # 256 examples in batches of 128
    assert "vitals/grad_norm/conv1.weight" in metrics and "vitals/act_std/fc3" in metrics
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"config.yaml", "init_report.csv"} <= artifacts


def test_main_command_trains_and_prints_the_ui_command(tmp_path):
    done = cli("init=kaiming", "model=lenet", "dataset.train_size=256", "trainer.epochs=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in done.stdout
    assert "#/experiments/1?workflowType=machine_learning" in done.stdout  # opens on the runs, not on GenAI
    [logged], client = runs_of(tmp_path)
    assert logged.info.run_name == "lenet-kaiming-digits-s0"
    assert "mlflow.parentRunId" not in logged.data.tags  # a single run stays a top-level run
    # the process ends without a last garbage collection (gc.freeze): its run was whole by then
    assert logged.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "train/loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "test/acc")] == [1]


def test_multirun_makes_one_run_per_job_sharing_a_sweep_tag(tmp_path):
    done = cli("-m", "init=default,kaiming", "seed=0,1", "model=mlp", "dataset.train_size=128",
               "trainer.epochs=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs, _ = runs_of(tmp_path)
    names = sorted(r.info.run_name for r in runs)
    assert names == ["mlp-default-digits-s0", "mlp-default-digits-s1", "mlp-kaiming-digits-s0",
                     "mlp-kaiming-digits-s1"]
    [sweep] = {r.data.tags["initbench.sweep"] for r in runs}
    # the sweep is one parent run, ended, whose children are the jobs: one expandable row in the UI
    [parent] = parent_runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}", "initbench")
    assert parent.info.run_name == f"sweep-{sweep}" and parent.info.status == "FINISHED"
    assert parent.data.params["sweep.overrides"].startswith("init=default,kaiming seed=0,1 model=mlp")
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    # every job saw the same data: one digest per split, as MLflow dataset inputs
    inputs = [(i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"])
              for r in runs for i in r.inputs.dataset_inputs]
    assert len(inputs) == 12 and len(set(inputs)) == 3
    assert {context for _, _, context in inputs} == {"train", "val", "test"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("initbench")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training view


def test_diverged_run_is_a_result_and_exits_zero(tmp_path):
    done = cli("model=mlp", "model.activation=leaky_relu", "init=ones", "optimizer.lr=1e6",
               "dataset.train_size=256", "trainer.epochs=2",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [logged], _ = runs_of(tmp_path)
    assert logged.data.tags["initbench.status"] == "diverged"


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    # seed=1's model raises during training; seed=0 and seed=2 still run, and the sweep exits non-zero.
    done = cli("-m", f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "model=exploding",
               "seed=0,1,2", "dataset.train_size=256", cwd=tmp_path)
    assert done.returncode != 0
    runs, _ = runs_of(tmp_path)
    status = {r.info.run_name: (r.data.tags["initbench.status"], r.info.status) for r in runs}
    assert status == {"exploding-default-digits-s0": ("finished", "FINISHED"),
                      "exploding-default-digits-s1": ("failed", "FAILED"),
                      "exploding-default-digits-s2": ("finished", "FINISHED")}
    failed = next(r for r in runs if r.info.run_name.endswith("s1"))
    assert "boom: ExplodingNet was told to fail" in failed.data.tags["initbench.error"]


@pytest.mark.parametrize("override,valid", [
    ("model=vgg", ["cnn1d", "gru", "lenet", "lstm", "mlp", "resmlp", "resnet", "transformer"]),
    ("dataset=imagenet", ["cifar10", "digits", "fashion_mnist", "mnist", "mnist1d"]),
])
def test_unknown_group_option_lists_valid_ones(tmp_path, override, valid):
    done = cli(override, cwd=tmp_path)
    group, bad = override.split("=")
    assert done.returncode != 0
    assert f"Could not find '{group}/{bad}'" in done.stderr
    assert f"Available options in '{group}':\n" + "".join(f"\t{v}\n" for v in valid) in done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing written


def test_probe_command_prints_the_signal_table_and_logs_nothing(tmp_path):
    env = {**os.environ, "INITBENCH_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "initbench.probe", "model=mlp", "model.depth=30", "init=xavier",
                           "trainer.device=cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.strip().startswith(("layers.", "head "))]
    signal = {r[0]: (float(r[1]), float(r[2])) for r in rows if len(r) in (3, 4)}  # layer, act, backprop[, dead]
    assert len(signal) == 31
    # xavier under ReLU at depth 30: the activations fade layer by layer (He et al. 2015)
    assert signal["layers.29.0"][0] < signal["layers.0.0"][0] / 100
    assert not (tmp_path / "mlflow.db").exists()


def test_a_bad_init_policy_fails_before_training_and_writes_nothing(tmp_path):
    # seed 001's bug: xavier_normal_ on a Conv bias
    done = cli("model=lenet", "+init.rules=[{where: {module: Conv2d}, scheme: xavier_normal}]", cwd=tmp_path)
    assert done.returncode != 0
    assert "conv1.bias (shape 6)" in done.stderr and "fix:" in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_the_jobs_of_one_process_load_a_dataset_and_measure_a_model_once(tmp_path, monkeypatch):
    """Hydra's basic launcher runs a sweep's jobs one after another in one process: the second job with
    the same dataset and model config reuses the first one's data and footprint; another dataset loads."""
    loads, measures = [], []
    real_load, real_measure = data_module.load_dataset, footprint._measure
    monkeypatch.setattr(data_module, "load_dataset", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(footprint, "_measure", lambda *a, **k: measures.append(a[0]) or real_measure(*a, **k))
    data_module._shared_dataset.cache_clear()
    footprint._model_size.cache_clear()
    first = prepare(compose_config(["model=mlp", "init=kaiming", "seed=0", "dataset.train_size=128"], tmp_path))
    second = prepare(compose_config(["model=mlp", "init=xavier", "seed=1", "dataset.train_size=128"], tmp_path))
    assert second.data is first.data and len(loads) == 1 and len(measures) == 1
    assert not any(p1 is p2 for p1, p2 in zip(first.model.parameters(), second.model.parameters(), strict=True))
    third = prepare(compose_config(["model=mlp", "seed=0", "dataset.train_size=256"], tmp_path))
    assert third.data is not first.data and len(third.data.train_y) == 256 and len(loads) == 2

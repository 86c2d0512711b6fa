"""Every option of every config group composes, and what it names can be built."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from initbench.run import prepare, run_name

from .conftest import CONF_DIR, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_groups_ship_the_documented_options():
    assert options("model") == ["lenet", "lstm", "mlp"]
    assert options("dataset") == ["cifar10", "digits", "fashion_mnist", "mnist"]
    assert options("optimizer") == ["adam", "sgd"]


@pytest.mark.parametrize("model", options("model"))
def test_every_model_builds_on_the_default_dataset(model):
    cfg = compose_config([f"model={model}"])
    job = prepare(cfg)
    assert job.model(job.data.train_x[:4]).shape == (4, 10)
    assert len(job.report.frame) == len(list(job.model.parameters()))
    assert run_name(cfg) == f"{model}-default-digits-s0"


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_every_optimizer_instantiates(optimizer):
    cfg = compose_config([f"optimizer={optimizer}", "optimizer.lr=0.125"])
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(3))])
    assert opt.param_groups[0]["lr"] == 0.125


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_composes_with_the_user_overrides(dataset):
    cfg = compose_config([f"dataset={dataset}", "dataset.train_size=100", "paths.data_dir=/data"])
    assert cfg.dataset.name == dataset and cfg.dataset.train_size == 100 and cfg.paths.data_dir == "/data"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_builds(experiment):
    job = prepare(compose_config([f"experiment={experiment}"]))
    assert job.model(job.data.train_x[:2]).shape == (2, 10)


def test_overrides_users_type(monkeypatch):
    monkeypatch.setenv("INITBENCH_DATA_DIR", "/somewhere")
    cfg = compose_config(["seed=3", "trainer.epochs=2", "trainer.batch_size=32", "trainer.device=cpu",
                          "optimizer.lr=0.5", "tracking.uri=http://127.0.0.1:5999", "tracking.experiment=x"])
    assert (cfg.seed, cfg.trainer.epochs, cfg.trainer.batch_size, cfg.optimizer.lr) == (3, 2, 32, 0.5)
    assert cfg.tracking.uri == "http://127.0.0.1:5999" and cfg.tracking.experiment == "x"
    assert cfg.paths.data_dir == "/somewhere"

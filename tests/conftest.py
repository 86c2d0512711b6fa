"""Shared fixtures: the real Hydra config, composed once per test and shrunk for speed."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import initbench.config  # noqa: F401  (registers the schemas conf/ extends)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# Overrides a policy file needs beside it to compose: it reads ${model.*} keys the default LeNet lacks.
DEEPNET_ALPHA = (2 * 4) ** 0.25  # (2N)^(1/4) for the default transformer's 4 blocks
POLICY_NEEDS = {**{policy: ["model=transformer"] for policy in ("small_init", "wang_init", "t_fixup")},
                "layerscale": ["model=transformer", "model.branch_gate=channel"],
                "mup_transformer": ["model=transformer", "model.attn_scale=inv_d"],
                "deepnet": ["model=transformer", "model.norm_position=post", f"model.residual_scale={DEEPNET_ALPHA}"]}


def compose_config(overrides: list[str] = (), store: Path | None = None) -> DictConfig:
    """The project's config with `overrides`, shrunk to a quick CPU run (1 epoch unless the
    overrides say otherwise) logging into `store`."""
    quick = {"trainer.epochs": 1, "trainer.progress": False, "trainer.device": "cpu"}
    given = {o.split("=", 1)[0] for o in overrides}
    overrides = [f"{k}={v}" for k, v in quick.items() if k not in given] + list(overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    if store is not None:
        with open_dict(cfg):
            cfg.tracking.uri = f"sqlite:///{store / 'mlflow.db'}"
    return cfg


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A fresh folder for a run's MLflow store."""
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def data_dir(tmp_path_factory):
    """What the tests generate (MNIST-1D's cache) goes to a temporary folder, not ~/.cache/initbench."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INITBENCH_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        yield

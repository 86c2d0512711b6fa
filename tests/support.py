"""What only the tests need beside initbench.testing (running initbench as a user does, local services):
the test config folder, the tiny-run overrides, and a skip for a missing launcher plugin."""

import importlib.util

import pytest

from initbench.testing import ROOT

TEST_CONF = ROOT / "tests" / "conf"  # model=exploding: training raises when seed == 1
TINY = ["dataset.train_size=128", "trainer.epochs=1", "trainer.progress=false"]


def needs_plugin(name: str):
    """Skip unless Hydra's `name` launcher plugin is installed (the `launchers` extra)."""
    try:
        found = importlib.util.find_spec(f"hydra_plugins.hydra_{name}_launcher") is not None
    except ModuleNotFoundError:  # no hydra_plugins package at all
        found = False
    return pytest.mark.skipif(not found, reason=f"hydra-{name}-launcher is not installed: "
                                                "pip install -e '.[launchers]'")

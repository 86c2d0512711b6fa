"""Shared fixtures: the real Hydra config, composed once per test and shrunk for speed; the stress
cases' size option and the table of their figures."""

import signal
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import initbench.config  # noqa: F401  (registers the schemas conf/ extends)

from .support import STRESS_SIZES, StressSize

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


# --- the stress cases (marker `stress`): sized by --stress-size, their figures in one table at the end ------

STRESS_ROWS = pytest.StashKey[list]()


def pytest_configure(config):
    """A suite started in the background (`pytest &`) inherits SIGINT ignored, and so would the jobs it
    starts: give them a terminal's SIGINT, which the interrupt tests send."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """A case marked `stress(only_when_selected=True)` repeats what a faster test already covers at a
    larger scale: it runs only when the marker expression names stress (`pytest -m stress`)."""
    if "stress" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="a stress case that runs only with -m stress (docs/reliability.md)")
    for item in items:
        marker = item.get_closest_marker("stress")
        if marker is not None and marker.kwargs.get("only_when_selected"):
            item.add_marker(skip)


def pytest_addoption(parser):
    parser.addoption("--stress-size", choices=sorted(STRESS_SIZES), default="small",
                     help="sizes of the stress cases (tests/support.py STRESS_SIZES): small (default) or full, "
                          "the figures of docs/reliability.md: pytest -m stress --stress-size=full")


@pytest.fixture(scope="session")
def stress_size(request) -> StressSize:
    return STRESS_SIZES[request.config.getoption("--stress-size")]


@pytest.fixture
def stress_report(request):
    """report(what was done, what came of it): a row of the stress table printed after the tests."""
    rows = request.config.stash.setdefault(STRESS_ROWS, [])
    case = request.node.originalname.removeprefix("test_").replace("_", " ")
    return lambda done, result: rows.append((request.node.nodeid, case, done, result))


def pytest_terminal_summary(terminalreporter, config):
    rows = config.stash.get(STRESS_ROWS, [])
    if not rows:
        return
    failed = {report.nodeid for report in terminalreporter.stats.get("failed", [])}
    terminalreporter.write_sep("=", f"stress figures (--stress-size={config.getoption('--stress-size')})")
    terminalreporter.write_line("| case | what was done | result | ok |")
    terminalreporter.write_line("|---|---|---|---|")
    for nodeid, case, done, result in rows:
        cells = [text.replace("|", "\\|").replace("\n", " ") for text in (case, done, result)]
        terminalreporter.write_line(f"| {' | '.join(cells)} | {'FAIL' if nodeid in failed else 'ok'} |")

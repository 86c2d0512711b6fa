"""Every preset in conf/experiment/ keeps working: it is headed by the command that runs it, every value
that command sweeps composes into a config that passes the checks and builds and initializes its model,
and the preset itself trains for one epoch of 128 examples and logs its run. Presets added later are picked up
by the glob."""

import math
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from omegaconf import OmegaConf, open_dict

from initbench.config import check_config
from initbench.data import DatasetUnavailable, load_dataset
from initbench.run import prepare, run

from .conftest import CONF_DIR, compose_config
from .support import TINY

PRESET_DIR = Path(CONF_DIR) / "experiment"
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
COMMAND = "python -m initbench "  # the training command; `python -m initbench.probe` lines are not sweeps
SMALL_WIDTH = 64  # the training test narrows wider models (divisible by 1, 2, 4, 8 attention heads)
# Overrides that do not change what a job computes, or that compose() cannot take (Hydra's own).
SKIPPED = ("seed", "hydra", "tracking", "trainer.progress", "trainer.device")


def header_commands(name: str) -> list[str]:
    """The commands of the preset's leading comment: its lines that start with `python -m initbench `,
    continuation lines (ending in a backslash) joined, a trailing `# comment` dropped."""
    logical, commands = "", []
    for line in (PRESET_DIR / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        logical += " " + line.lstrip("#").strip()
        if logical.endswith("\\"):
            logical = logical[:-1]
            continue
        logical = " ".join(logical.split())
        if logical.startswith(COMMAND):
            commands.append(logical.split(" #")[0].strip())
        logical = ""
    return commands


def swept_values(command: str) -> dict[str, list[str]]:
    """{override key as written (`init`, `model.depth`, `+probe.x`): its values} of one command line,
    a sweep (`a,b,c`, `range(...)`, `glob(...)`) expanded by Hydra's own parser."""
    tokens = [t for t in shlex.split(command.removeprefix(COMMAND)) if not t.startswith("-")]
    found = {}
    for token, override in zip(tokens, OverridesParser.create().parse_overrides(tokens), strict=True):
        key = token.split("=", 1)[0]
        if key.lstrip("+~").split("/")[0].split(".")[0] in SKIPPED or key.lstrip("+~") in SKIPPED:
            continue
        if isinstance(override.value(), Glob):  # glob(...) of a config group: its files, as Hydra filters them
            found[key] = override.value().filter(sorted(p.stem for p in (Path(CONF_DIR) / key).glob("*.yaml")))
        elif override.is_sweep_override():
            found[key] = list(override.sweep_string_iterator())
        else:
            found[key] = [token.split("=", 1)[1]]
        assert found[key], f"{token}: sweeps no value"
    return found


def sweeper_params(name: str) -> dict[str, str]:
    """The preset's own sweep, hydra.sweeper.params: {key: values as written}, which `-m` runs."""
    text = OmegaConf.load(PRESET_DIR / f"{name}.yaml")
    return {k: str(v) for k, v in OmegaConf.select(text, "hydra.sweeper.params", default={}).items()}


def swept_by(name: str, command: str) -> dict[str, list[str]]:
    """What one header command sweeps: with -m, the preset's hydra.sweeper.params, then the command's own
    overrides (which replace a key of the preset's, as Hydra's sweeper does)."""
    own = sweeper_params(name) if "-m" in shlex.split(command) else {}
    merged = " ".join(f"{k}={v}" for k, v in own.items())
    return {**swept_values(f"{COMMAND}{merged}"), **swept_values(command)}


def one_change_at_a_time(values: dict[str, list[str]]) -> list[list[str]]:
    """Override lists covering every value of every key: the first values, then each other value of one
    key with the first values of the rest (not the full product: that is what the sweep runs)."""
    first = {k: v[0] for k, v in values.items()}
    combos = [first] + [{**first, key: other} for key, vs in values.items() for other in vs[1:]]
    return [[f"{k}={v}" for k, v in combo.items()] for combo in combos]


def offline(call, *args, **kwargs):
    """call(*args, **kwargs), skipping the test where the preset's dataset must be downloaded and cannot be
    (a GPU-sized preset on MNIST or CIFAR-10, on a machine without network or the files)."""
    try:
        return call(*args, **kwargs)
    except DatasetUnavailable as err:
        pytest.skip(f"dataset not here: {err}")


def test_the_paper_presets_are_found():  # the glob finds them (and an empty glob would test nothing)
    assert {"he2015_depth", "glorot2010_tanh", "lenet_all_policies", "mishkin2016_lsuv"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_headed_by_the_commands_that_run_it(name):
    text = (PRESET_DIR / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n"), "a preset sets keys of every group: # @package _global_"
    commands = header_commands(name)
    assert commands, f"conf/experiment/{name}.yaml: its header comment names no `{COMMAND}...` command"
    assert all(f"experiment={name}" in shlex.split(c) for c in commands), commands


@pytest.mark.parametrize("name", PRESETS)
def test_every_value_the_presets_commands_sweep_builds(name):
    """What `python -m initbench -m experiment=NAME ...` would refuse (an init that does not exist or does
    not fit the model, a bad depth) fails here, without training anything."""
    cache = {}
    for command in header_commands(name):
        for overrides in one_change_at_a_time(swept_by(name, command)):
            cfg = compose_config([*overrides, "dataset.train_size=128"])
            check_config(cfg)
            key = (OmegaConf.to_yaml(cfg.dataset), cfg.model.get("image_size"))
            if key not in cache:
                cache[key] = offline(load_dataset, cfg.dataset, cfg.paths.data_dir, "cpu", image_size=key[1])
            job = prepare(cfg, cache[key])
            assert job.model(job.data.train_x[:2]).shape[0] == 2, overrides


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> Path:
    """One MLflow store for every preset's run: a new SQLite store costs seconds to create."""
    return tmp_path_factory.mktemp("presets")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_one_epoch_and_logs_its_run(name, shared_store):
    cfg = compose_config([f"experiment={name}", *TINY, "tracking.rerun=true"], shared_store)
    if cfg.model.get("width", 0) > SMALL_WIDTH:  # the preset's depth, init and optimizer; a narrower model
        with open_dict(cfg):
            cfg.model.width = SMALL_WIDTH
    result = offline(run, cfg)
    assert result is not None and result.steps == math.ceil(cfg.dataset.train_size / cfg.trainer.batch_size)
    assert result.status in ("finished", "diverged")  # some presets show a policy that blows up


# Presets written after the results they stand for: (preset command's overrides, the overrides of the
# command that made the results folder, as results/README.md gives it), one job of each sweep.
MADE_BEFORE_THEIR_PRESET = {
    "mnist1d_cnn": (["experiment=mnist1d_baselines"],
                    ["model=cnn1d", "dataset=mnist1d", "dataset.val_size=0", "optimizer=adam", "optimizer.lr=0.01",
                     "trainer.batch_size=100", "trainer.epochs=150"]),
    "mnist1d_mlp": (["experiment=mnist1d_baselines", "model=mlp", "model.depth=2", "model.width=100"],
                    ["model=mlp", "model.depth=2", "model.width=100", "dataset=mnist1d", "dataset.val_size=0",
                     "optimizer=adam", "optimizer.lr=0.01", "trainer.batch_size=100", "trainer.epochs=150"]),
    "mlp10_digits": (["experiment=mlp10_digits", "init=lecun"],  # made when digits had no validation split
                     ["model=mlp", "model.depth=10", "init=lecun", "trainer.epochs=10", "dataset.val_size=0"]),
    "mlp10_digits_tuned": (["experiment=mlp10_digits", "init=zeros", "dataset.val_size=0.1", "optimizer.lr=0.05"],
                           ["model=mlp", "model.depth=10", "init=zeros", "optimizer.lr=0.05", "trainer.epochs=10"]),
    "mup_sgd": (["experiment=mup_width_lr", "init=default", "model.width=256", "optimizer.lr=0.125"],
                ["model=mlp", "model.width=256", "dataset=mnist1d", "optimizer.lr=0.125", "init=default",
                 "trainer.epochs=10"]),
    "mup_adam": (["experiment=mup_width_lr", "optimizer=adam", "model.width=1024", "optimizer.lr=0.015625"],
                 ["model=mlp", "model.width=1024", "dataset=mnist1d", "optimizer=adam", "optimizer.lr=0.015625",
                  "init=mup", "trainer.epochs=10"]),
}


@pytest.mark.parametrize("case", sorted(MADE_BEFORE_THEIR_PRESET))
def test_a_preset_runs_the_jobs_that_made_its_results(case):
    """The same config, key for key, but for where it is logged: so the preset's command regenerates the
    folder that was made before the preset existed."""
    preset, made_with = MADE_BEFORE_THEIR_PRESET[case]

    def job(overrides):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
        cfg.pop("tracking")
        return cfg

    assert job(preset) == job(made_with)

"""Every option of every config group composes under its schema, what it names can be built, and a bad
config is refused before anything runs, naming the key, the value and the valid ones."""

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from initbench.config import SCHEMAS, Config, ConfigError, check_config
from initbench.run import prepare, run_name

from .conftest import CONF_DIR, POLICY_NEEDS, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_groups_ship_the_documented_options():
    assert options("model") == ["cnn1d", "gru", "lenet", "lstm", "mlp", "resmlp", "resnet", "transformer"]
    assert options("dataset") == ["cifar10", "digits", "fashion_mnist", "mnist", "mnist1d"]
    assert options("optimizer") == ["adam", "adamw", "sgd"]


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


# --- schemas and check_config -----------------------------------------------------------------------

SCHEMA_GROUPS = ("model", "init", "dataset", "optimizer", "trainer")
USERS_MODEL = [f"hydra.searchpath=[file://{Path(__file__).parent / 'conf'}]", "model=exploding"]  # no schema
PAIRED = {"mnist1d": ["model=cnn1d"], **POLICY_NEEDS}  # options the default model (LeNet) cannot take


def compose_plain(overrides: list[str], hydra: bool = False) -> DictConfig:
    """conf/ with `overrides` and nothing else (compose_config shrinks the trainer)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra)


@pytest.mark.parametrize("group,option", [(g, o) for g in SCHEMA_GROUPS for o in options(g)])
def test_every_file_composes_under_its_schema_and_passes_the_checks(group, option):
    raw = OmegaConf.load(Path(CONF_DIR) / group / f"{option}.yaml")
    if group == "init":  # policy files are read as they are (build_policy, which check_config runs)
        assert "defaults" not in raw
        schema = dict
    else:
        [schema_line, self_line] = raw.pop("defaults")
        assert self_line == "_self_" and schema_line.startswith("/schema/") and schema_line.endswith("@_here_")
        schema = SCHEMAS[schema_line[1:-len("@_here_")]]
    cfg = compose_plain([f"{group}={option}", *PAIRED.get(option, [])])
    assert OmegaConf.get_type(cfg) is Config and OmegaConf.get_type(cfg[group]) is schema
    composed = OmegaConf.to_container(cfg[group])
    assert {k: composed[k] for k in raw} == OmegaConf.to_container(raw)  # the file's values, as written
    assert {k: composed[k] for k in composed.keys() - raw.keys()} in ({}, {"lsuv": None})  # no other defaults
    check_config(cfg)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_passes_the_checks(experiment):
    check_config(compose_plain([f"experiment={experiment}"]))


def test_an_unknown_option_lists_only_the_groups_own_files():
    with pytest.raises(MissingConfigException) as err:
        compose_plain(["model=vgg"])
    listed = str(err.value).split("Available options in 'model':")[1].split("Config search path")[0].split()
    assert listed == options("model")


def test_a_users_own_model_config_needs_no_schema():
    cfg = compose_config([*USERS_MODEL, "+model.extra=3"])
    check_config(cfg)
    assert cfg.model.explode_on_seed == 1 and cfg.model.extra == 3


def composed_error(overrides: list[str]) -> str:
    """The message a bad config ends with: Hydra's at compose time, else check_config's."""
    try:
        cfg = compose_config(overrides)
    except ConfigCompositionException as err:
        return f"{err}\n{err.__cause__}"
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    return str(err.value)


# (overrides, what the message must say: the full key with the bad value, then what is valid)
BAD = [
    (["trainer.epochs=0"], "trainer.epochs=0", "an integer >= 1"),
    (["trainer.epochs=-1"], "trainer.epochs=-1", "an integer >= 1"),
    (["trainer.epochs=abc"], "full_key: trainer.epochs", "'abc' of type 'str' could not be converted to Integer"),
    (["trainer.batch_size=abc"], "full_key: trainer.batch_size", "'abc' of type 'str' could not be converted"),
    (["trainer.batch_size=0"], "trainer.batch_size=0", "an integer >= 1"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0", "an integer >= 1"),
    (["trainer.epoch=3"], "full_key: trainer.epoch", "Key 'epoch' not in 'TrainerConf'"),
    (["+trainer.epoch=3"], "trainer.epoch=3: unknown key", "valid: epochs, batch_size"),
    (["trainer.epochs=???"], "trainer.epochs: has no value", "???"),
    (["trainer.schedule=linear"], "trainer.schedule='linear'", "one of constant, cosine"),
    (["trainer.precision=fp16"], "trainer.precision='fp16'", "one of float32, tf32, bf16"),
    (["trainer.compile=yes"], "trainer.compile='yes'", "one of auto, true, false"),
    (["trainer.compile=1"], "trainer.compile=1", "one of auto, true, false"),
    (["trainer.compile_mode=fast"], "trainer.compile_mode='fast'", "one of null, default, reduce-overhead"),
    (["trainer.progress=maybe"], "trainer.progress='maybe'", "one of auto, true, false"),
    (["trainer.warmup_steps=-1"], "trainer.warmup_steps=-1", "an integer >= 0"),
    (["trainer.grad_clip=0"], "trainer.grad_clip=0.0", "a finite number > 0 or null"),
    (["trainer.grad_clip=inf"], "trainer.grad_clip=inf", "a finite number > 0 or null"),
    (["trainer.device=gpu"], "trainer.device='gpu'", "Expected one of cpu, cuda"),
    (["optimizer.lr=abc"], "full_key: optimizer.lr", "'abc' of type 'str' could not be converted to Float"),
    (["optimizer.lr=nan"], "optimizer.lr=nan", "a finite number > 0"),
    (["optimizer.lr=inf"], "optimizer.lr=inf", "a finite number > 0"),
    (["optimizer.lr=0"], "optimizer.lr=0.0", "a finite number > 0"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1", "a finite number >= 0"),
    (["optimizer.momentum=1"], "optimizer.momentum=1.0", "a finite number in [0, 1)"),
    (["+optimizer.nesterv=true"], "optimizer.nesterv=true: unknown key", "nesterov"),
    (["+optimizer.nesterov=true", "optimizer.momentum=0"], "optimizer.nesterov=true", "optimizer.momentum > 0"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.0]"], "optimizer.betas=[0.9, 1.0]", "two numbers in [0, 1)"),
    (["optimizer=adam", "optimizer.eps=0"], "optimizer.eps=0.0", "a finite number > 0"),
    (["optimizer._target_=subprocess.Popen"], "optimizer._target_='subprocess.Popen'", "blocklisted"),
    (["model=mlp", "model.width=0"], "model.width=0", "an integer >= 1"),
    (["model=mlp", "model.depth=0"], "model.depth=0", "an integer >= 1"),
    (["model=mlp", "model.activation=swish"], "model.activation='swish'", "relu, leaky_relu, tanh"),
    (["model=lstm", "model.hidden_size=0"], "model.hidden_size=0", "an integer >= 1"),
    (["model=lenet", "dataset=mnist1d"], "model.image_size=32: resizes images, but dataset=mnist1d holds 1-D",
     "use a model for sequences (cnn1d, mlp, lstm, gru, resmlp, transformer) or model.image_size=null"),
    (["model=lstm", "model.num_layers=0"], "model.num_layers=0", "an integer >= 1"),
    (["model.image_size=0"], "model.image_size=0", "an integer >= 1 or null"),
    (["+model.width=3"], "model.width=3: unknown key", "valid: name, image_size"),
    ([*USERS_MODEL, "model._target_=subprocess.Popen"], "model._target_='subprocess.Popen'", "blocklisted"),
    (["dataset.train_size=0"], "dataset.train_size=0", "an integer >= 1 or null"),
    (["dataset.test_fraction=1.0"], "dataset.test_fraction=1.0", "a finite number in (0, 1)"),
    (["dataset.split_seed=-1"], "dataset.split_seed=-1", "an integer in [0, 4294967295]"),
    (["dataset.name=svhn"], "dataset.name='svhn'", "one of digits, mnist, fashion_mnist, cifar10"),
    (["seed=4294967296"], "seed=4294967296", "an integer in [0, 4294967295]"),
    (["seed=-1"], "seed=-1", "an integer in [0, 4294967295]"),
    (["seed=abc"], "full_key: seed", "'abc' of type 'str' could not be converted to Integer"),
    (["+epochs=3"], "epochs=3: unknown key", "valid: model, init, dataset"),
    (["+init.rules=[{scheme: nope}]"], "init: init policy 'default', rule 0", "unknown scheme 'nope'"),
]


@pytest.mark.parametrize("overrides,bad,valid", BAD, ids=[" ".join(o[-2:]) for o, _, _ in BAD])
def test_a_bad_config_is_refused_naming_key_value_and_valid_ones(overrides, bad, valid, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = composed_error(overrides)
    assert bad in message and valid in message, message
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, nothing else


def test_every_problem_is_listed_at_once():
    message = composed_error(["trainer.epochs=0", "optimizer.lr=nan", "seed=-1"])
    assert message.startswith("invalid config (3 problems):")
    assert all(bad in message for bad in ("trainer.epochs=0", "optimizer.lr=nan", "seed=-1"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_cuda_device_is_refused_where_there_is_none():
    assert "trainer.device='cuda' but CUDA is not available here" in composed_error(["trainer.device=cuda"])


@pytest.fixture
def hydra_job(monkeypatch):
    """Run a check as inside a Hydra job: HydraConfig holds the composed config's `hydra` node."""
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)

    def check(overrides: list[str], mode: RunMode = RunMode.RUN) -> None:
        cfg = compose_plain(overrides, hydra=True)
        with open_dict(cfg):
            cfg.hydra.mode = mode
            HydraConfig.instance().set_config(cfg)
            del cfg["hydra"]
        check_config(cfg)

    return check


def test_a_policy_named_unlike_its_file_is_refused_in_a_hydra_job(hydra_job):
    hydra_job(["init=kaiming"])
    with pytest.raises(ConfigError, match=r"init.name='he': must be the policy file's name, 'kaiming'"):
        hydra_job(["init=kaiming", "init.name=he"])


def test_the_policy_name_is_not_checked_against_a_multiruns_base_config(hydra_job):
    # the batched launcher's jobs see the sweep's base config, whose choices are not theirs
    hydra_job(["init=kaiming", "init.name=he"], mode=RunMode.MULTIRUN)


USERS_POLICY = """\
name: mine
rules:
  - where: {name: head.weight}
    scheme: normal
    args: {std: 0.001}
    optional: true
  - where: {module: LSTM, param: weight_ih}
    _target_: initbench.init.functional.d2l_bimodal_
    optional: true
lsuv: null
"""


def write_policy(folder: Path, text: str) -> list[str]:
    """conf/init/mine.yaml in `folder`, a config folder of the user's: the overrides that pick it."""
    (folder / "init").mkdir()
    (folder / "init" / "mine.yaml").write_text(text)
    return [f"hydra.searchpath=[file://{folder}]", "init=mine"]


def test_a_users_policy_file_composes_and_passes_the_checks(tmp_path):
    cfg = compose_config(write_policy(tmp_path, USERS_POLICY))
    check_config(cfg)
    assert cfg.init.name == "mine" and len(cfg.init.rules) == 2


@pytest.mark.parametrize("extra,named", [
    ("sigma_w: 2.0\n", "parameters ['sigma_w'] are read by none of its rules' schemes"),
    ("rulez: []\n", "unknown keys ['rulez']"),
])
def test_a_policy_key_that_nothing_reads_is_refused_before_the_run(tmp_path, extra, named):
    cfg = compose_config(write_policy(tmp_path, USERS_POLICY + extra))
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_config(cfg)

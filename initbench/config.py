"""The config's schemas (Hydra structured configs) and check_config, for what a schema cannot say.

Importing this module registers the schemas in Hydra's ConfigStore under `schema/`; a conf/ file
extends one through its defaults list (`- /schema/trainer/default@_here_`), so a wrong type or an
unknown key fails at compose time with the key's full name (a key added with + is left to
check_config). Import it before Hydra composes conf/.
The schemas give no values (the files do): a composed config is the same with or without them.
A file without a schema line (your own model, optimizer or policy) is free-form; check_config still
checks the values it has.
"""

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

SEED_MAX = 2**32 - 1  # torch's CPU generator keeps 32 bits: larger or negative seeds repeat these
SCHEDULES = ("constant", "cosine")
PRECISION_NAMES = ("float32", "tf32", "bf16")  # trainer.precision; initbench.train maps them to autocast dtypes
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: the parameters and their updates are float32
SWITCHES = ("auto", True, False)  # trainer.progress, trainer.compile
NOT_CHECKED = ("paths",)  # checked where it is used


@dataclass
class TrainerConf:
    epochs: int = MISSING
    batch_size: int = MISSING
    device: str = MISSING
    schedule: str = MISSING
    eval_batch_size: int = MISSING
    progress: Any = MISSING  # auto | true | false
    precision: str = MISSING
    compile: Any = MISSING  # auto | true | false
    compile_mode: str | None = MISSING
    warmup_steps: int = MISSING
    grad_clip: float | None = MISSING
    decay_exempt: bool = MISSING


@dataclass
class SGDConf:
    """torch.optim.SGD; its other keyword arguments (nesterov, dampening, ...) may be added with +."""

    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING


@dataclass
class AdamConf:
    """torch.optim.Adam; its other keyword arguments (amsgrad, ...) may be added with +."""

    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING


@dataclass
class DatasetConf:
    """A torchvision dataset: mnist, fashion_mnist, cifar10."""

    name: str = MISSING
    split_seed: int = MISSING
    train_size: int | None = MISSING
    val_size: Any = MISSING  # a fraction in (0, 1) or a count >= 1 of the training set; 0 or null: none


@dataclass
class DigitsConf(DatasetConf):
    test_fraction: float = MISSING


@dataclass
class MNIST1DConf(DigitsConf):
    num_samples: int = MISSING
    generator_seed: int = MISSING


@dataclass
class LeNetConf:
    name: str = MISSING
    image_size: int | None = MISSING


@dataclass
class MLPConf:
    name: str = MISSING
    depth: int = MISSING
    width: int = MISSING
    activation: str = MISSING
    batch_norm: bool = MISSING


@dataclass
class RecurrentConf:
    """lstm and gru (initbench/models/recurrent.py)."""

    name: str = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    bidirectional: bool = MISSING
    readout: str = MISSING


@dataclass
class CNN1dConf:
    name: str = MISSING
    channels: int = MISSING
    kernel_sizes: list[int] = MISSING
    stride: int = MISSING
    padding: int = MISSING


@dataclass
class ResidualConf:
    """What the residual families share (initbench/models/residual.py)."""

    name: str = MISSING
    depth: int = MISSING
    width: int = MISSING
    branch_gate: str = MISSING  # none | scalar | channel (resmlp, transformer)
    branch_bias: bool = MISSING


@dataclass
class ResMLPConf(ResidualConf):
    activation: str = MISSING
    norm: str = MISSING  # none | layer | batch


@dataclass
class ResNetConf(ResidualConf):
    norm: str = MISSING  # batch | none


@dataclass
class TransformerConf(ResidualConf):
    heads: int = MISSING
    mlp_ratio: int = MISSING
    tokens: str = MISSING  # patches | rows
    patch_size: int = MISSING
    norm_position: str = MISSING  # pre | post
    pool: str = MISSING  # cls | mean
    norm: str = MISSING  # layer | none
    residual_scale: float = MISSING
    attn_scale: str = MISSING  # inv_sqrt_d | inv_d


@dataclass
class TrackingConf:
    """conf/tracking/default.yaml; the URI and experiment are checked by Tracker, which opens them."""

    uri: str = MISSING
    experiment: str = MISSING
    rerun: bool = MISSING
    stale_after_min: float = MISSING
    system_metrics: bool = MISSING


@dataclass
class Config:
    """conf/config.yaml: the groups and the seed. The files of a group bring their own schema (a
    defaults-list line), except init's: a policy file is read as it is by build_policy, which check_config
    runs, since a policy may have parameters of its own (critical's sigma_w) that no one schema lists."""

    model: Any = MISSING
    init: Any = MISSING
    dataset: Any = MISSING
    optimizer: Any = MISSING
    trainer: Any = MISSING
    tracking: Any = MISSING
    paths: Any = MISSING
    seed: int = MISSING


SCHEMAS = {
    "schema/config": Config,
    "schema/trainer/default": TrainerConf,
    "schema/tracking/default": TrackingConf,
    "schema/optimizer/sgd": SGDConf,
    "schema/optimizer/adam": AdamConf,
    "schema/dataset/torchvision": DatasetConf,
    "schema/dataset/digits": DigitsConf,
    "schema/dataset/mnist1d": MNIST1DConf,
    "schema/model/lenet": LeNetConf,
    "schema/model/mlp": MLPConf,
    "schema/model/lstm": RecurrentConf,
    "schema/model/gru": RecurrentConf,
    "schema/model/cnn1d": CNN1dConf,
    "schema/model/resmlp": ResMLPConf,
    "schema/model/resnet": ResNetConf,
    "schema/model/transformer": TransformerConf,
}
for _path, _schema in SCHEMAS.items():
    _group, _name = _path.rsplit("/", 1)
    ConfigStore.instance().store(group=_group, name=_name, node=_schema, provider="initbench")


class ConfigError(ValueError):
    """A config that composed but cannot run; the message lists every problem, one per line."""


def _show(value: Any, quote: bool = True) -> str:
    """`value` as an override writes it: null, true, 0.5, 'text' (text unquoted in lists of options)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value) if isinstance(value, str) and quote else str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


Rule = tuple[Callable[[Any], bool], str]  # (test, what it wants)


def _one_of(options) -> Rule:
    """Exactly one of `options`: true is not 1."""
    return (lambda v: any(type(v) is type(o) and v == o for o in options),
            "one of " + ", ".join(_show(o, quote=False) for o in options))


def _int_in(low: int, high: int | None = None, nullable: bool = False) -> Rule:
    text = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return (lambda v: (nullable and v is None) or (_is_int(v) and low <= v and (high is None or v <= high)),
            text + (" or null" if nullable else ""))


def _real(test: Callable[[float], bool], text: str) -> Rule:
    return (lambda v: _is_real(v) and test(v)), f"a finite number {text}"


def _rules() -> dict[str, Rule]:
    """key -> rule, for keys checked wherever they are present."""
    # imported here, not at the top: this module is imported before Hydra composes, these bring torch
    from .data import VALID as DATASETS

    at_least_1 = _int_in(1)
    return {
        "seed": _int_in(0, SEED_MAX),
        "trainer.epochs": at_least_1,
        "trainer.batch_size": at_least_1,
        "trainer.eval_batch_size": at_least_1,
        "trainer.schedule": _one_of(SCHEDULES),
        "trainer.precision": _one_of(PRECISION_NAMES),
        "trainer.compile": _one_of(SWITCHES),
        "trainer.compile_mode": _one_of(COMPILE_MODES),
        "trainer.progress": _one_of(SWITCHES),
        "trainer.warmup_steps": _int_in(0),
        "trainer.grad_clip": (lambda v: v is None or (_is_real(v) and v > 0), "a finite number > 0 or null"),
        "trainer.decay_exempt": _one_of((True, False)),
        "optimizer.lr": _real(lambda v: 0 < v <= FLOAT32_MAX, f"> 0 that float32 holds (<= {FLOAT32_MAX:.3g})"),
        "optimizer.weight_decay": _real(lambda v: v >= 0, ">= 0"),
        "optimizer.momentum": _real(lambda v: 0 <= v < 1, "in [0, 1)"),
        "optimizer.eps": _real(lambda v: v > 0, "> 0"),
        "optimizer.betas": (lambda v: isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2
                            and all(_is_real(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
        "model.depth": at_least_1,
        "model.width": at_least_1,
        "model.hidden_size": at_least_1,
        "model.num_layers": at_least_1,
        "model.image_size": _int_in(1, nullable=True),
        "model.channels": at_least_1,
        "model.kernel_sizes": (lambda v: isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0
                               and all(_is_int(k) and k >= 1 for k in v), "a non-empty list of integers >= 1"),
        "model.stride": at_least_1,
        "model.padding": _int_in(0),
        "model.heads": at_least_1,
        "model.mlp_ratio": at_least_1,
        "model.patch_size": at_least_1,
        "model.residual_scale": _real(lambda v: v > 0, "> 0"),
        "tracking.rerun": _one_of((True, False)),
        "tracking.system_metrics": _one_of((True, False)),
        "tracking.stale_after_min": _real(lambda v: v > 0, "> 0 (minutes)"),
        "dataset.name": _one_of(DATASETS),
        "dataset.train_size": _int_in(1, nullable=True),
        "dataset.split_seed": _int_in(0, SEED_MAX),
        "dataset.test_fraction": _real(lambda v: 0 < v < 1, "in (0, 1)"),
        "dataset.num_samples": _int_in(10),  # mnist1d: num_samples // 10 of each of the 10 classes
        "dataset.generator_seed": _int_in(0, SEED_MAX),  # NumPy's np.random.seed takes [0, 2**32 - 1]
        "dataset.val_size": (lambda v: v is None or v == 0 or (isinstance(v, float) and 0 < v < 1)
                             or (_is_int(v) and v >= 1), "a fraction in (0, 1), a count >= 1, 0 or null"),
    }


_ABSENT = object()


def _range_problems(cfg: DictConfig) -> list[str]:
    problems = []
    for key, (test, wanted) in _rules().items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not test(value):
            problems.append(f"{key}={_show(value)}: must be {wanted}")
    return problems


def _target_params(target: str) -> list[str] | None:
    """The parameters of `target` that have defaults, which a config may add (None: it takes
    **kwargs); located as instantiate locates it, so Hydra's target policy applies."""
    params = inspect.signature(instantiate({"_target_": target, "_partial_": True}).func).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.default is not p.empty]


def _key_problems(node: DictConfig, prefix: str = "") -> list[str]:
    """In the config (`node`) and its groups: a `_target_` that cannot be imported or that Hydra's target
    policy refuses, and keys added with + to a node with a schema (or, with a `_target_`, not among its
    parameters)."""
    problems = []
    schema = OmegaConf.get_type(node)
    valid = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    if "_target_" in node:
        try:
            params = _target_params(node._target_)
        except Exception as err:  # the same error instantiate would raise later
            return [f"{prefix}_target_={_show(node._target_)}: {type(err).__name__}: {' '.join(str(err).split())}"]
        if valid is not None:
            valid = None if params is None else valid + [p for p in params if p not in valid]
    for key in node:
        if valid is not None and key not in valid:
            value = OmegaConf.to_container(node[key]) if OmegaConf.is_config(node[key]) else node[key]
            problems.append(f"{prefix}{key}={_show(value)}: unknown key; valid: {', '.join(valid)}")
        elif not prefix and key not in NOT_CHECKED and OmegaConf.is_dict(node[key]):
            problems += _key_problems(node[key], f"{prefix}{key}.")
    return problems


def _device_problems(cfg: DictConfig) -> list[str]:
    from .devices import resolve_device

    name = cfg.trainer.device
    try:
        resolve_device(name)
    except RuntimeError as err:  # torch.device's: not a device string
        return [f"trainer.device={_show(name)}: must be auto or a torch device (cpu, cuda, cuda:1, mps); {err}"]
    except ValueError as err:  # resolve_device's: a device this machine lacks
        return [str(err)]
    return []


def _model_problems(cfg: DictConfig) -> list[str]:
    """A family's options of fixed values and its shape rules (build_model's dispatch: no _target_)."""
    from .models import CHOICES
    from .models.resnet import blocks_per_stage

    model = cfg.model
    if "_target_" in model:
        return []
    name, depth, width, heads = (model.get(key) for key in ("name", "depth", "width", "heads"))
    problems = [f"model.{key}={_show(model.get(key))}: must be one of {', '.join(valid)}"
                for key, valid in CHOICES.get(name, {}).items() if key in model and model.get(key) not in valid]
    if name == "resnet" and _is_int(depth) and depth >= 1:
        try:
            blocks_per_stage(depth)
        except ValueError as err:
            problems.append(str(err))
    if name == "transformer" and _is_int(width) and _is_int(heads) and heads >= 1 and width % heads:
        problems.append(f"model.width={width}: must be divisible by model.heads={heads}")
    return problems


def _resize_problems(cfg: DictConfig) -> list[str]:
    """model.image_size resizes images: a 1-D sequence would be stretched into a square image."""
    from .data import SEQUENCES

    size, name = cfg.model.get("image_size"), cfg.dataset.get("name")
    if size is None or name not in SEQUENCES:
        return []
    return [f"model.image_size={_show(size)}: resizes images, but dataset={name} holds 1-D sequences, which "
            f"would be stretched into {size}x{size} images; use a model for sequences (cnn1d, mlp, lstm, gru, "
            "resmlp, transformer) or model.image_size=null"]


def _nesterov_problems(cfg: DictConfig) -> list[str]:
    """torch.optim.SGD's rule: Nesterov momentum needs a momentum and no dampening."""
    opt = cfg.optimizer
    momentum, dampening = opt.get("momentum", 0), opt.get("dampening", 0)
    if not opt.get("nesterov") or (_is_real(momentum) and momentum > 0 and dampening == 0):
        return []
    return [f"optimizer.nesterov=true: needs optimizer.momentum > 0 (is {_show(momentum)}) "
            f"and optimizer.dampening=0 (is {_show(dampening)})"]


def _init_file() -> str | None:
    """The conf/init file Hydra chose for this job; None where Hydra's config is not a job's: no Hydra
    (compose, tests) or a multirun's base config (the batched launcher's jobs see that one)."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode == RunMode.MULTIRUN and OmegaConf.is_missing(hydra.job, "num"):
        return None
    return hydra.runtime.choices.get("init")


def _init_problems(cfg: DictConfig) -> list[str]:
    """The policy's own checks, and its name against its file's when Hydra says which file it is."""
    from .init import InitError, build_policy

    problems = []
    try:
        build_policy(cfg.init)
    except InitError as err:
        problems.append(f"init: {err}")
    chosen = _init_file()
    name = cfg.init.get("name")
    if chosen is not None and name != chosen:
        problems.append(f"init.name={_show(name)}: must be the policy file's name, {chosen!r} "
                        "(the analysis groups runs by init.name)")
    return problems


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _leaf_keys(value, f"{prefix}{key}.")]
    return [prefix[:-1]]


def _interpolation_problems(cfg: DictConfig) -> list[str]:
    """A ${...} that does not resolve, e.g. a policy's `width: ${model.width}` on a model without a width."""
    written = OmegaConf.to_container(cfg, resolve=False)
    problems = []
    for key in _leaf_keys(written):
        if key.split(".")[0] in NOT_CHECKED:
            continue
        try:
            OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except InterpolationResolutionError as err:  # a key not found, a resolver's own error, ...
            value = functools.reduce(lambda node, part: node[part], key.split("."), written)
            problems.append(f"{key}={value}: cannot be resolved ({str(err).splitlines()[0]})")
    return problems


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem (full key, bad value, what is valid) of a composed
    config that its schemas cannot catch: values left ???, keys added with +, ranges, options and
    cross-field rules. Loads no data, opens no store (Tracker checks tracking.uri); paths.* is not checked."""
    missing = [key for key in OmegaConf.missing_keys(cfg) if key.split(".")[0] not in NOT_CHECKED]
    problems = _interpolation_problems(cfg) or [f"{key}: has no value (???)" for key in sorted(missing)]
    if not problems:  # the checks below read values
        problems = (_key_problems(cfg) + _range_problems(cfg) + _device_problems(cfg) + _model_problems(cfg)
                    + _resize_problems(cfg) + _nesterov_problems(cfg) + _init_problems(cfg))
    if problems:
        raise ConfigError(f"invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  "
                          + "\n  ".join(problems))

"""Model families by name, or any importable nn.Module through `_target_`."""

import inspect
from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .cnn1d import CNN1d
from .lenet import LeNet
from .mlp import ACTIVATIONS, MLP
from .recurrent import READOUTS, RowRNN
from .residual import BRANCH_GATES, GATES_WITHOUT_CHANNELS
from .resmlp import NORMS as RESMLP_NORMS
from .resmlp import ResMLP
from .resnet import NORMS as RESNET_NORMS
from .resnet import ResNet
from .transformer import ATTN_SCALES, NORM_POSITIONS, POOLS, TOKENS, Transformer
from .transformer import NORMS as TRANSFORMER_NORMS


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know of its data: input (C, H, W) and the number of classes."""

    channels: int
    height: int
    width: int
    num_classes: int

    @property
    def in_features(self) -> int:
        return self.channels * self.height * self.width


def _lenet(cfg: dict, shape: DataShape) -> nn.Module:
    return LeNet(shape.channels, shape.height, shape.num_classes)


def _options(cfg: dict) -> dict:
    """The config's keys but `name`: the constructor's keyword arguments. The defaults are the constructor's
    (for the Python API) and conf/model/*.yaml's (for a run), never a third copy here."""
    return {k: v for k, v in cfg.items() if k != "name"}


def _mlp(cfg: dict, shape: DataShape) -> nn.Module:
    return MLP(shape.in_features, shape.num_classes, **_options(cfg))


def _lstm(cfg: dict, shape: DataShape) -> nn.Module:
    return RowRNN(nn.LSTM, shape.channels * shape.width, shape.height, shape.num_classes, **_options(cfg))


def _gru(cfg: dict, shape: DataShape) -> nn.Module:
    return RowRNN(nn.GRU, shape.channels * shape.width, shape.height, shape.num_classes, **_options(cfg))


def _cnn1d(cfg: dict, shape: DataShape) -> nn.Module:
    options = _options(cfg)
    if "kernel_sizes" in options:
        options["kernel_sizes"] = tuple(options["kernel_sizes"])
    return CNN1d(shape.channels * shape.width, shape.height, shape.num_classes, **options)


def _resmlp(cfg: dict, shape: DataShape) -> nn.Module:
    return ResMLP(shape.in_features, shape.num_classes, **_options(cfg))


def _resnet(cfg: dict, shape: DataShape) -> nn.Module:
    return ResNet(shape.channels, shape.num_classes, **_options(cfg))


def _transformer(cfg: dict, shape: DataShape) -> nn.Module:
    return Transformer((shape.channels, shape.height, shape.width), shape.num_classes, **_options(cfg))


FAMILIES = {"lenet": _lenet, "mlp": _mlp, "lstm": _lstm, "gru": _gru, "cnn1d": _cnn1d, "resmlp": _resmlp,
            "resnet": _resnet, "transformer": _transformer}
# A family's options that take one of a fixed set of values: check_config reports a bad one before building.
CHOICES = {
    "mlp": {"activation": tuple(ACTIVATIONS)},
    "lstm": {"readout": READOUTS},
    "gru": {"readout": READOUTS},
    "resmlp": {"activation": tuple(ACTIVATIONS), "norm": RESMLP_NORMS, "branch_gate": BRANCH_GATES},
    "resnet": {"norm": RESNET_NORMS, "branch_gate": GATES_WITHOUT_CHANNELS},
    "transformer": {"tokens": TOKENS, "norm_position": NORM_POSITIONS, "pool": POOLS, "branch_gate": BRANCH_GATES,
                    "norm": TRANSFORMER_NORMS, "attn_scale": tuple(ATTN_SCALES)},
}
# Config keys that describe the data a model wants, not constructor arguments.
_NOT_ARGS = {"_target_", "name", "image_size"}


def _user_model(cfg: dict, shape: DataShape) -> nn.Module:
    """Instantiate cfg['_target_'] with the config's arguments through Hydra's instantiate, whose
    target policy refuses what a config must not run (subprocess.Popen, os.system, ...); fill in
    `in_channels`, `in_features`, `image_size` and `num_classes` from the data where the constructor
    takes them and the config does not give them."""
    args = {k: v for k, v in cfg.items() if k not in _NOT_ARGS}
    # _partial_: the target is resolved and checked, not called yet; nested dicts stay plain dicts
    build = instantiate({**args, "_target_": cfg["_target_"], "_partial_": True, "_recursive_": False,
                         "_convert_": "all"})
    from_data = {
        "in_channels": shape.channels,
        "in_features": shape.in_features,
        "image_size": shape.height,
        "num_classes": shape.num_classes,
    }
    accepted = inspect.signature(build.func).parameters
    model = build(**{k: v for k, v in from_data.items() if k in accepted and k not in args})
    if not isinstance(model, nn.Module):
        raise TypeError(f"model._target_ {cfg['_target_']!r} built a {type(model).__name__}, not an nn.Module")
    return model


def build_model(cfg: DictConfig | dict, shape: DataShape) -> nn.Module:
    """Build the model a `model/` config names, sized for `shape`, with PyTorch's default init."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if "_target_" in cfg:
        return _user_model(cfg, shape)
    name = cfg.get("name")
    if name not in FAMILIES:
        raise ValueError(
            f"unknown model {name!r}; valid: {', '.join(sorted(FAMILIES))}, "
            "or a model config with _target_: your.module.YourNet"
        )
    return FAMILIES[name](cfg, shape)

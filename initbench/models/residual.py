"""The residual structure that init policies address by name, shared by resmlp, resnet and transformer.

A residual sub-layer is a `Residual`: y = shortcut(x) + gate(branch(x)), the shortcut the identity unless
the block changes shape. Inside `branch`, the last weight layer (the one that writes into the residual
stream) is named `out`, a norm right after it `out_norm`; the others have other names (`inp`, `qkv`, ...).
Two model options give what some inits need, without the model knowing any init:

- `branch_gate: scalar`: a `ScalarGate` child `gate`, y = x + alpha * branch(x) with alpha = 1 as built
  (the multiplier of Fixup, Zhang et al. 2019; the alpha of SkipInit and ReZero); `channel`: a
  `ChannelGate`, y = x + diag(lambda) branch(x), one lambda per channel, 1 as built (LayerScale, Touvron
  et al. 2021; resmlp and transformer, whose channels are the last dimension); `none`: no gate.
- `branch_bias: true`: a `ScalarBias` (b = 0) before each weight layer and each element-wise activation
  (Fixup, Sec. 3), named `pre_<layer>` (`pre_inp`, `pre_act`, `pre_out`, `pre_head`, ...).
"""

from collections import OrderedDict

import torch
from torch import nn

BRANCH_GATES = ("none", "scalar", "channel")
GATES_WITHOUT_CHANNELS = BRANCH_GATES[:2]  # a model whose channels are not the last dimension (resnet)


def choice(key: str, value: str, valid) -> str:
    """`value` if it is one of `valid`, else a ValueError naming model.`key`, the value and the valid ones."""
    if value not in valid:
        raise ValueError(f"unknown model.{key} {value!r}; valid: {', '.join(valid)}")
    return value


class ScalarGate(nn.Module):
    """y = weight * x, one learnable scalar `weight` (shape ()), 1.0 as built."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class ChannelGate(nn.Module):
    """y = weight * x over the last dimension, one learnable entry of `weight` per channel, 1.0 as built."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class ScalarBias(nn.Module):
    """y = x + bias, one learnable scalar `bias` (shape ()), 0.0 as built."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Residual(nn.Module):
    """y = alpha shortcut(x) + gate(branch(x)): `gate` a ScalarGate or a ChannelGate of `channels` (None for
    branch_gate none), `shortcut` a parameter-free module (None: the identity), alpha = `shortcut_scale` (1:
    DeepNet's alpha otherwise), so that by default y = x + branch(x)."""

    def __init__(self, branch: nn.Module, branch_gate: str = "none", shortcut: nn.Module | None = None,
                 channels: int | None = None, shortcut_scale: float = 1.0):
        super().__init__()
        self.branch = branch
        kind = choice("branch_gate", branch_gate, BRANCH_GATES if channels else GATES_WITHOUT_CHANNELS)
        self.gate = ScalarGate() if kind == "scalar" else ChannelGate(channels) if kind == "channel" else None
        self.shortcut, self.shortcut_scale = shortcut, shortcut_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.gate is not None:
            out = self.gate(out)
        x = x if self.shortcut is None else self.shortcut(x)
        return (x if self.shortcut_scale == 1 else x * self.shortcut_scale) + out


def with_biases(layers: list[tuple[str, nn.Module]], branch_bias: bool, before: tuple[str, ...]) -> nn.Sequential:
    """nn.Sequential of the named `layers`, with a ScalarBias `pre_<name>` before each layer named in
    `before` when `branch_bias` is true."""
    named = []
    for name, layer in layers:
        if branch_bias and name in before:
            named.append((f"pre_{name}", ScalarBias()))
        named.append((name, layer))
    return nn.Sequential(OrderedDict(named))

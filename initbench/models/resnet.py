"""The CIFAR ResNet of He et al. 2016 ("Deep Residual Learning for Image Recognition", Sec. 4.2).

depth = 6n + 2: a 3x3 conv stem, 3 stages of n basic blocks (widths w, 2w, 4w; stages 2 and 3 start
with stride 2), global average pooling and a linear classifier. The shortcut is option A, parameter-free
(stride-2 subsampling, zero channels appended, as in Fixup's code), so every weight is in a branch,
the stem or the head. Convolutions have no bias (BatchNorm or, with branch_bias, Fixup's scalar biases
take that role), as in He et al. and Fixup.
"""

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from .residual import Residual, ScalarBias, choice, with_biases

NORMS = ("batch", "none")


def blocks_per_stage(depth: int) -> int:
    """n for depth = 6n + 2; ValueError naming the valid depths otherwise."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"model.depth={depth}: a CIFAR ResNet has depth 6n+2 with n >= 1 blocks per stage: "
                         "8, 14, 20, 26, 32, 44, 56, 110, ...")
    return (depth - 2) // 6


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option A: x[:, :, ::stride, ::stride] with zero channels appended up to `channels`; no parameters."""

    def __init__(self, stride: int, channels: int):
        super().__init__()
        self.stride, self.channels = stride, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.channels - x.shape[1]))


def _optional(present: bool, layer: tuple[str, nn.Module]) -> list[tuple[str, nn.Module]]:
    return [layer] if present else []


class ResNet(nn.Module):
    """`stem` (conv, norm, pre_act, act) -> `blocks.0` ... `blocks.{3n-1}` -> average pool -> `pre_head` -> `head`.

    Block i is an nn.Sequential of `residual` (a Residual), `pre_act` and `act` (the ReLU after the sum);
    its branch is (`pre_inp`) conv3x3 `inp` -> (BN `inp_norm`) -> (`pre_act`) ReLU `act` -> (`pre_out`)
    conv3x3 `out` -> (BN `out_norm`). BN with norm=batch, `pre_*` ScalarBias with branch_bias, else absent
    (nn.Identity at the top level).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 20,
        width: int = 16,
        norm: str = "batch",
        branch_gate: str = "none",
        branch_bias: bool = False,
    ):
        super().__init__()
        n = blocks_per_stage(depth)
        batch_norm = choice("norm", norm, NORMS) == "batch"
        if width < 1:
            raise ValueError(f"model.width must be >= 1, got {width}")
        self.stem = nn.Sequential(OrderedDict([
            ("conv", _conv3x3(in_channels, width)),
            *_optional(batch_norm, ("norm", nn.BatchNorm2d(width))),
            *_optional(branch_bias, ("pre_act", ScalarBias())),
            ("act", nn.ReLU()),
        ]))
        blocks, c_in = [], width
        for stage in range(3):
            c_out = width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                branch = with_biases([
                    ("inp", _conv3x3(c_in, c_out, stride)),
                    *_optional(batch_norm, ("inp_norm", nn.BatchNorm2d(c_out))),
                    ("act", nn.ReLU()),
                    ("out", _conv3x3(c_out, c_out)),
                    *_optional(batch_norm, ("out_norm", nn.BatchNorm2d(c_out))),
                ], branch_bias, ("inp", "act", "out"))
                shortcut = PadShortcut(stride, c_out) if stride > 1 or c_in != c_out else None
                blocks.append(nn.Sequential(OrderedDict([
                    ("residual", Residual(branch, branch_gate, shortcut)),
                    *_optional(branch_bias, ("pre_act", ScalarBias())),
                    ("act", nn.ReLU()),
                ])))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pre_head = ScalarBias() if branch_bias else nn.Identity()
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(self.pre_head(x.mean((2, 3))))

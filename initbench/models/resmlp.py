"""A residual MLP: the fast way to study residual inits at depth 100+ on the CPU."""

import torch
from torch import nn

from .mlp import ACTIVATIONS
from .residual import Residual, ScalarBias, choice, with_biases

NORMS = ("none", "layer", "batch")


def _norm(kind: str, width: int) -> nn.Module:
    return nn.LayerNorm(width) if kind == "layer" else nn.BatchNorm1d(width)


class ResMLP(nn.Module):
    """Flatten -> Linear `stem` (width) -> depth x Residual -> (final norm) -> Linear `head`.

    Block i is `blocks.i`, a Residual whose branch is
    (`norm`) -> (`pre_inp`) -> Linear `inp` -> (`pre_act`) -> `act` -> (`pre_out`) -> Linear `out`,
    all width -> width: pre-norm (`norm: layer | batch`) or none; a `pre_*` ScalarBias with branch_bias.
    The final norm `norm` is there when the branches have one; `pre_head` (branch_bias) precedes the head.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int = 8,
        width: int = 128,
        activation: str = "relu",
        norm: str = "none",
        branch_gate: str = "none",
        branch_bias: bool = False,
    ):
        super().__init__()
        choice("activation", activation, tuple(ACTIVATIONS))
        choice("norm", norm, NORMS)
        if depth < 1 or width < 1:
            raise ValueError(f"model.depth and model.width must be >= 1, got depth={depth}, width={width}")
        self.stem = nn.Linear(in_features, width)
        blocks = []
        for _ in range(depth):
            layers = [("norm", _norm(norm, width))] if norm != "none" else []
            layers += [("inp", nn.Linear(width, width)), ("act", ACTIVATIONS[activation]()),
                       ("out", nn.Linear(width, width))]
            branch = with_biases(layers, branch_bias, ("inp", "act", "out"))
            blocks.append(Residual(branch, branch_gate, channels=width))
        self.blocks = nn.Sequential(*blocks)
        self.norm = _norm(norm, width) if norm != "none" else nn.Identity()
        self.pre_head = ScalarBias() if branch_bias else nn.Identity()
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pre_head(self.norm(self.blocks(self.stem(x.flatten(1))))))

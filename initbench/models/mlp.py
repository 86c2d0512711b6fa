"""A plain fully connected net on flattened images, deep enough for He et al. 2015's 30 layers."""

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "linear": nn.Identity,  # a deep linear network (Saxe et al. 2014): the model is a product of matrices
}


class MLP(nn.Module):
    """Flatten -> depth x [Linear(width) -> (BatchNorm1d) -> activation] -> Linear(classes).

    Hidden layers are `layers.0`, `layers.1`, ...; the classifier is `head`.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int = 3,
        width: int = 256,
        activation: str = "relu",
        batch_norm: bool = False,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown model.activation {activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}"
            )
        if depth < 1:
            raise ValueError(f"model.depth must be >= 1, got {depth}")
        blocks = []
        for i in range(depth):
            linear = nn.Linear(in_features if i == 0 else width, width)
            norm = nn.BatchNorm1d(width) if batch_norm else nn.Identity()
            blocks.append(nn.Sequential(linear, norm, ACTIVATIONS[activation]()))
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x.flatten(1)))

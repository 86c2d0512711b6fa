"""Users' code that fails: models that raise (in training, in their constructor) and init functions that
misbehave, to test how initbench records and refuses them."""

import torch
from torch import nn


class ExplodingNet(nn.Module):
    """A linear classifier whose third forward pass raises when seed == explode_on_seed."""

    def __init__(self, in_features: int, num_classes: int, seed: int, explode_on_seed: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.armed = seed == explode_on_seed
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.armed and self.calls == 3:
            raise RuntimeError("boom: ExplodingNet was told to fail")
        return self.fc(x.flatten(1))


class BrokenNet(nn.Module):
    """A user's model whose constructor raises: the job stops before its MLflow run opens."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("BrokenNet cannot be built")


def fill_returning_a_new_tensor(tensor, *, generator=None):
    """An init function written out of place: it returns 0.5 everywhere and leaves `tensor` as it was."""
    return torch.full_like(tensor, 0.5)


def fill_nan(tensor, *, generator=None):
    """An init function that fills NaN."""
    return tensor.fill_(float("nan"))

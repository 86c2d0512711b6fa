"""A user's model that raises during training, to test how a sweep records a crashed job."""

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

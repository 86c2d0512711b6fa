"""The LeNet-style `Net` of the PyTorch docs (seed 000), for any channels, image size and classes."""

import torch
from torch import nn
from torch.nn import functional as F


class LeNet(nn.Module):
    """conv(c->6, k3) -> pool2 -> conv(6->16, k3) -> pool2 -> fc 120 -> fc 84 -> fc classes, ReLU.

    For 3x32x32 inputs this is exactly the docs' Net (fc1 takes 16*6*6); for other sizes the
    flatten size is computed: side = ((image_size - 2) // 2 - 2) // 2.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10):
        super().__init__()
        side = ((image_size - 2) // 2 - 2) // 2
        if side < 1:
            raise ValueError(
                f"lenet needs images of at least 10x10 pixels, got {image_size}x{image_size}: "
                "set model.image_size=32 to resize the dataset"
            )
        self.conv1 = nn.Conv2d(in_channels, 6, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

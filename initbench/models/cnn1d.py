"""The 1-D conv net of MNIST-1D (Greydanus & Kobak 2024; `ConvBase` in github.com/greydanus/mnist1d,
notebooks/models.py): 3 Conv1d of 25 channels, kernels 5, 3, 3, stride 2, padding 1, ReLU, linear head."""

import torch
from torch import nn
from torch.nn import functional as F


def conv_length(length: int, kernel_size: int, stride: int, padding: int) -> int:
    """Conv1d's output length: floor((length + 2 padding - kernel_size) / stride) + 1."""
    return (length + 2 * padding - kernel_size) // stride + 1


class CNN1d(nn.Module):
    """(N, C, H, W) read as H steps of C*W features -> len(kernel_sizes) x [Conv1d(channels) -> ReLU]
    -> flatten -> Linear(classes). Convolutions are `convs.0`, `convs.1`, ...; the classifier is `head`.

    For MNIST-1D's 40 steps of 1 feature the lengths are 40 -> 19 -> 10 -> 5, so the head takes
    25 x 5 = 125 features, and the net has the paper's 5,210 parameters.
    """

    def __init__(self, in_channels: int, length: int, num_classes: int, channels: int = 25,
                 kernel_sizes: tuple[int, ...] = (5, 3, 3), stride: int = 2, padding: int = 1):
        super().__init__()
        if not kernel_sizes:
            raise ValueError("model.kernel_sizes must list at least one kernel size, got []")
        convs, out_length = [], length
        for i, kernel_size in enumerate(kernel_sizes):
            out_length = conv_length(out_length, kernel_size, stride, padding)
            if out_length < 1:
                raise ValueError(f"cnn1d: a sequence of {length} steps is too short for model.kernel_sizes="
                                 f"{list(kernel_sizes)}, stride {stride}, padding {padding}: conv {i} leaves "
                                 f"{out_length} steps; use fewer or smaller kernels, or a smaller stride")
            convs.append(nn.Conv1d(in_channels if i == 0 else channels, channels, kernel_size, stride, padding))
        self.convs = nn.ModuleList(convs)
        self.head = nn.Linear(channels * out_length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.permute(0, 1, 3, 2).flatten(1, 2)  # (N, C, H, W) -> (N, C*W, H): H steps, C*W features each
        for conv in self.convs:
            h = F.relu(conv(h))
        return self.head(h.flatten(1))

"""Recurrent classifiers that read an image row by row: H steps of C*W features (28 x 28 for MNIST, 40 x 1
for MNIST-1D), an `nn.LSTM` or `nn.GRU` as `rnn`, a linear `head`."""

import torch
from torch import nn

from .residual import choice

READOUTS = ("last", "all")  # the head reads the last step's output, or every step's, flattened


class RowRNN(nn.Module):
    """(N, C, H, W) -> H steps of C*W features -> `cell` (nn.LSTM or nn.GRU, `num_layers`, one or two
    directions) -> Linear head on the last step's output (readout="last") or on all H steps' outputs
    concatenated (readout="all", H x directions x hidden_size features: MNIST-1D's GRUBase)."""

    def __init__(self, cell: type[nn.RNNBase], in_features: int, length: int, num_classes: int,
                 hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = False, readout: str = "last"):
        super().__init__()
        self.readout = choice("readout", readout, READOUTS)
        self.rnn = cell(in_features, hidden_size, num_layers=num_layers, batch_first=True,
                        bidirectional=bidirectional)
        width = hidden_size * (2 if bidirectional else 1)
        self.head = nn.Linear(width * (length if readout == "all" else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (N, H, C*W)
        out, _ = self.rnn(rows)  # (N, H, directions * hidden_size)
        return self.head(out.flatten(1) if self.readout == "all" else out[:, -1])

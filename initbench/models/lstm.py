"""An LSTM classifier that reads an image row by row (28 steps of 28 features for MNIST)."""

import torch
from torch import nn


class RowLSTM(nn.Module):
    """(N, C, H, W) -> H steps of C*W features -> nn.LSTM -> Linear head on the last hidden state."""

    def __init__(self, in_features: int, num_classes: int, hidden_size: int = 128, num_layers: int = 1):
        super().__init__()
        self.rnn = nn.LSTM(in_features, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (N, H, C*W)
        out, _ = self.rnn(rows)
        return self.head(out[:, -1])

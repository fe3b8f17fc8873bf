"""Seed 003 item 1-1: "log or division easily yields infinities".

A binary classifier with a sigmoid output and the user's own binary cross-entropy,
``-(y * log(p) + (1 - y) * log(1 - p))``, without a clamp. The classes separate well; as the
model becomes confident, p rounds to exactly 1.0 (or 0.0) in float32, log(1 - p) is -inf, and
``0 * -inf`` makes the loss NaN.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def transactions(n: int = 400, features: int = 12, seed: int = 3) -> TensorDataset:
    """Two well-separated clusters; the target is a float 0/1 column [N, 1]."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n, 1), generator=gen).float()
    direction = torch.randn(1, features, generator=gen)
    x = (2 * y - 1) * 3.0 * direction + torch.randn(n, features, generator=gen)
    return TensorDataset(x, y)


class Net(nn.Module):
    def __init__(self, features: int = 12):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 1), nn.Sigmoid())

    def forward(self, x):
        return self.net(x)  # [N, 1] probabilities


def bce(p, y):
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()

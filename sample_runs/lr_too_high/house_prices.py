"""A house-price regressor trained with SGD at lr=0.5: the loss turns NaN within a few steps.

Eight standardised features, a price-like target, a small MLP and MSELoss. Everything is
wired right; only the learning rate is far past the point where SGD with momentum diverges.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class PriceNet(nn.Module):
    def __init__(self, in_features: int = 8, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)  # [N, 1]


def houses(n: int = 1024, features: int = 8, seed: int = 0) -> TensorDataset:
    """Standardised features; the target (price in units of 100k) is [N, 1] like the model's output."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(features, 1, generator=gen)
    x = torch.randn(n, features, generator=gen)
    y = 3.0 + x @ w + 0.3 * torch.tanh(x[:, :1] * x[:, 1:2]) + 0.1 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x, y)

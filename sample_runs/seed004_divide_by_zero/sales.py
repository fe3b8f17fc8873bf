"""Seed 004 section 3: "in a regression, a division by zero; add a small term".

Daily sales of a shop forecast from eight calendar and weather features. The user trains on the
mean absolute percentage error, ``|pred - y| / y``; on the days the shop was closed the sales
are exactly 0, so those samples divide by zero and the batch's loss is Inf (or NaN).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

CLOSED_EVERY = 29   # one day in 29 the shop is closed: 0 sales


def sales(n: int = 448, features: int = 8, seed: int = 4) -> TensorDataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    w = rng.normal(scale=0.3, size=(features, 1))
    y = np.exp(1.0 + x @ w + rng.normal(scale=0.1, size=(n, 1)))        # sales in thousands, > 0
    y[np.arange(n) % CLOSED_EVERY == 5] = 0.0                           # closed days
    return TensorDataset(torch.from_numpy(x), torch.tensor(y, dtype=torch.float32))


class Net(nn.Module):
    def __init__(self, features: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x)  # [N, 1]


def mape(pred, y):
    return (torch.abs(pred - y) / y).mean()

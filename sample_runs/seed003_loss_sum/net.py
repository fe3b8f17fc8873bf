"""Seed 003 item 2-3: "compute the batch's loss as a mean instead of a sum".

A regression MLP for a tabular target. The user's loss is ``MSELoss(reduction='sum')`` (copied
from a snippet that normalised by hand afterwards), so the gradient is 64x what the learning
rate was tuned for at batch 64, and SGD diverges to Inf/NaN in the first steps.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def yields(n: int = 512, features: int = 10, seed: int = 3) -> TensorDataset:
    """Standardised features, a target of unit scale shaped [N, 1] like the output."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(features, 1, generator=gen) / features ** 0.5
    x = torch.randn(n, features, generator=gen)
    return TensorDataset(x, x @ w + 0.2 * torch.sin(3 * x[:, :1]) + 0.1 * torch.randn(n, 1, generator=gen))


class Net(nn.Module):
    def __init__(self, features: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return self.net(x)  # [N, 1]

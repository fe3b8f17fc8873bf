"""Seed 003 item 2-2: "BatchNorm's running mean and std only describe what it saw in train(); in eval() they do not fit".

A BatchNorm MLP on a table that was written class by class (all class 0 rows, then all class 1,
then class 2) and is loaded with ``shuffle: false``. Every batch holds one class: BatchNorm
normalises each batch with that class's own statistics, while its running statistics average
over all three. The same batch scores well in ``model.train()`` and badly in ``model.eval()``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def sorted_table(n: int = 384, features: int = 10, classes: int = 3, seed: int = 3) -> TensorDataset:
    """Gaussian class clusters, rows sorted by class (as exported from a GROUP BY)."""
    gen = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(classes, features, generator=gen)
    y = torch.arange(classes).repeat_interleave(n // classes)             # 0, 0, ..., 1, 1, ..., 2, 2
    return TensorDataset(centers[y] + torch.randn(len(y), features, generator=gen), y)


class Net(nn.Module):
    def __init__(self, features: int = 10, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                 nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        return self.net(x)  # [N, classes] logits

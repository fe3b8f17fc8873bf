"""A healthy patient: standardised features, a small MLP, CrossEntropyLoss, Adam at 1e-3.

Nothing here is wrong; the battery must not raise a critical finding on it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def flowers(n: int = 384, features: int = 8, classes: int = 3, split: str = "train", seed: int = 0) -> TensorDataset:
    """Gaussian class clusters, unit scale, balanced."""
    gen = torch.Generator().manual_seed(seed)
    centers = 1.5 * torch.randn(classes, features, generator=gen)
    gen.manual_seed(seed + (1 if split == "train" else 2))
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(centers[y] + torch.randn(n, features, generator=gen), y)


class Net(nn.Module):
    def __init__(self, features: int = 8, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, classes))

    def forward(self, x):
        return self.net(x)  # [N, classes] logits

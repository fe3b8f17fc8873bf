"""Seed 004, case 3: class labels of the wrong dtype.

The seed: "mind the dtypes your Dataset returns: float, int and long are not
interchangeable". Here the labels come from a float numpy array (as they do from a
pandas column with a missing value, or from ``np.loadtxt``) and ``__getitem__`` turns them
into ``torch.float32``; ``CrossEntropyLoss`` wants ``torch.long`` class indices.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class Readings(Dataset):
    """Sensor readings in three classes, the labels kept as floats."""

    def __init__(self, n: int = 600, features: int = 6, classes: int = 3, seed: int = 4):
        rng = np.random.default_rng(seed)
        centers = rng.normal(scale=2.0, size=(classes, features))
        self.labels = rng.integers(0, classes, size=n).astype(np.float64)  # 0.0, 1.0, 2.0
        self.x = (centers[self.labels.astype(int)] + rng.normal(size=(n, features))).astype(np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.x[i]), torch.tensor(self.labels[i], dtype=torch.float32)


class Net(nn.Module):
    def __init__(self, features: int = 6, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.net(x)  # [N, classes] logits

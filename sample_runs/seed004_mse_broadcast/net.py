"""Seed 004 section 4: "a loss used without knowing its API".

A regression whose dataset returns the target as a scalar per sample (batches of shape [N])
while the model outputs [N, 1]. ``MSELoss`` does not complain (only a UserWarning): it
broadcasts the two into an [N, N] matrix of every output minus every target, and the model
learns to predict the batch mean.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class Houses(Dataset):
    def __init__(self, n: int = 480, features: int = 6, seed: int = 4):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, features)).astype(np.float32)
        w = rng.normal(size=features)
        self.y = (self.x @ w + 0.1 * rng.normal(size=n)).astype(np.float32)   # [n], one number per house

    def __len__(self):
        return len(self.y)

    def __getitem__(self, idx):
        return torch.from_numpy(self.x[idx]), torch.tensor(self.y[idx])       # target shape []: batches are [N]


class Net(nn.Module):
    def __init__(self, features: int = 6):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x)  # [N, 1]

"""Seed 003, "freeze BatchNorm when the batch is tiny": a BatchNorm CNN trained two images at a time.

The user's GPU memory allows a batch of 2, so every BatchNorm layer estimates its mean and
variance from two samples; the running statistics used in eval mode never match.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset


class Net(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # [N,16,8,8]
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))            # [N,32,4,4]
        self.head = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def images(n: int = 512, channels: int = 3, classes: int = 4, seed: int = 0) -> TensorDataset:
    """Class-dependent 16x16 patterns with noise."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, channels, 16, 16, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(patterns[y] + 1.0 * torch.randn(n, channels, 16, 16, generator=gen), y)

"""Seed 003 item 2-2: "the pooling layer's stride is larger than its kernel size".

A small CNN for 24x24 texture patches. The user wanted to shrink the maps faster and wrote
``MaxPool2d(kernel_size=2, stride=3)``: windows of 2 every 3 pixels, so one row and one column
in three (5 of 9 positions) are never read by the pooling, and neither is their gradient.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class Net(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=3),                 # [N,16,8,8]: the bug, stride 3 > kernel 2
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2))                 # [N,32,4,4]
        self.head = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def textures(n: int = 300, classes: int = 3, seed: int = 3) -> TensorDataset:
    """Stripes of three orientations with noise, [N, 1, 24, 24]."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.arange(24).float()
    stripes = torch.stack([torch.sin(r[None, :] * 1.3).expand(24, 24),       # vertical
                           torch.sin(r[:, None] * 1.3).expand(24, 24),       # horizontal
                           torch.sin((r[:, None] + r[None, :]) * 0.9)])      # diagonal
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset((stripes[y] + 0.5 * torch.randn(n, 24, 24, generator=gen)).unsqueeze(1), y)

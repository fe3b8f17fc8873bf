"""Seed 003, "change the init strategy": a CNN whose own init loop forgot the sqrt(2/n) scale.

The seed's example draws conv weights from normal(0, sqrt(2/n)); this user copied the loop
but wrote normal_(0, 1). With activations thousands of times too large,
the single-batch loss stays far above what the same CNN reaches with PyTorch's default init.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset


class Net(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # [N,16,8,8]
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))            # [N,32,4,4]
        self.head = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.data.normal_(0, 1)   # the bug: should be normal_(0, math.sqrt(2. / n))
                m.bias.data.zero_()

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def images(n: int = 256, channels: int = 3, classes: int = 4, seed: int = 0) -> TensorDataset:
    """Class-dependent 16x16 patterns with noise."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, channels, 16, 16, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(patterns[y] + 0.5 * torch.randn(n, channels, 16, 16, generator=gen), y)

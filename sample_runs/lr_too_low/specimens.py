"""Four-channel specimen images, three classes, a small CNN trained with Adam at lr=1e-6.

The model is fine and the data is normalised; at this learning rate the loss simply
does not move ("training and validation loss stay flat", seed 000's first symptom).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class SpecimenNet(nn.Module):
    def __init__(self, in_channels: int = 4, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),   # [N, 16, 8, 8]
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))            # [N, 32, 4, 4]
        self.head = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.head(self.features(x).flatten(1))  # [N, num_classes] logits


def specimens(n: int = 384, channels: int = 4, classes: int = 3, seed: int = 0) -> TensorDataset:
    """Normalised [N, 4, 16, 16] images: a class-specific pattern plus noise."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, channels, 16, 16, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(patterns[y] + 0.8 * torch.randn(n, channels, 16, 16, generator=gen), y)

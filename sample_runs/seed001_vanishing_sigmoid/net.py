"""Seed 001, the first answer: "for vanishing gradients (in LSTMs) even the optimizer matters".

A deep fully-connected classifier built the old way: ten sigmoid layers initialised with small
weights (std 0.05), trained with plain SGD. Each sigmoid multiplies the backward signal by at
most 0.25, so the first layers get gradients orders of magnitude below the last one and the
loss barely moves.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def signals(n: int = 384, features: int = 16, classes: int = 2, seed: int = 1) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    centers = 1.5 * torch.randn(classes, features, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(centers[y] + torch.randn(n, features, generator=gen), y)


class DeepSigmoidNet(nn.Module):
    def __init__(self, features: int = 16, hidden: int = 64, depth: int = 10, classes: int = 2):
        super().__init__()
        layers, width = [], features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Sigmoid()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.05)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.out(self.body(x))  # [N, classes] logits

"""Small models and synthetic datasets the example configs name.

Copy a config, then point its ``_target_`` entries at your own code instead:
``your_file.py:YourNet`` (a path relative to the config) or ``package.module.Name``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class MLP(nn.Module):
    """A small multilayer perceptron: in_features -> hidden -> hidden -> out_features."""

    def __init__(self, in_features: int = 20, hidden: int = 64, out_features: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_features))

    def forward(self, x):
        return self.net(x)  # [N, out_features] raw scores (logits)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head for [N, C, 16, 16] images."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # [N,16,8,8]
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))            # [N,32,4,4]
        self.head = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def blobs(n: int = 512, features: int = 20, classes: int = 3, split: str = "train", seed: int = 0) -> TensorDataset:
    """Gaussian class clusters: learnable, roughly unit scale, balanced."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=gen) * 2.0
    gen.manual_seed(seed + (1 if split == "train" else 2))
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centers[y] + torch.randn(n, features, generator=gen)
    return TensorDataset(x, y)


def images(n: int = 256, channels: int = 3, classes: int = 4, split: str = "train", seed: int = 0) -> TensorDataset:
    """Class-dependent image patterns with noise, [N, C, 16, 16]."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, channels, 16, 16, generator=gen)
    gen.manual_seed(seed + (1 if split == "train" else 2))
    y = torch.randint(0, classes, (n,), generator=gen)
    x = patterns[y] + 0.5 * torch.randn(n, channels, 16, 16, generator=gen)
    return TensorDataset(x, y)


def regression(n: int = 512, features: int = 8, split: str = "train", seed: int = 0) -> TensorDataset:
    """y = x @ w + noise, targets shaped [N, 1] to match a Linear(…, 1) output."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(features, 1, generator=gen)
    gen.manual_seed(seed + (1 if split == "train" else 2))
    x = torch.randn(n, features, generator=gen)
    return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=gen))


def train_step(model, batch, loss_fn, optimizer, clip: float | None = None):
    """A custom step: the same as the default one, with optional gradient clipping.

    nandoctor calls it as ``train_step(model, batch, loss_fn, optimizer)`` and expects the loss tensor back.
    """
    inputs, targets = batch
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss

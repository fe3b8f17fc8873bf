"""Seed 003 item 2-1 (and seed 004 item 5): "clear the gradients before every batch: optimizer.zero_grad()".

The user's own training step, written from memory: forward, loss, backward, step. The
``optimizer.zero_grad()`` line is missing, so every ``backward()`` adds to the gradients of all
previous batches and the effective step grows until the loss oscillates and climbs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def digits(n: int = 384, features: int = 16, classes: int = 4, seed: int = 3) -> TensorDataset:
    """Gaussian clusters, standardised, balanced."""
    gen = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(classes, features, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(centers[y] + torch.randn(n, features, generator=gen), y)


class Net(nn.Module):
    def __init__(self, features: int = 16, classes: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        return self.net(x)


def train_step(model, batch, loss_fn, optimizer):
    inputs, labels = batch
    outputs = model(inputs)
    loss = loss_fn(outputs, labels)
    loss.backward()          # optimizer.zero_grad() was never called: gradients pile up
    optimizer.step()
    return loss

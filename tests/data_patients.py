"""Tiny data patients for the data scan: one dirty dataset per data diagnosis, and clean ones."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from patients import blobs


def with_nan_rows(rows=(5, 77, 190), n=256) -> TensorDataset:
    """Blobs with a NaN in one feature of a few samples (a CSV with missing values)."""
    x, y = blobs(n=n).tensors
    x = x.clone()
    for r in rows:
        x[r, 3] = float("nan")
    return TensorDataset(x, y)


def labels_off_by_one(n=256) -> TensorDataset:
    """Labels 1..3 for a model with 3 outputs (1-based labels)."""
    x, y = blobs(n=n).tensors
    return TensorDataset(x, y + 1)


def float_labels(n=256) -> TensorDataset:
    """Class labels stored as float32 (what an integer column with a missing value becomes in pandas)."""
    x, y = blobs(n=n).tensors
    return TensorDataset(x, y.float())


def scaled(factor=300.0, n=256) -> TensorDataset:
    x, y = blobs(n=n).tensors
    return TensorDataset(x * factor + factor, y)


def constant_column(col=4, value=5.0, n=256) -> TensorDataset:
    x, y = blobs(n=n).tensors
    x = x.clone()
    x[:, col] = value
    return TensorDataset(x, y)


def index_column(n=256) -> TensorDataset:
    """A saved row index (0..n-1) as the first feature."""
    x, y = blobs(n=n, features=9).tensors
    return TensorDataset(torch.cat([torch.arange(n, dtype=torch.float32)[:, None], x], 1), y)


def imbalanced(counts=(300, 300, 12), seed=0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(len(counts), 10, generator=gen) * 2.0
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    x = centers[y] + torch.randn(len(y), 10, generator=gen)
    perm = torch.randperm(len(y), generator=gen)
    return TensorDataset(x[perm], y[perm])


def regression(n=256, features=8, seed=0, corrupt=()) -> TensorDataset:
    """y = x @ w + noise, [N, 1]; the ``corrupt`` samples get a target 1000x too large."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(features, 1, generator=gen)
    x = torch.randn(n, features, generator=gen)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=gen)
    for i in corrupt:
        y[i] = 3000.0
    return TensorDataset(x, y)


class Flaky(Dataset):
    """A dataset whose __getitem__ raises for some indices (a missing file, a corrupt row)."""

    def __init__(self, base: Dataset, broken=(7,)):
        self.base, self.broken = base, set(broken)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i in self.broken:
            raise FileNotFoundError(f"sample_{i}.npy")
        return self.base[i]


def images(n=128, channels=3, classes=4, seed=0, scale=1.0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, channels, 8, 8, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset((patterns[y] + 0.5 * torch.randn(n, channels, 8, 8, generator=gen)) * scale, y)


def bn_cnn(channels=3, classes=4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, classes))


def reg_mlp(features=8) -> nn.Module:
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 1))


def standardised_with_a_constant_column(col=2, n=256) -> TensorDataset:
    """Columns standardised by (x - mean) / std where one column is constant: 0 / 0 = NaN in every sample."""
    x, y = blobs(n=n).tensors
    x = x.clone()
    x[:, col] = 1.0
    return TensorDataset((x - x.mean(0)) / x.std(0), y)

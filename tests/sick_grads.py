"""Tiny sick patients for gradient health, init comparison and BatchNorm (shared by tests and sample runs)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset


def regression(n=256, features=8, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    w = torch.randn(features, 1, generator=gen)
    return TensorDataset(x, scale * (x @ w) + 0.1 * torch.randn(n, 1, generator=gen))


def deep_relu(features=8, hidden=64, depth=6, out=1):
    """A plain deep ReLU MLP, PyTorch default init: fine with Adam, explodes with SGD+momentum at 0.05."""
    layers = []
    for i in range(depth):
        layers += [nn.Linear(features if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, out))


def deep_sigmoid(features=10, hidden=32, depth=10, classes=3):
    """Ten sigmoid layers: the gradient reaching the first one is ~1e-8 of the last one's."""
    layers = []
    for i in range(depth):
        layers += [nn.Linear(features if i == 0 else hidden, hidden), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(hidden, classes))


def custom_init_mlp(kind="zero", features=10, hidden=64, depth=3, classes=3):
    """An MLP whose factory applies its own init: ``zero`` weights, or normal with std ``kind``."""
    layers = []
    for i in range(depth):
        layers += [nn.Linear(features if i == 0 else hidden, hidden), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(hidden, classes))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if kind == "zero":
                nn.init.zeros_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, float(kind))
            nn.init.zeros_(m.bias)
    return model


def bn_mlp(features=10, hidden=32, classes=3):
    return nn.Sequential(nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, classes))


def bn_cnn(channels=3, classes=4):
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 2 * 2, classes))


def images(n=256, channels=3, classes=4, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, channels, size, size, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(patterns[y] + 0.5 * torch.randn(n, channels, size, size, generator=gen), y)


class SoftmaxInEval(nn.Module):
    """Returns probabilities in eval mode "for inference": CrossEntropyLoss then scores them as logits."""

    def __init__(self, features=10, hidden=32, classes=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        logits = self.net(x)
        return logits if self.training else F.softmax(logits, dim=1)

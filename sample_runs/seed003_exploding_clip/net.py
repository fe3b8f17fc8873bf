"""Seed 003, "gradient clipping": a deep plain ReLU regressor trained with SGD and momentum.

Eight layers without normalisation and targets of a few units: the gradient norm grows
step after step until the loss is Inf. Clipping the gradient norm keeps the same model,
data, optimizer and learning rate training.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def deep_mlp(in_features: int = 8, hidden: int = 64, depth: int = 6) -> nn.Sequential:
    layers = []
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, 1))   # [N, 1]


def regression(n: int = 512, features: int = 8, scale: float = 3.0, seed: int = 0) -> TensorDataset:
    """y = scale * (x @ w) + noise, targets [N, 1]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    w = torch.randn(features, 1, generator=gen)
    return TensorDataset(x, scale * (x @ w) + 0.1 * torch.randn(n, 1, generator=gen))

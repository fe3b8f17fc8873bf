"""Seed 003, "one column very small, one very large easily gives NaN: normalise the data".

A loan table fed to the network as it comes out of the database, to predict the interest rate
(in %): annual income in dollars (~6e4), loan amount (~1.5e4), age in years, number of open
accounts, and a debt ratio (~0.3). Nothing is standardised; SGD at a learning rate that is fine
for unit-scale inputs takes the loss to Inf and NaN within three steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

COLUMNS = ("income", "loan_amount", "age", "open_accounts", "debt_ratio")


def loans(n: int = 512, seed: int = 3) -> TensorDataset:
    rng = np.random.default_rng(seed)
    income = rng.lognormal(np.log(60_000), 0.5, n)
    loan = rng.lognormal(np.log(15_000), 0.6, n)
    age = rng.uniform(21, 70, n)
    accounts = rng.poisson(4, n).astype(float)
    debt_ratio = rng.beta(2, 5, n)
    x = np.stack([income, loan, age, accounts, debt_ratio], axis=1)            # [n, 5], raw units
    rate = 6 + 8 * loan / income + 10 * debt_ratio - 0.05 * (age - 40) + rng.normal(0, 0.5, n)
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(rate[:, None], dtype=torch.float32))


class Net(nn.Module):
    def __init__(self, in_features: int = 5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                 nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x)  # [N, 1] interest rate in %

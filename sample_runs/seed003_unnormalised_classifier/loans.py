"""Seed 003, "one column very small, one very large: normalise the data".

The classifier twin of ``seed003_unnormalised_columns``: the same raw loan table (income in
dollars ~6e4 beside a debt ratio ~0.3) predicts default or not with CrossEntropyLoss. SGD's
first steps take the loss from thousands to 1e10; the ReLUs die and the model settles at a
constant prediction (loss ln 2), where cross-entropy stays finite.
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
    risk = 2.5 * loan / income + 3.0 * debt_ratio - 0.02 * (age - 40) + rng.normal(0, 0.3, n)
    y = (risk > np.median(risk)).astype(np.int64)
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.from_numpy(y))


class Net(nn.Module):
    def __init__(self, in_features: int = 5, classes: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                 nn.Linear(32, classes))

    def forward(self, x):
        return self.net(x)  # [N, classes] logits

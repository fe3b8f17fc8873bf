"""Seed 004, case 1 "outliers: values outside the normal range".

A standardised patient table exported from a lab system that writes 99999 where a measurement
failed. The user handled the empty cells (``df.fillna``) but not the sentinel: three rows carry
99999 in the cholesterol column, 30 000 times the scale of every other value. Each time one of
them is drawn its gradient dominates the batch. ``make_csv()`` rebuilds ``train.csv``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

COLUMNS = ["age", "resting_bp", "cholesterol", "max_heart_rate", "oldpeak", "glucose"]
SENTINEL = 99999.0


class Net(nn.Module):
    def __init__(self, in_features: int = 6, hidden: int = 32, classes: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)  # [N, classes] logits


def make_csv(path: str = "train.csv", n: int = 500, seed: int = 4) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(COLUMNS)))
    outcome = (x @ rng.normal(size=len(COLUMNS)) + 0.5 * rng.normal(size=n) > 0).astype(int)
    df = pd.DataFrame(np.round(x, 3), columns=COLUMNS)
    df.loc[[41, 207, 388], "cholesterol"] = SENTINEL   # "measurement failed"
    df["outcome"] = outcome
    df.to_csv(path, index=False)


if __name__ == "__main__":
    make_csv()

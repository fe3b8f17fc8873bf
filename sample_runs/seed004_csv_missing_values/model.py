"""Seed 004, case 1: a CSV with missing values, read with pandas, NaN straight into the model.

The user standardised the columns with pandas ((df - df.mean()) / df.std() keeps NaN) and
saved them; a few cells were empty in the source file. Nothing complains until the loss is
NaN from the first epoch. ``make_csv()`` rebuilds ``train.csv`` the way it was made.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

COLUMNS = ["pregnancies", "glucose", "blood_pressure", "skin_thickness", "insulin", "bmi", "pedigree", "age"]


class Net(nn.Module):
    def __init__(self, in_features: int = 8, hidden: int = 32, classes: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)  # [N, classes] logits


def make_csv(path: str = "train.csv", n: int = 600, seed: int = 4) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(COLUMNS)))
    outcome = (x @ rng.normal(size=len(COLUMNS)) + 0.5 * rng.normal(size=n) > 0).astype(int)
    df = pd.DataFrame(np.round(x, 3), columns=COLUMNS)
    for col, rows in (("skin_thickness", rng.choice(n, 9, replace=False)), ("insulin", rng.choice(n, 5, replace=False))):
        df.loc[rows, col] = np.nan  # empty cells in the source file
    df["outcome"] = outcome
    df.to_csv(path, index=False)


if __name__ == "__main__":
    make_csv()

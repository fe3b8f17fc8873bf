"""Seed 004, case 2: a CSV saved with its pandas index and read back, so the index became a feature.

The seed's own code: read Output.csv, split it, and write the parts with ``to_csv`` (which
writes the index as a first, unnamed column):

    Output = pd.read_csv('Output.csv')
    trainOutput, testOutput = Output[:6000], Output[6000:]
    trainOutput.to_csv('trainOutput.csv')

Read back, that column is 'Unnamed: 0' = 0, 1, 2, ... and the model counts it as a
ninth input. ``make_csv()`` rebuilds ``trainOutput.csv`` the same way (smaller).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

COLUMNS = ["pregnancies", "glucose", "blood_pressure", "skin_thickness", "insulin", "bmi", "pedigree", "age"]


class Net(nn.Module):
    def __init__(self, in_features: int = 9, hidden: int = 32, classes: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)  # [N, classes] logits


def make_csv(n: int = 1000, split: int = 800, seed: int = 4) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(COLUMNS)))
    outcome = (x @ rng.normal(size=len(COLUMNS)) + 0.5 * rng.normal(size=n) > 0).astype(int)
    output = pd.DataFrame(np.round(x, 3), columns=COLUMNS)
    output["outcome"] = outcome
    train_output, test_output = output[:split], output[split:]
    train_output.to_csv("trainOutput.csv")  # the index is written as a first, unnamed column
    test_output.to_csv("testOutput.csv")


if __name__ == "__main__":
    make_csv()

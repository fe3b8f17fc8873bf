"""Seed 003, "dirty data: NaN in the first epoch".

Log-intensity spectra: the user takes ``np.log`` of the photon counts of each of 32 channels.
A few recordings come from a detector that read nothing in some channels: their counts are 0,
their log is -inf, and any batch that holds one of them makes the loss NaN. The seed's advice
(batch_size=1, shuffle=False, look at every sample) is what the data scan does for the user.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

DEAD_RECORDINGS = (37, 118, 254, 301)   # detector dropouts: some channels counted nothing


class Spectra(Dataset):
    def __init__(self, n: int = 480, channels: int = 32, classes: int = 3, seed: int = 3):
        rng = np.random.default_rng(seed)
        peaks = rng.uniform(50, 400, size=(classes, channels))           # mean counts per class and channel
        self.labels = rng.integers(0, classes, size=n)
        counts = rng.poisson(peaks[self.labels]).astype(np.float64)      # [n, channels]
        for i in DEAD_RECORDINGS:
            if i < n:
                counts[i, rng.choice(channels, size=5, replace=False)] = 0.0
        with np.errstate(divide="ignore"):
            logc = np.log(counts)                                        # log(0) = -inf for the dropouts
        self.x = ((logc - 5.0) / 0.7).astype(np.float32)                 # roughly unit scale otherwise

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        return torch.from_numpy(self.x[idx]), int(self.labels[idx])


class Net(nn.Module):
    def __init__(self, channels: int = 32, classes: int = 3):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x):
        return self.fc(x)  # [N, classes] logits

"""Seed 003, the seed's own Normalize: ``(x - mean) / std`` with ``np.seterr(divide='ignore', invalid='ignore')``.

Readings from eight sensors of a machine; sensor 5 is a pressure gauge that was never connected
on this line and always reads 0.0. The user's transform is the seed's, applied to the whole
table: its std is 0, the warnings are silenced, and the column becomes 0/0 = NaN in every row.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class Normalize(object):
    def __call__(self, sample):
        image, box = sample['image'], sample['box']
        mean = np.mean(image.astype(np.float32), axis=0)
        std = np.std(image.astype(np.float32), axis=0)
        np.seterr(divide='ignore', invalid='ignore')
        image_nor = (image.astype(np.float32) - mean) / std
        return {'image': image_nor, 'box': box}


class Sensors(Dataset):
    def __init__(self, n: int = 400, seed: int = 3):
        rng = np.random.default_rng(seed)
        readings = rng.normal(loc=[20, 1.5, 300, 0.8, 55, 0.0, 12, 7], scale=[2, 0.2, 30, 0.1, 5, 0.0, 1, 0.5],
                              size=(n, 8))                                     # column 5 never moves
        fault = (readings[:, 0] - 20) / 2 + (readings[:, 2] - 300) / 30 + rng.normal(0, 0.5, n) > 0.5
        sample = Normalize()({'image': readings, 'box': fault.astype(np.int64)})
        self.x, self.y = sample['image'], sample['box']

    def __len__(self):
        return len(self.y)

    def __getitem__(self, idx):
        return torch.from_numpy(self.x[idx]), int(self.y[idx])


class Net(nn.Module):
    def __init__(self, in_features: int = 8, classes: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.net(x)  # [N, classes] logits

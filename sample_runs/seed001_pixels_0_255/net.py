"""Seed 001, the first comment: "are your inputs in [0, 1] or [0, 255]? [0, 255] did not work well for me".

Chest X-ray crops stored as uint8 and converted with ``torch.from_numpy(img).float()``: the
division by 255 (or a Normalize) was forgotten, so the CNN sees pixels of 0..255. The logits
start in the hundreds, and SGD at a learning rate that suits inputs in [0, 1] overshoots on the
first steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class XRays(Dataset):
    def __init__(self, n: int = 256, size: int = 16, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 2, size=n)
        yy, xx = np.mgrid[:size, :size]
        blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 3) ** 2) / 20.0)          # an opacity
        base = rng.normal(110, 25, size=(n, size, size)) + 60 * self.labels[:, None, None] * blob
        self.images = np.clip(base, 0, 255).astype(np.uint8)                         # [n, H, W] 0..255

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        img = torch.from_numpy(self.images[idx]).float().unsqueeze(0)                # [1, H, W], 0..255: no /255
        return img, int(self.labels[idx])


class Net(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),       # [N,16,8,8]
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))      # [N,32,4,4]
        self.head = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))

"""Seed 002 reproduced: a small bottleneck ResNet for 14-channel satellite tiles, 7 classes.

The user's question: the loss climbs every epoch and accuracy is stuck at 0.17 (1/7).
The cause is in forward(): ``self.adjBlock = nn.Conv2d(...)`` builds the shortcut
convolution anew on every call, so its weights are random, different each step and
never trained (the optimizer was built before it existed). The tiles are 8x8 upsampled
to 16x16 (the user went to 64x64; 16x16 keeps the run short on a laptop CPU).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset


def bottleneck(channels: int) -> nn.Sequential:
    """1x1 to channels/2, 3x3 at channels/2, 1x1 back to channels; BN and ReLU between, dropout at the end."""
    half = channels // 2
    return nn.Sequential(
        nn.Conv2d(channels, half, 1), nn.BatchNorm2d(half), nn.ReLU(),
        nn.Conv2d(half, half, 3, padding=1), nn.BatchNorm2d(half), nn.ReLU(),
        nn.Conv2d(half, channels, 1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Dropout(0.1))


class ResNet(nn.Module):
    def __init__(self, in_channels: int = 14, conv_channels: int = 32, num_classes: int = 7, size: int = 16):
        super().__init__()
        self.conv_channels = conv_channels
        self.conv1block = nn.Sequential(nn.Conv2d(in_channels, conv_channels, 3, stride=2, padding=1),
                                        nn.BatchNorm2d(conv_channels), nn.ReLU())
        self.conv2block = bottleneck(conv_channels)
        self.conv3block = bottleneck(conv_channels * 2)
        side = size // 4
        self.linear_block = nn.Sequential(nn.Flatten(), nn.Linear(conv_channels * 2 * side * side, 128), nn.ReLU(),
                                          nn.Linear(128, num_classes))

    def forward(self, x, conv_channels=None):
        conv_channels = conv_channels or self.conv_channels

        # Initial Convolution Block
        self.conv1Out = self.conv1block(x)

        # Residual Block 1
        self.conv2Out_1 = self.conv2block(self.conv1Out)
        self.res1 = self.conv2Out_1 + self.conv1Out

        # Residual Block 2 - the sum happens after the resize
        self.conv2Out_2 = self.conv2block(self.res1)
        self.adjBlock = nn.Conv2d(in_channels=conv_channels,
                                  out_channels=conv_channels * 2,
                                  kernel_size=1,
                                  stride=2)
        self.conv2Out_2 = self.adjBlock(self.conv2Out_2)
        self.res1_adj = self.adjBlock(self.res1)
        self.res2 = self.conv2Out_2 + self.res1_adj

        # Residual Block 3
        self.conv3Out = self.conv3block(self.res2)
        self.res3 = self.conv3Out + self.res2

        # Fully Connected Layer
        self.final = self.linear_block(self.res3)
        return self.final


def tiles(n: int = 588, channels: int = 14, classes: int = 7, size: int = 16, split: str = "train",
          seed: int = 0) -> TensorDataset:
    """Synthetic 8x8 multispectral tiles (a class = a spectral signature plus a blob), upsampled to ``size``."""
    gen = torch.Generator().manual_seed(seed)
    signatures = torch.randn(classes, channels, 1, 1, generator=gen)
    blobs = torch.randn(classes, 1, 8, 8, generator=gen)
    gen.manual_seed(seed + (0 if split == "train" else 1000))
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=gen)]
    x = signatures[y] + 0.5 * blobs[y] + 0.8 * torch.randn(n, channels, 8, 8, generator=gen)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return TensorDataset(x, y)

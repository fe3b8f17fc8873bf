"""Seed 001, re-expressed in PyTorch: a frozen feature extractor, a Dense head with ReLU.

The original (Keras): VGG16 without its top, frozen; Flatten; Dense(2,
activation='relu'); loss 'categorical_crossentropy' on one-hot labels; Adam
lr=1e-4. The loss fell for two epochs, then turned NaN and accuracy dropped to
0.5. The cause: the ReLU output layer. Keras' categorical cross-entropy
normalises the outputs to sum 1, clips them with an epsilon and takes the log;
a row of ReLU outputs that are all zero gives 0/0 = NaN, and an output clipped
at zero for the target class costs -log(eps) = 16 with no gradient to recover.
The fix the asker found: activation='softmax'.

With the config's seed the copy behaves as the question describes: both outputs
start positive, the loss falls from 0.86 towards 0.05 while training pushes the
wrong class's output down to zero, and then a row whose outputs are both zero
turns the loss NaN.

Here the extractor is a small conv stack with fixed seeded weights (standing in
for the pretrained VGG16) on 3x32x32 images, so the run takes seconds on a CPU.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset


class FrozenFeaturesReluHead(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        # the "pretrained" base: frozen, as layer.trainable = False in the question
        self.base = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # (16, 16, 16)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (32, 8, 8)
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))   # (32, 4, 4)
        for p in self.base.parameters():
            p.requires_grad_(False)
        # Flatten + Dense(numclasses, activation='relu')
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, num_classes), nn.ReLU())

    def forward(self, x):
        return self.head(self.base(x))


def categorical_crossentropy(y_pred, y_true, eps: float = 1e-7):
    """Keras' categorical cross-entropy on probabilities: normalise to sum 1, clip, log."""
    y_pred = y_pred / y_pred.sum(-1, keepdim=True)
    y_pred = y_pred.clamp(eps, 1.0 - eps)
    return -(y_true * torch.log(y_pred)).sum(-1).mean()


def chest_xrays(n: int = 320, split: str = "train", seed: int = 0) -> TensorDataset:
    """Images in [0, 1] (as in the question): noise with a bright upper (class 0) or lower (class 1) half.

    Labels are one-hot, as Keras' ``to_categorical`` makes them.
    """
    gen = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
    y = torch.randint(0, 2, (n,), generator=gen)
    x = 0.6 * torch.rand(n, 3, 32, 32, generator=gen)
    x[y == 0, :, :16] += 0.4
    x[y == 1, :, 16:] += 0.4
    return TensorDataset(x, nn.functional.one_hot(y, 2).float())

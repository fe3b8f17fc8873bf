"""Small models and synthetic datasets the example configs name.

Copy a config, then point its ``_target_`` entries at your own code instead:
``your_file.py:YourNet`` (a path relative to the config) or ``package.module.Name``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class MLP(nn.Module):
    """A small multilayer perceptron: in_features -> hidden -> hidden -> out_features."""

    def __init__(self, in_features: int = 20, hidden: int = 64, out_features: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_features))

    def forward(self, x):
        return self.net(x)  # [N, out_features] raw scores (logits)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head for [N, C, 16, 16] images."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),  # [N,16,8,8]
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))            # [N,32,4,4]
        self.head = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def blobs(n: int = 512, features: int = 20, classes: int = 3, split: str = "train", seed: int = 0) -> TensorDataset:
    """Gaussian class clusters: learnable, roughly unit scale, balanced."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=gen) * 2.0
    gen.manual_seed(seed + (1 if split == "train" else 2))
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centers[y] + torch.randn(n, features, generator=gen)
    return TensorDataset(x, y)


def images(n: int = 256, channels: int = 3, classes: int = 4, split: str = "train", seed: int = 0) -> TensorDataset:
    """Class-dependent image patterns with noise, [N, C, 16, 16]."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, channels, 16, 16, generator=gen)
    gen.manual_seed(seed + (1 if split == "train" else 2))
    y = torch.randint(0, classes, (n,), generator=gen)
    x = patterns[y] + 0.5 * torch.randn(n, channels, 16, 16, generator=gen)
    return TensorDataset(x, y)


def regression(n: int = 512, features: int = 8, split: str = "train", seed: int = 0) -> TensorDataset:
    """y = x @ w + noise, targets shaped [N, 1] to match a Linear(…, 1) output."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(features, 1, generator=gen)
    gen.manual_seed(seed + (1 if split == "train" else 2))
    x = torch.randn(n, features, generator=gen)
    return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=gen))


def train_step(model, batch, loss_fn, optimizer, clip: float | None = None):
    """A custom step: the same as the default one, with optional gradient clipping.

    nandoctor calls it as ``train_step(model, batch, loss_fn, optimizer)`` and expects the loss tensor back.
    """
    inputs, targets = batch
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss


# --- the training set-ups of configs/scheduler.yaml, mixed_precision.yaml, collate.yaml ----------------


class Sequences(torch.utils.data.Dataset):
    """Token sequences of different lengths (4..24 tokens, ids 1..vocab-1; 0 is padding), one label each.

    Each class has its own keywords that appear more often in its sequences. The samples cannot be
    stacked by the default collate: ``pad_batch`` pads them.
    """

    def __init__(self, n: int = 512, vocab: int = 50, classes: int = 3, min_len: int = 4, max_len: int = 24,
                 split: str = "train", seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        keywords = torch.randperm(vocab - 1, generator=gen)[:classes * 4].view(classes, 4) + 1  # [classes, 4]
        gen.manual_seed(seed + (1 if split == "train" else 2))
        self.labels = torch.randint(0, classes, (n,), generator=gen)
        self.tokens = []
        for y in self.labels.tolist():
            length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
            seq = torch.randint(1, vocab, (length,), generator=gen)
            mask = torch.rand(length, generator=gen) < 0.4  # 40% of the tokens are the class's keywords
            seq[mask] = keywords[y][torch.randint(0, 4, (int(mask.sum()),), generator=gen)]
            self.tokens.append(seq)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.tokens[i], self.labels[i]   # ([L] int64, scalar int64), L varies


def pad_batch(samples, pad_value: int = 0):
    """collate_fn: pad variable-length sequences to the longest one in the batch.

    [(tokens [L_i], label)] -> (tokens [N, max L_i] with ``pad_value`` after each sequence, labels [N])
    """
    tokens = torch.nn.utils.rnn.pad_sequence([t for t, _ in samples], batch_first=True, padding_value=pad_value)
    return tokens, torch.stack([torch.as_tensor(y) for _, y in samples])


class BagOfEmbeddings(nn.Module):
    """Mean of the token embeddings (padding left out), then an MLP: [N, L] token ids -> [N, classes] logits."""

    def __init__(self, vocab: int = 50, dim: int = 32, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, classes))

    def forward(self, tokens):
        mask = (tokens != 0).unsqueeze(-1).float()                                  # [N, L, 1]
        pooled = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)   # [N, dim]
        return self.head(pooled)


def warmup_cosine(optimizer, warmup_steps: int = 50, total_steps: int = 2000):
    """A scheduler factory (any callable taking the optimizer first works): linear warm-up, then cosine decay."""
    import math

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

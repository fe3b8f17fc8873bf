"""Seed 003 item 3-2: "give the optimizer an eps so that the denominator is never 0" (Adam(..., eps=1e-4)).

Review sentiment from bag-of-words counts over a 120-word vocabulary. The user's Adam has
``eps=0`` (copied from a config that set "epsilon: 0"). Adam divides the running mean of each
gradient by the square root of its running square plus eps: for the weights of words that have
not appeared in any batch yet the gradient is exactly 0, so the update is 0 / 0 = NaN, the
weights turn NaN after the first step, and so does every output.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def reviews(n: int = 384, vocab: int = 120, words: int = 12, seed: int = 3) -> TensorDataset:
    """Word counts [N, vocab]; a review uses 12 words, the frequent ones far more often; label 0/1."""
    gen = torch.Generator().manual_seed(seed)
    freq = 1.0 / torch.arange(1, vocab + 1).float()                      # Zipf: most words are rare
    sentiment = torch.randn(vocab, generator=gen)
    idx = torch.multinomial(freq.expand(n, vocab), words, replacement=True, generator=gen)   # [N, words]
    counts = torch.zeros(n, vocab).scatter_add_(1, idx, torch.ones(n, words))
    y = ((counts @ sentiment) > 0).long()
    return TensorDataset(counts, y)


class Net(nn.Module):
    def __init__(self, vocab: int = 120, classes: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(vocab, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.net(x)  # [N, classes] logits

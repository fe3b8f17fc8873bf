"""Cost of the Recorder (per-layer grad/weight norms, activation mean/std, dead/saturated units) over a bare step.

Prints, for a small CNN and an MLP at realistic batch sizes, the median time of a bare
training step and of the same step with the Recorder attached (and with update ratios),
and their ratio. Target: <= 1.15 with the default Recorder. Alternating repeats, median,
so a busy machine disturbs both sides alike.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from nandoctor.probes.instrument import Recorder

REPEATS = 5        # alternating bare/instrumented blocks
STEPS = 30         # timed steps per block
WARMUP = 5         # untimed steps per block
TARGET = 1.15      # the target: <= 15% over a bare step


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 8 * 8, 10))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 10))


CASES = {"cnn 32x32 batch 64": (cnn, (64, 3, 32, 32)), "mlp 512 batch 256": (mlp, (256, 128))}


def block(factory, shape, mode: str) -> float:
    """Seconds per step for ``STEPS`` steps: mode = bare | recorder | recorder+updates."""
    torch.manual_seed(0)
    model = factory()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(*shape), torch.randint(0, 10, (shape[0],))
    rec = None
    if mode != "bare":
        rec = Recorder(model, updates=mode == "recorder+updates")
        rec.attach_optimizer(optimizer)
    for i in range(WARMUP + STEPS):
        if i == WARMUP:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    seconds = (time.perf_counter() - start) / STEPS
    if rec is not None:
        rec.detach()
    return seconds


def main() -> None:
    torch.set_num_threads(1)
    worst = 0.0
    for name, (factory, shape) in CASES.items():
        times = {m: [] for m in ("bare", "recorder", "recorder+updates")}
        for _ in range(REPEATS):
            for mode in times:
                times[mode].append(block(factory, shape, mode))
        bare = statistics.median(times["bare"])
        for mode in ("recorder", "recorder+updates"):
            ratio = statistics.median(times[mode]) / bare
            if mode == "recorder":
                worst = max(worst, ratio)
            print(f"{name:22s} {mode:17s} {ratio:5.2f}x bare step ({bare * 1e3:.2f} ms bare)")
    print(f"instrumentation overhead (default Recorder, worst case): {worst:.2f}x "
          f"({'within' if worst <= TARGET else 'ABOVE'} the {TARGET:.2f}x target)")


if __name__ == "__main__":
    main()

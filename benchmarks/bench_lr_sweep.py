"""The LR sweep against pytorch-lr-finder (``torch-lr-finder``), in one run, on three small tasks.

For each task (MLP classifier, CNN classifier, MLP regression) both tools get the same
model (same init), the same data loader and the same sweep (1e-7 to 10, the same number
of iterations, exponential). It prints:

1. the wall-time ratio ours / theirs (median of a few repeats; target <= 1.0);
2. each tool's suggested LR, and the training loss (whole training set, eval mode) after a
   fixed short training at that LR from the same init (target: ours at least as low).

Run: ``python benchmarks/bench_lr_sweep.py`` (``make bench`` installs the ``bench`` extra).
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nandoctor import curves  # noqa: E402
from nandoctor.patient import Patient  # noqa: E402
from nandoctor.probes.lr_sweep import sweep  # noqa: E402


MIN_LR, MAX_LR = 1e-7, 10.0   # the sweep range, both tools
ITERATIONS = 100              # sweep iterations, both tools (pytorch-lr-finder's default)
REPEATS = 5                   # timing repeats, alternating the tools; the median counts
TRAIN_STEPS = 150             # the fixed short training at each suggested LR
JUDGE_ORDERS = 5              # ... repeated over this many data orders, the mean loss counts
SEED = 0


# --- the tasks -------------------------------------------------------------------------
def blobs(n=512, features=20, classes=3) -> TensorDataset:
    gen = torch.Generator().manual_seed(SEED)
    centers = torch.randn(classes, features, generator=gen) * 1.0
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(centers[y] + 1.5 * torch.randn(n, features, generator=gen), y)


def images(n=256, channels=3, classes=4) -> TensorDataset:
    gen = torch.Generator().manual_seed(SEED)
    patterns = torch.randn(classes, channels, 16, 16, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(patterns[y] + 1.0 * torch.randn(n, channels, 16, 16, generator=gen), y)


def regression(n=512, features=8) -> TensorDataset:
    """A linear trend plus a smooth non-linearity; targets [N, 1], standardised as regression targets should be."""
    gen = torch.Generator().manual_seed(SEED)
    w, v = torch.randn(features, 1, generator=gen), torch.randn(features, 1, generator=gen)
    x = torch.randn(n, features, generator=gen)
    y = x @ w + torch.sin(x @ v) + 0.1 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x, (y - y.mean()) / y.std())


def mlp(i=20, h=64, o=3) -> nn.Module:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 4))


@dataclass
class Task:
    name: str
    model: Callable[[], nn.Module]
    data: TensorDataset
    loss: nn.Module
    optimizer: type
    batch_size: int
    opt_kwargs: dict


TASKS = [
    Task("mlp-classifier (Adam)", lambda: mlp(), blobs(), nn.CrossEntropyLoss(), torch.optim.Adam, 32, {}),
    Task("cnn-classifier (SGD)", cnn, images(), nn.CrossEntropyLoss(), torch.optim.SGD, 16, {"momentum": 0.9}),
    Task("mlp-regression (SGD)", lambda: mlp(8, 32, 1), regression(), nn.MSELoss(), torch.optim.SGD, 32,
         {"momentum": 0.9}),
]


def patient_of(task: Task) -> Patient:
    return Patient(model_factory=task.model, train_data=task.data, loss_fn=task.loss, optimizer_cls=task.optimizer,
                   optimizer_kwargs={"lr": 1e-3, **task.opt_kwargs}, batch_size=task.batch_size, shuffle=True,
                   seed=SEED)


# --- the two tools ---------------------------------------------------------------------
def ours(task: Task) -> tuple[float, float | None, int]:
    """(seconds, suggested LR, iterations run): a fresh model from the factory, our sweep and our reading."""
    t0 = time.perf_counter()
    run = sweep(patient_of(task), MIN_LR, MAX_LR, ITERATIONS)
    reading = curves.read_sweep(run.lrs, run.losses)
    return time.perf_counter() - t0, reading.suggested_lr, len(run.losses)


def theirs(task: Task) -> tuple[float, float | None, int]:
    """(seconds, suggested LR, iterations run): pytorch-lr-finder on the same init, loader and range; its steepest-gradient rule."""
    from torch_lr_finder import LRFinder

    loader = DataLoader(task.data, batch_size=task.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED))
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    model = task.model()  # inside the clock, as ours builds its fresh model inside it
    optimizer = task.optimizer(model.parameters(), lr=MIN_LR, **task.opt_kwargs)
    finder = LRFinder(model, optimizer, task.loss)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finder.range_test(loader, end_lr=MAX_LR, num_iter=ITERATIONS)
        finder.reset()
    seconds = time.perf_counter() - t0
    return seconds, their_suggestion(finder), len(finder.history["loss"])


def their_suggestion(finder) -> float | None:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _, lr = finder.plot(ax=ax, suggest_lr=True)
        return float(lr)
    except (RuntimeError, ValueError):  # too few points before divergence
        return None
    finally:
        plt.close(fig)


# --- the judge: a fixed short training at a suggested LR -------------------------------
def loss_after_training(task: Task, lr: float | None) -> float:
    """Mean over JUDGE_ORDERS data orders of the training-set loss (eval mode) after TRAIN_STEPS steps at ``lr``
    from the shared init; inf when there is no suggestion. One order alone is a noisy judge."""
    if lr is None:
        return math.inf
    return statistics.fmean(_train_once(task, lr, order) for order in range(JUDGE_ORDERS))


def _train_once(task: Task, lr: float, order: int) -> float:
    torch.manual_seed(SEED)
    model = task.model()
    optimizer = task.optimizer(model.parameters(), lr=lr, **task.opt_kwargs)
    loader = DataLoader(task.data, batch_size=task.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED + 1 + order))
    step = 0
    while step < TRAIN_STEPS:
        for x, y in loader:
            optimizer.zero_grad()
            task.loss(model(x), y).backward()
            optimizer.step()
            step += 1
            if step == TRAIN_STEPS:
                break
    model.eval()
    with torch.no_grad():
        x, y = task.data.tensors
        value = float(task.loss(model(x), y))
    return value if math.isfinite(value) else math.inf


def bench(task: Task) -> dict:
    ours(task), theirs(task)  # warm-up: first-call overheads (imports, allocator) for both
    ours_t, theirs_t = [], []
    for _ in range(REPEATS):
        t, ours_lr, ours_n = ours(task)
        ours_t.append(t)
        t, theirs_lr, theirs_n = theirs(task)
        theirs_t.append(t)
    return {"task": task.name, "ours_s": statistics.median(ours_t), "theirs_s": statistics.median(theirs_t),
            "ours_n": ours_n, "theirs_n": theirs_n, "ours_lr": ours_lr, "theirs_lr": theirs_lr,
            "ours_loss": loss_after_training(task, ours_lr), "theirs_loss": loss_after_training(task, theirs_lr)}


def main() -> int:
    torch.set_num_threads(1)
    rows = [bench(t) for t in TASKS]
    head = f"{'task':<24}{'ours s':>8}{'theirs s':>9}{'ratio':>7}{'iters':>9}{'per-iter':>9}   " \
           f"{'ours lr':>8}{'their lr':>9}{'ours loss':>11}{'their loss':>11}  as low?"
    lines = [f"LR sweep vs pytorch-lr-finder: {ITERATIONS} iterations {MIN_LR:g}..{MAX_LR:g} (each tool stops "
             f"early at its own divergence test), median of {REPEATS}; judge: mean training loss over "
             f"{JUDGE_ORDERS} data orders after {TRAIN_STEPS} steps at each suggestion, same init", head]
    ok_time, ok_loss = True, True
    for r in rows:
        ratio = r["ours_s"] / r["theirs_s"]
        per_iter = (r["ours_s"] / r["ours_n"]) / (r["theirs_s"] / r["theirs_n"])
        as_low = r["ours_loss"] <= r["theirs_loss"] * (1 + 1e-6)
        ok_time, ok_loss = ok_time and ratio <= 1.0, ok_loss and as_low
        lines.append(f"{r['task']:<24}{r['ours_s']:>8.3f}{r['theirs_s']:>9.3f}{ratio:>7.2f}"
                     f"{r['ours_n']:>5}/{r['theirs_n']:<3}{per_iter:>9.2f}   "
                     f"{r['ours_lr'] or float('nan'):>8.2g}{r['theirs_lr'] or float('nan'):>9.2g}"
                     f"{r['ours_loss']:>11.4g}{r['theirs_loss']:>11.4g}  {'yes' if as_low else 'NO'}")
    lines.append(f"targets: time ratio <= 1.0 on every task: {'met' if ok_time else 'NOT met'}; "
                 f"loss as low on every task: {'met' if ok_loss else 'NOT met'}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

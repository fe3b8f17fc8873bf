"""The LR suggestion against pytorch-lr-finder's, on six tasks of different shapes, in one run.

For each task both tools start from the same init and the same seeded batches:

- ours: the real ``lr_sweep`` probe through the public API, as the battery runs it
  (``nandoctor.diagnose(patient, probes=["lr_sweep"])``: the warm-up that times a step, the
  planned sweep, the check runs when the user's LR is 10x away from the suggestion), its
  ``suggested_lr`` read from the report; the clock covers the whole call;
- theirs: ``lr_finder_baseline`` below, a compact re-implementation of pytorch-lr-finder's
  ``LRFinder.range_test`` (``ExponentialLR``, ``num_iter=100``, ``smooth_f=0.05``,
  ``diverge_th=5``, from 1e-7 to 10, state cached and restored) and ``plot(suggest_lr=True)``
  (the LR at the minimum of ``np.gradient`` of the smoothed losses, ``skip_start=10``,
  ``skip_end=5``); when ``torch_lr_finder`` is installed the real package runs too and its
  suggestion must be the same (a faithfulness check of the baseline).

The judge: 300 steps at each suggestion from the same init on the same batches, in train
mode; the mean of the last 20 training losses (inf when a run goes non-finite or a tool has no
suggestion). A last column runs our sweep at its minimum number of points (``MIN_STEPS``) and
says whether it still suggests, and how its suggestion trains.

Run: ``python benchmarks/bench_lr_finder.py`` (the output is committed as ``results/lr_finder.txt``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nandoctor  # noqa: E402
from nandoctor.patient import Patient  # noqa: E402
from nandoctor.probes import lr_sweep  # noqa: E402
import realistic_patients as rp  # noqa: E402

MIN_LR, MAX_LR = 1e-7, 10.0   # the sweep range, both tools
NUM_ITER = 100                # pytorch-lr-finder's default; ours plans 100 points at the default budget
BUDGET = 120.0                # ours: the default --budget
REPEATS = 3                   # timing repeats, alternating the tools; the median counts
TRAIN_STEPS = 300             # the judge's training at each suggestion ...
TAIL = 20                     # ... scored by the mean of its last 20 losses
SEED = 0


# --- 1. the baseline: pytorch-lr-finder's range test and steepest-gradient suggestion ------------
def lr_finder_baseline(model: nn.Module, optimizer: torch.optim.Optimizer, criterion, loader: DataLoader, *,
                       start_lr: float = MIN_LR, end_lr: float = MAX_LR, num_iter: int = NUM_ITER,
                       smooth_f: float = 0.05, diverge_th: float = 5.0, skip_start: int = 10,
                       skip_end: int = 5) -> tuple[float | None, list[float], list[float]]:
    """(suggested LR or None, LRs, smoothed losses), as ``LRFinder.range_test`` + ``plot(suggest_lr=True)``."""
    # 1. cache the state (LRFinder's StateCacher, in memory), start the exponential schedule at start_lr
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    lrs, losses, best = [], [], math.inf
    batches = iter(loader)
    for i in range(num_iter):
        lr = start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:  # TrainDataLoaderIter(auto_reset=True)
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        # 2. one training step; the loss is smoothed (no bias correction) and compared with its best
        model.train()
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if i:
            value = smooth_f * value + (1 - smooth_f) * losses[-1]
        best = value if i == 0 else min(best, value)
        lrs.append(lr)
        losses.append(value)
        if value > diverge_th * best:
            break
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    # 3. the suggestion: steepest descent of the trimmed curve (np.gradient per point)
    if len(lrs) < skip_start + skip_end + 2:
        return None, lrs, losses  # plot() raises "Need at least ... iterations to suggest"
    trimmed_lr, trimmed = lrs[skip_start:-skip_end], np.asarray(losses[skip_start:-skip_end])
    return float(trimmed_lr[int(np.gradient(trimmed).argmin())]), lrs, losses


def real_lr_finder(task: "Task") -> float | None:
    """The installed package on the same init and loader (None when it is not installed or cannot suggest)."""
    try:
        from torch_lr_finder import LRFinder
    except ImportError:
        return None
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    model, optimizer = task.fresh(MIN_LR)
    finder = LRFinder(model, optimizer, task.loss)
    fig, ax = plt.subplots()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            finder.range_test(task.loader(), end_lr=MAX_LR, num_iter=NUM_ITER)
            _, lr = finder.plot(ax=ax, suggest_lr=True)
        return float(lr)
    except RuntimeError:
        return None
    finally:
        plt.close(fig)


# --- 2. the tasks ---------------------------------------------------------------------------------
def images(n=256, channels=3, classes=4) -> TensorDataset:
    gen = torch.Generator().manual_seed(SEED)
    patterns = torch.randn(classes, channels, 16, 16, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(patterns[y] + 1.0 * torch.randn(n, channels, 16, 16, generator=gen), y)


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 4))


def regression(n=512, features=8) -> TensorDataset:
    """A linear trend plus a smooth non-linearity; targets [N, 1], standardised."""
    gen = torch.Generator().manual_seed(SEED)
    w, v = torch.randn(features, 1, generator=gen), torch.randn(features, 1, generator=gen)
    x = torch.randn(n, features, generator=gen)
    y = x @ w + torch.sin(x @ v) + 0.1 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x, (y - y.mean()) / y.std())


def regression_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))


def segmentation() -> TensorDataset:
    images_, masks = rp.shapes_masks(n=128, size=32)
    return TensorDataset(images_, masks)


@dataclass
class Task:
    name: str
    model: Callable[[], nn.Module]
    data: TensorDataset
    loss: Callable
    optimizer: type
    user_lr: float                 # the LR the user configured (ours checks it when 10x from the suggestion)
    batch_size: int = 32
    opt_kwargs: dict | None = None

    def fresh(self, lr: float) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(SEED)
        model = self.model()
        return model, self.optimizer(model.parameters(), lr=lr, **(self.opt_kwargs or {}))

    def loader(self, seed: int = SEED) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed))

    def patient(self) -> Patient:
        return Patient.from_objects(self.model, self.data, self.loss, self.optimizer, lr=self.user_lr,
                                    batch_size=self.batch_size, seed=SEED, device="cpu", **(self.opt_kwargs or {}))


TASKS = [
    Task("tabular MLP, Adam", rp.tabular_mlp, rp.frame_dataset(rp.standardised(rp.customer_table())),
         nn.CrossEntropyLoss(), torch.optim.Adam, 1e-3, batch_size=64),
    Task("CNN+BatchNorm, SGD m=0.9", cnn, images(), nn.CrossEntropyLoss(), torch.optim.SGD, 0.01, batch_size=16,
         opt_kwargs={"momentum": 0.9}),
    Task("transformer encoder, AdamW", rp.EncoderClassifier, rp.topic_sequences(n=512), nn.CrossEntropyLoss(),
         torch.optim.AdamW, 3e-4),
    Task("GRU tagger, Adam", rp.GRUTagger, rp.tagged_sequences(), nn.CrossEntropyLoss(), torch.optim.Adam, 1e-3),
    Task("regression MLP, MSE, SGD", regression_mlp, regression(), nn.MSELoss(), torch.optim.SGD, 0.01),
    Task("tiny U-Net, Adam", lambda: rp.UNet(width=4), segmentation(), nn.BCEWithLogitsLoss(), torch.optim.Adam,
         1e-3, batch_size=8),
]


# --- 3. the two tools, timed ----------------------------------------------------------------------
def ours(task: Task, steps: int | None = None) -> tuple[float, float | None, int, float]:
    """(seconds, suggested LR, sweep points, seconds of the sweep alone): the lr_sweep probe through
    nandoctor.diagnose, as the battery runs it; the rest of the time is the warm-up and the check runs."""
    t0 = time.perf_counter()
    options = {"steps": steps} if steps else None
    report = nandoctor.diagnose(task.patient(), probes=["lr_sweep"], budget=BUDGET, treatments=False,
                                probe_options=options)
    seconds = time.perf_counter() - t0
    metrics = report.probes["lr_sweep"].metrics
    return seconds, metrics.get("suggested_lr"), metrics.get("steps") or 0, report.probes["lr_sweep"].data["sweep"].seconds


def theirs(task: Task) -> tuple[float, float | None, int]:
    """(seconds, suggested LR, iterations): the baseline on a fresh model, the clock around model and finder."""
    t0 = time.perf_counter()
    model, optimizer = task.fresh(MIN_LR)
    lr, lrs, _ = lr_finder_baseline(model, optimizer, task.loss, task.loader())
    return time.perf_counter() - t0, lr, len(lrs)


# --- 4. the judge ---------------------------------------------------------------------------------
def loss_at_300(task: Task, lr: float | None) -> float:
    """The mean of the last TAIL training losses of TRAIN_STEPS steps at ``lr`` from the shared init and batches."""
    if lr is None:
        return math.inf
    model, optimizer = task.fresh(lr)
    model.train()
    losses: list[float] = []
    batches = task.loader(SEED + 1)
    while len(losses) < TRAIN_STEPS:
        for x, y in batches:
            optimizer.zero_grad()
            loss = task.loss(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                return math.inf
            if len(losses) == TRAIN_STEPS:
                break
    return statistics.fmean(losses[-TAIL:])


def bench(task: Task) -> dict:
    ours(task), theirs(task)  # warm-up: first-call overheads for both
    ours_t, sweep_t, theirs_t = [], [], []
    for _ in range(REPEATS):
        t, ours_lr, ours_n, t_sweep = ours(task)
        ours_t.append(t)
        sweep_t.append(t_sweep)
        t, theirs_lr, theirs_n = theirs(task)
        theirs_t.append(t)
    _, min_lr, min_n, _ = ours(task, steps=lr_sweep.MIN_STEPS)
    return {"task": task.name, "ours_s": statistics.median(ours_t), "theirs_s": statistics.median(theirs_t),
            "sweep_s": statistics.median(sweep_t),
            "ours_n": ours_n, "theirs_n": theirs_n, "ours_lr": ours_lr, "theirs_lr": theirs_lr,
            "real_lr": real_lr_finder(task), "ours_loss": loss_at_300(task, ours_lr),
            "theirs_loss": loss_at_300(task, theirs_lr), "min_lr": min_lr, "min_n": min_n,
            "min_loss": loss_at_300(task, min_lr)}


def fmt_lr(lr: float | None) -> str:
    return f"{lr:.2e}" if lr else "none"


def main() -> int:
    torch.set_num_threads(1)
    rows = [bench(t) for t in TASKS]
    lines = [f"LR suggestion vs pytorch-lr-finder (steepest gradient, {NUM_ITER} iterations {MIN_LR:g}..{MAX_LR:g}); "
             f"ours: nandoctor.diagnose(probes=['lr_sweep'], budget={BUDGET:g}) whole call; times median of "
             f"{REPEATS}; loss@{TRAIN_STEPS}: mean of the last {TAIL} training losses of {TRAIN_STEPS} steps at "
             f"the suggestion, same init and batches",
             f"{'task':<28}{'our LR':>10}{'their LR':>10}{'our loss':>10}{'their loss':>11}{'our s':>8}"
             f"{'their s':>8}{'sweep s':>8}  {'pts':>7}  as low?  min-steps sweep ({lr_sweep.MIN_STEPS} pts): LR, loss@300"]
    wins, total_ours, total_theirs, total_sweep, faithful = 0, 0.0, 0.0, 0.0, []
    for r in rows:
        as_low = r["ours_loss"] <= r["theirs_loss"] * (1 + 1e-9) or r["ours_loss"] == r["theirs_loss"]
        wins += as_low
        total_ours, total_theirs = total_ours + r["ours_s"], total_theirs + r["theirs_s"]
        total_sweep += r["sweep_s"]
        if r["real_lr"] is not None:
            faithful.append(r["theirs_lr"] is not None and math.isclose(r["real_lr"], r["theirs_lr"], rel_tol=1e-6))
        lines.append(f"{r['task']:<28}{fmt_lr(r['ours_lr']):>10}{fmt_lr(r['theirs_lr']):>10}{r['ours_loss']:>10.4g}"
                     f"{r['theirs_loss']:>11.4g}{r['ours_s']:>8.2f}{r['theirs_s']:>8.2f}{r['sweep_s']:>8.2f}  "
                     f"{r['ours_n']:>3}/{r['theirs_n']:<3}  {'yes' if as_low else 'NO ':<7}  "
                     f"{fmt_lr(r['min_lr'])}, {r['min_loss']:.4g}")
    if faithful:
        lines.append(f"baseline = installed torch_lr_finder's suggestion on {sum(faithful)}/{len(faithful)} tasks")
    suggests = sum(r["min_lr"] is not None for r in rows)
    lines.append(f"at {lr_sweep.MIN_STEPS} points ours suggests on {suggests}/{len(rows)} tasks")
    lines.append(f"ours as low or lower on {wins}/{len(rows)} tasks; total wall time ours/theirs "
                 f"{total_ours / total_theirs:.2f} ({total_ours:.2f} s / {total_theirs:.2f} s); our sweep alone "
                 f"{total_sweep / total_theirs:.2f} (the rest: the warm-up and the check runs from scratch)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plots of the training set-up probes: activation range against the fp16 limit, and the LR schedule.
Each takes ``ax`` and returns it."""

from __future__ import annotations

import math
from typing import Sequence

from nandoctor.report.plots import PALETTE, _clean

DYNAMIC_RANGE = 1e-8  # the LR plot shows eight decades below the peak


def activation_range(ax, curves: dict, limit: float, overflows: dict | None = None,
                     title: str = "largest |activation| per step", steps: dict | None = None):
    """One line per run (its largest finite |activation| each step), log scale, the dtype's limit dashed;
    ``overflows`` (label -> (step, module)) marks where a run's activations left the range with a cross;
    ``steps``: per run, the step of each value (when thinned)."""
    for i, (label, values) in enumerate(curves.items()):
        ys = [v if v and v > 0 else float("nan") for v in _clean(values)]
        xs = (steps or {}).get(label)
        xs = xs if xs is not None and len(xs) == len(ys) else range(len(ys))
        ax.plot(xs, ys, label=label, color=PALETTE[i % len(PALETTE)], lw=1.6,
                marker="." if len(ys) < 3 else None)  # a run cut short at its first step is a dot
    ax.axhline(limit, color="#d62728", ls="--", lw=1.2, label=f"fp16 max {limit:g}")
    for label, (step, module) in (overflows or {}).items():
        ax.scatter([step], [limit], marker="x", s=60, color="#d62728", zorder=5, label=f"{label}: inf in {module}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("max |activation|")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return ax


def lr_schedule(ax, lrs: Sequence[float], *, configured_lr: float | None = None, divergence_lr: float | None = None,
                early_steps: int | None = None, title: str = "learning rate per optimizer step",
                steps: Sequence[float] | None = None):
    """The scheduled LR per optimizer step (log y), the configured LR, the sweep's divergence LR, the early window;
    ``steps``: the optimizer step of each value (when thinned)."""
    finite = [v for v in lrs if v is not None and math.isfinite(v) and v > 0]
    floor = max(finite) * DYNAMIC_RANGE if finite else None   # an LR that decays for ever would flatten the rest
    ys = [max(v, floor) if floor and v is not None and math.isfinite(v) and v >= 0 else float("nan") for v in lrs]
    floored = floor is not None and any(v is not None and math.isfinite(v) and v < floor for v in lrs)
    xs = steps if steps is not None and len(steps) == len(ys) else range(len(ys))
    ax.plot(xs, ys, color=PALETTE[0], lw=1.6,
            label="scheduled LR" + (f" (floored at {floor:.0e})" if floored else ""))
    if configured_lr:
        ax.axhline(configured_lr, color=PALETTE[2], ls=":", lw=1.2, label=f"configured LR {configured_lr:.3g}")
    if divergence_lr:
        ax.axhline(divergence_lr, color=PALETTE[1], ls="--", lw=1.2, label=f"LR sweep diverges {divergence_lr:.3g}")
    if early_steps:
        ax.axvspan(0, min(early_steps, max(1, len(ys) - 1)), color=PALETTE[3], alpha=0.08, label="first steps judged")
    if any(not math.isnan(y) for y in ys):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return ax

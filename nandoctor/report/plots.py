"""Plots. Each function takes an ``ax`` and returns it; ``figure`` saves a PNG with Agg.

matplotlib is imported lazily (inside ``figure``) so that importing nandoctor stays fast
and never touches a display.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


@contextlib.contextmanager
def figure(path: Path | None, ncols: int = 1, nrows: int = 1, size=(6.4, 3.8), margins: dict | None = None) -> Iterator:
    """Yield the axes of a new figure and save it to ``path`` (if not None) on exit. ``margins`` (the keywords
    of ``Figure.subplots_adjust``) fix the layout instead of ``tight_layout``, which measures every text first.

    The figure is an Agg ``Figure`` made directly, without pyplot: no global figure state, no backend
    selection, and a faster import."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    yield axes[0][0] if ncols * nrows == 1 else axes.flatten()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if margins is not None:
            fig.subplots_adjust(**margins)
        else:
            fig.tight_layout()
        fig.savefig(path, dpi=90)


def _clean(values):
    return [v if v is not None and math.isfinite(v) else float("nan") for v in values]


def loss_curve(ax, losses, label: str = "loss", title: str | None = None, color=None, mark_nonfinite=True,
               steps=None):
    """Loss per step (``steps``: the step of each value, when the curve was thinned); symlog when it goes
    negative or spans decades; non-finite steps marked with ×."""
    ys = _clean(losses)
    xs = list(steps) if steps is not None and len(steps) == len(ys) else list(range(len(ys)))
    ax.plot(xs, ys, label=label, color=color, lw=1.6)
    finite = [y for y in ys if not math.isnan(y)]
    if finite and (min(finite) < 0 or (min(finite) > 0 and max(finite) / max(min(finite), 1e-12) > 1e3)):
        ax.set_yscale("symlog", linthresh=max(1e-3, min(abs(y) for y in finite if y != 0) if any(finite) else 1))
    if mark_nonfinite:
        bad = [x for x, y in zip(xs, losses) if y is None or not math.isfinite(y)]
        if bad:
            y0 = finite[-1] if finite else 0
            ax.scatter(bad, [y0] * len(bad), marker="x", color="#d62728", zorder=5, label="non-finite loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return ax


def grad_norm_lines(ax, grad_norms: dict, title: str = "gradient norm per layer", top: int = 8,
                    steps: dict | None = None):
    """One line per layer (the ``top`` layers by largest norm), log scale; ``steps``: per layer, the step
    of each value (when thinned)."""
    ranked = sorted(grad_norms.items(), key=lambda kv: -max([v for v in kv[1] if math.isfinite(v)] or [0]))
    for i, (name, values) in enumerate(ranked[:top]):
        xs = (steps or {}).get(name)
        xs = xs if xs is not None and len(xs) == len(values) else range(len(values))
        ax.plot(xs, _clean(values), label=name, color=PALETTE[i % len(PALETTE)], lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("‖grad‖")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ranked:
        ax.legend(loc="best", fontsize=7)
    return ax


def compare_curves(ax, curves: dict, title: str = "", ylabel: str = "loss", steps: dict | None = None):
    """Several loss curves on one axis (before/after a treatment, init A vs B, ...); ``steps``: per curve, the
    step of each value (when thinned)."""
    for i, (label, values) in enumerate(curves.items()):
        loss_curve(ax, values, label=label, color=PALETTE[i % len(PALETTE)], steps=(steps or {}).get(label))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return ax

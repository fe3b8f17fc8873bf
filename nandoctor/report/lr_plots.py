"""The LR-sweep plot: loss against learning rate (log axis), with the user's LR, the
suggestion and the divergence point marked and labelled. Takes ``ax``, returns it."""

from __future__ import annotations

import math
from typing import Sequence

from nandoctor.report.plots import PALETTE, _clean

RULE_MARKERS = {"steepest": "v", "valley": "s", "minimum_tenth": "D"}


def _label_line(ax, x: float, text: str, color: str, style: str, y_frac: float, side: str = "right") -> None:
    """A vertical line at ``x`` with its label written along it, on the ``side`` of the line given."""
    ax.axvline(x, color=color, ls=style, lw=1.4)
    ax.text(x, y_frac, f" {text}", color=color, fontsize=8, rotation=90, va="top",
            ha="left" if side == "right" else "right", transform=ax.get_xaxis_transform())


def _y_at(lrs: Sequence[float], ys: Sequence[float], lr: float) -> float | None:
    """The curve's value at the sweep point nearest to ``lr`` on a log axis."""
    pts = [(abs(math.log(x / lr)), y) for x, y in zip(lrs, ys) if x > 0 and not math.isnan(y)]
    return min(pts)[1] if pts else None


def lr_sweep_curve(ax, lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], *,
                   user_lr: float | None = None, suggested_lr: float | None = None,
                   divergence_lr: float | None = None, suggestions: dict | None = None,
                   title: str = "LR sweep: loss against learning rate"):
    raw, sm = _clean(losses), _clean(smoothed)
    # 1. the curves: raw loss faint, smoothed loss bold
    ax.plot(lrs, raw, color=PALETTE[7], lw=0.8, alpha=0.5, label="loss per step")
    ax.plot(lrs, sm, color=PALETTE[0], lw=1.8, label="smoothed loss")
    ax.set_xscale("log")
    finite = [y for y in sm if not math.isnan(y)]
    if finite:  # keep the divergence spike from flattening the useful part of the curve
        lo, first = min(finite), finite[0]
        top = max(first, lo) + 0.35 * abs(max(first, lo) - lo) + 1e-12
        ax.set_ylim(lo - 0.1 * abs(top - lo) - 1e-12, top)
    # 2. each rule's answer, small and grey
    for name, lr in (suggestions or {}).items():
        y = _y_at(lrs, sm, lr) if lr else None
        if y is not None:
            ax.scatter([lr], [y], marker=RULE_MARKERS.get(name, "o"), s=22, color=PALETTE[7], zorder=4,
                       label=f"{name.replace('_', ' ')}: {lr:.2g}")
    # 3. the three marks that matter, each labelled with its value
    if suggested_lr:
        _label_line(ax, suggested_lr, f"suggested {suggested_lr:.2g}", PALETTE[2], "-", 0.98, side="left")
    if divergence_lr:
        _label_line(ax, divergence_lr, f"diverges {divergence_lr:.2g}", PALETTE[1], "--", 0.98, side="right")
    if user_lr:
        _label_line(ax, user_lr, f"your LR {user_lr:.2g}", PALETTE[3], ":", 0.6,
                    side="left" if divergence_lr and user_lr >= divergence_lr else "right")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=7)
    return ax

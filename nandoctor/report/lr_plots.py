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


def informative_range(lrs: Sequence[float], smoothed: Sequence[float], divergence_lr: float | None,
                      pad: float = 0.12) -> tuple[float, float] | None:
    """The y range worth looking at: the smoothed loss up to the divergence point (all of it without one),
    its lowest and highest values padded; a loss that runs off to -1e24 past the divergence does not
    flatten the part that tells the user something. None when no point is finite."""
    pts = [(x, y) for x, y in zip(lrs, smoothed) if not math.isnan(y) and math.isfinite(y)]
    if not pts:
        return None
    inside = [y for x, y in pts if divergence_lr is None or x <= divergence_lr] or [pts[0][1]]
    if divergence_lr is None and len(inside) > 10:  # no divergence found: drop the extreme 2% either side
        ranked = sorted(inside)
        cut = max(1, len(ranked) // 50)
        inside = ranked[cut:-cut]
    lo, hi = min(inside), max(inside)
    span = (hi - lo) or abs(hi) or 1.0
    return lo - pad * span, hi + 2 * pad * span


def lr_sweep_curve(ax, lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], *,
                   user_lr: float | None = None, suggested_lr: float | None = None,
                   divergence_lr: float | None = None, suggestions: dict | None = None,
                   title: str = "LR sweep: loss against learning rate"):
    raw, sm = _clean(losses), _clean(smoothed)
    if len(sm) != len(lrs):
        sm = raw
    # 1. the curves: raw loss faint, smoothed loss bold
    ax.plot(lrs, raw, color=PALETTE[7], lw=0.8, alpha=0.5, label="loss per step")
    ax.plot(lrs, sm, color=PALETTE[0], lw=1.8, label="smoothed loss")
    ax.set_xscale("log")
    # 2. the y axis shows the informative range (up to the divergence); what lies past it is marked, not drawn
    limits = informative_range(lrs, sm, divergence_lr)
    if limits is not None:
        lo, hi = limits
        ax.set_ylim(lo, hi)
        off = [(x, hi if y > hi else lo) for x, y in zip(lrs, sm) if not math.isnan(y) and not lo <= y <= hi]
        off += [(x, hi) for x, y in zip(lrs, raw) if math.isnan(y)]
        if off:
            ax.scatter([p[0] for p in off], [p[1] for p in off], marker="|", s=30, color=PALETTE[1], clip_on=False,
                       zorder=4, label="off the chart (diverged or non-finite)")
    if divergence_lr and lrs:
        ax.axvspan(divergence_lr, max(max(lrs), divergence_lr), color=PALETTE[1], alpha=0.07, lw=0)
    # 3. each rule's answer, small and grey
    for name, lr in (suggestions or {}).items():
        y = _y_at(lrs, sm, lr) if lr else None
        if y is not None:
            ax.scatter([lr], [y], marker=RULE_MARKERS.get(name, "o"), s=22, color=PALETTE[7], zorder=4,
                       label=f"{name.replace('_', ' ')}: {lr:.2g}")
    # 4. the three marks that matter, each labelled with its value
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
    ax.legend(loc="best", fontsize=7)
    return ax

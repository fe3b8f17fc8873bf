"""Plots for gradient health, init comparison and BatchNorm freeze. Each takes an ``ax`` and returns it.

matplotlib is never imported here: the figure comes from ``plots.figure`` (Agg, lazy import).
"""

from __future__ import annotations

import math

from nandoctor.report.plots import PALETTE, _clean

MAX_HEATMAP_COLUMNS = 200   # steps shown in the heatmap (longer runs are subsampled)


def _log10(v: float | None) -> float:
    return math.log10(v) if v is not None and math.isfinite(v) and v > 0 else float("nan")


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def heatmap_grid(grad_norms: dict[str, list[float]], layers: list[str]) -> tuple[list[list[float]], int]:
    """(log10 gradient norms, a row per layer and at most ``MAX_HEATMAP_COLUMNS`` columns, the steps they span)."""
    rows = [[_log10(v) for v in grad_norms.get(name, [])] for name in layers]
    width = max((len(r) for r in rows), default=0)
    stride = max(1, math.ceil(width / MAX_HEATMAP_COLUMNS))
    return [[r[i] if i < len(r) else float("nan") for i in range(0, width, stride)] for r in rows], width


def grad_heatmap(ax, grad_norms: dict[str, list[float]], layers: list[str],
                 title: str = "log10 ‖grad‖ per layer and step", grid=None, width: int | None = None):
    """Layers (rows, input side on top) x steps (columns), colour = log10 gradient norm; blank = none/non-finite.
    ``grid`` and ``width``: the cells already computed (``heatmap_grid``), as the report saves them."""
    if grid is None or width is None:
        grid, width = heatmap_grid(grad_norms, layers)
    if grid and width:
        im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                       extent=(0, width, len(layers) - 0.5, -0.5))
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels([_short(n) for n in layers], fontsize=7)
    ax.set_xlabel("step")
    ax.set_title(title)
    return ax


def depth_profile(ax, profiles: dict[str, list[float]], layers: list[str], ylabel: str = "RMS gradient",
                  title: str = "gradient by depth (input → output)"):
    """One line per profile (a run, an init scheme): a value per layer in depth order, log scale."""
    for i, (label, values) in enumerate(profiles.items()):
        ys = _clean(values)
        ax.plot(range(len(ys)), ys, marker="o", lw=1.4, ms=4, label=label, color=PALETTE[i % len(PALETTE)])
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([_short(n, 14) for n in layers], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(profiles) > 1:
        ax.legend(loc="best", fontsize=7)
    return ax


def bar_compare(ax, values: dict[str, float | None], ylabel: str, title: str = ""):
    """One bar per variant (non-finite values drawn as a red cross at the top), log scale when they span decades."""
    labels = list(values)
    ys = [v if v is not None and math.isfinite(v) else float("nan") for v in values.values()]
    finite = [y for y in ys if not math.isnan(y)]
    top = max(finite) if finite else 1.0
    ax.bar(range(len(ys)), [0 if math.isnan(y) else y for y in ys],
           color=[PALETTE[i % len(PALETTE)] for i in range(len(ys))])
    for i, y in enumerate(ys):
        if math.isnan(y):
            ax.scatter([i], [top], marker="x", color="#d62728", s=60, zorder=5)
    if finite and min(finite) > 0 and top / min(finite) > 100:
        ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=15, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return ax

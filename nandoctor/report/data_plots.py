"""The data scan's plots. Each function takes an ``ax`` and returns it; ``save_all`` writes the PNGs.

- ``sample_losses``: per-sample loss (a uniform sample of the scanned set) with the worst samples
  marked and labelled with their dataset index;
- ``sample_magnitudes``: the same samples' input magnitude (largest robust z-score), the most
  extreme labelled: rows far out whatever their loss;
- ``class_histogram``: samples per class, labels outside the model's outputs in red;
- ``feature_scales``: per feature (or channel) the min..max range, mean +- std, symlog axis.
"""

from __future__ import annotations

import math

from nandoctor.report.plots import PALETTE, figure


def plain_log_labels(ax):
    """Tick labels of a log y axis as plain numbers (1000, 1e+06) rather than mathtext powers, and no minor
    ticks over more than two decades (eight tick objects a decade, each laid out at every draw)."""
    from matplotlib.ticker import LogFormatter, NullLocator
    ax.yaxis.set_major_formatter(LogFormatter())
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo > 100:
        ax.yaxis.set_minor_locator(NullLocator())
    else:
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # labels minor ticks on short ranges
    return ax

LABELLED = 6          # worst samples labelled with their index
MAX_BARS = 60         # classes / features shown (the largest ones when there are more)
LOG_RATIO = 50        # class counts spanning more than this ratio get a log axis
MAX_POINTS = 1500     # samples drawn in the per-sample loss plot (drawing cost, file size)
# Fixed margins (fractions of the figure) instead of tight_layout, which measures every text of the figure
# first; the legends have a fixed place ("best" tries every place against every point) and log axes plain
# labels (no mathtext): together a third of the drawing time.
MARGINS = {"left": 0.09, "right": 0.97, "bottom": 0.14, "top": 0.9}
TWO_PANELS = {"left": 0.075, "right": 0.98, "bottom": 0.14, "top": 0.9, "wspace": 0.22}
LEGEND = "upper right"


def sample_losses(ax, rows, worst: dict, title: str = "per-sample loss"):
    """``rows``: [R, >=3] (index, loss at init, loss after training, ...); ``worst``: {label: [(index, loss)]}."""
    rows = rows[:MAX_POINTS]  # the reservoir is a uniform sample already: its first rows are one too
    idx = rows[:, 0].tolist()
    for col, label, color in ((1, "at initialisation", PALETTE[7]), (2, "after a short training", PALETTE[0])):
        ys = rows[:, col].tolist()
        pts = [(i, y) for i, y in zip(idx, ys) if math.isfinite(y) and y > 0]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=4, alpha=0.5, color=color, label=label)
    for n, (label, items) in enumerate(worst.items()):
        pts = [(i, v) for i, v in items[:LABELLED] if math.isfinite(v) and v > 0]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="x", s=40, color=PALETTE[1 + 2 * n],
                   label=f"worst ({label})", zorder=5)
        for i, v in pts:
            ax.annotate(str(i), (i, v), textcoords="offset points", xytext=(4, 4), fontsize=7, color=PALETTE[1])
    ax.set_yscale("log")
    plain_log_labels(ax)
    ax.set_xlabel("sample index")
    ax.set_ylabel("loss (eval mode)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=LEGEND, fontsize=7)
    return ax


def sample_magnitudes(ax, rows, worst: list, title: str = "per-sample input magnitude"):
    """``rows``: [R, 4] (index, loss at init, loss after training, magnitude); ``worst``: [(index, magnitude)]."""
    rows = rows[:MAX_POINTS]
    pts = [(i, y) for i, y in zip(rows[:, 0].tolist(), rows[:, 3].tolist()) if math.isfinite(y) and y > 0]
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=4, alpha=0.5, color=PALETTE[0], label="samples")
    top = [(i, v) for i, v in worst[:LABELLED] if math.isfinite(v) and v > 0]
    if top:
        ax.scatter([p[0] for p in top], [p[1] for p in top], marker="x", s=40, color=PALETTE[1],
                   label="largest", zorder=5)
        for i, v in top:
            ax.annotate(str(i), (i, v), textcoords="offset points", xytext=(4, 4), fontsize=7, color=PALETTE[1])
    ax.set_yscale("log")
    plain_log_labels(ax)
    ax.set_xlabel("sample index")
    ax.set_ylabel("largest |x - median| / spread")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=LEGEND, fontsize=7)
    return ax


def class_histogram(ax, histogram: dict, n_classes: int | None, title: str = "samples per class"):
    """Bars per class label; labels outside ``[0, n_classes)`` in red."""
    counts = {int(k): int(v) for k, v in histogram.items()}
    for c in range(n_classes or 0) if (n_classes or 0) <= MAX_BARS else ():
        counts.setdefault(c, 0)  # classes the model has an output for but that never occur
    items = sorted(counts.items())
    if len(items) > MAX_BARS:
        items = sorted(sorted(items, key=lambda kv: -kv[1])[:MAX_BARS], key=lambda kv: int(kv[0]))
    labels = [int(k) for k, _ in items]
    colors = [PALETTE[1] if n_classes is not None and not 0 <= c < n_classes else PALETTE[0] for c in labels]
    ax.bar(range(len(items)), [v for _, v in items], color=colors)
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([str(c) for c in labels], fontsize=7, rotation=90 if len(items) > 20 else 0)
    values = [v for _, v in items if v > 0]
    if values and max(values) / min(values) > LOG_RATIO:
        ax.set_yscale("log")
        plain_log_labels(ax)
        ax.set_ylim(bottom=0.5)
    ax.set_xlabel("class label" + (f" (model outputs: {n_classes})" if n_classes else ""))
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return ax


def feature_scales(ax, feats: dict, names: list[str] | None, title: str = "feature scales"):
    """Per column: min..max as a thin line, mean +- std as a thick one; constant columns marked."""
    means, stds = feats.get("mean", []), feats.get("std", [])
    lows, highs = feats.get("min", []), feats.get("max", [])
    cols = list(range(len(means)))
    if len(cols) > MAX_BARS:  # the columns with the largest magnitude
        cols = sorted(sorted(cols, key=lambda j: -max(abs(lows[j] or 0), abs(highs[j] or 0)))[:MAX_BARS])
    ranged = [(x, lows[j], highs[j]) for x, j in enumerate(cols) if lows[j] is not None and highs[j] is not None]
    if ranged:  # one collection per kind of line: drawing cost does not grow with the columns
        ax.vlines([r[0] for r in ranged], [r[1] for r in ranged], [r[2] for r in ranged], color=PALETTE[7], lw=1)
    xs = list(range(len(cols)))
    ax.vlines(xs, [means[j] - stds[j] for j in cols], [means[j] + stds[j] for j in cols], color=PALETTE[0], lw=5,
              capstyle="butt")
    const = [(x, means[j]) for x, j in enumerate(cols) if stds[j] == 0]
    if const:
        ax.scatter([c[0] for c in const], [c[1] for c in const], marker="s", color=PALETTE[1], zorder=5)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xticks(xs)
    labels = [names[j] if names and j < len(names) else str(j) for j in cols]
    ax.set_xticklabels(labels, fontsize=7, rotation=90 if len(cols) > 8 else 0)
    ax.axhspan(-1, 1, color=PALETTE[2], alpha=0.08, label="unit scale")
    ax.set_ylabel("value (symlog)")
    ax.set_title(title + " (grey: min..max, blue: mean ± std, red: constant)")
    ax.grid(alpha=0.3, axis="y")
    return ax


def feature_margins(width: float, labels: list[str]) -> dict:
    """Fixed margins of the feature plot (``width`` inches wide): room for the y labels and for the longest
    tick label, rotated when there are more than 8 columns (about 0.06 inch a character at size 7)."""
    longest = max((len(t) for t in labels), default=1) if len(labels) > 8 else 1
    return {**MARGINS, "left": 0.8 / width, "right": 1 - 0.15 / width, "bottom": min(0.55, 0.13 + 0.016 * longest)}


def _worst(items, key: str) -> list[tuple]:
    return [(w["index"], float(w[key])) for w in items or [] if isinstance(w, dict)
            and isinstance(w.get("index"), int) and isinstance(w.get(key), (int, float))]


def draw_sample_loss(path, m: dict, rows) -> bool:
    """The per-sample loss (and input magnitude) plot, from the scan's metrics and its sample of rows
    ``[R, >=3]`` (index, loss at init, loss after training, magnitude); False when there is nothing to draw."""
    loss = m.get("loss") if isinstance(m.get("loss"), dict) else {}
    mag = m.get("magnitude") if isinstance(m.get("magnitude"), dict) else {}
    has_loss = any(isinstance(loss.get(k), dict) for k in ("init", "trained"))
    has_mag = bool(mag.get("worst")) and rows.shape[1] > 3
    panels = [p for p, ok in (("loss", has_loss), ("magnitude", has_mag)) if ok]
    if not panels:
        return False
    worst = {k: _worst(loss[k].get("worst"), "loss") for k in ("init", "trained") if isinstance(loss.get(k), dict)}
    with figure(path, ncols=len(panels), margins=MARGINS if len(panels) == 1 else TWO_PANELS) as axes:
        axes = [axes] if len(panels) == 1 else list(axes)
        for ax, panel in zip(axes, panels):
            if panel == "loss":
                sample_losses(ax, rows, worst, title=f"per-sample loss ({m.get('samples_scanned')} samples scanned)")
            else:
                sample_magnitudes(ax, rows, _worst(mag.get("worst"), "magnitude"))
    return True


def draw_classes(path, m: dict) -> bool:
    """The samples-per-class plot from the scan's metrics (report.json); False when there is none."""
    targets = m.get("targets") if isinstance(m.get("targets"), dict) else {}
    histogram = targets.get("histogram")
    if not isinstance(histogram, dict) or not histogram or targets.get("kind") not in ("class", "binary", "unknown"):
        return False
    try:
        counts = {int(k): int(v) for k, v in histogram.items()}
    except (TypeError, ValueError):
        return False
    n_classes = targets.get("n_classes") if isinstance(targets.get("n_classes"), int) else None
    with figure(path, margins=MARGINS) as ax:
        class_histogram(ax, counts, n_classes)
    return True


def draw_features(path, m: dict) -> bool:
    """The feature (or channel) scales plot from the scan's metrics (report.json); False when there is none."""
    feats = m.get("features") if isinstance(m.get("features"), dict) else {}
    inputs = m.get("inputs") if isinstance(m.get("inputs"), dict) else {}
    keys = ("mean", "std", "min", "max")
    if not feats.get("mean") or not all(isinstance(feats.get(k), list) for k in keys):
        return False
    n = len(feats["mean"])
    num = lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None  # noqa: E731
    clean = {k: [num(v) for v in feats[k][:n]] for k in keys}
    if any(len(clean[k]) != n for k in keys) or any(v is None for k in ("mean", "std") for v in clean[k]):
        return False
    names = inputs.get("feature_names") if isinstance(inputs.get("feature_names"), list) else None
    width = max(6.4, 0.25 * min(n, MAX_BARS))
    labels = [str(x) for x in names] if names else [str(j) for j in range(n)]
    with figure(path, size=(width, 3.8), margins=feature_margins(width, labels)) as ax:
        feature_scales(ax, clean, names, title="channel scales" if inputs.get("layout") == "channels" else "feature scales")
    return True


def save_all(ctx, m: dict, loss_res) -> list[str]:
    """The ids of the scan's plots. None is drawn here, on the scan's time: the report step draws them from
    the metrics in report.json and the rows the scan keeps (``report.figures``)."""
    saved = []
    loss, mag = m.get("loss", {}), m.get("magnitude", {})
    rows = loss_res.rows if loss_res is not None and loss_res.rows is not None and len(loss_res) else None
    has_loss = any(k in loss for k in ("init", "trained"))
    if rows is not None and (has_loss or mag.get("worst")):
        saved.append(ctx.plot_path("data-sample-loss")[1])
    targets = m.get("targets", {})
    if targets.get("histogram") and targets.get("kind") in ("class", "binary", "unknown"):
        saved.append(ctx.plot_path("data-classes")[1])
    if m.get("features", {}).get("mean"):
        saved.append(ctx.plot_path("data-features")[1])
    return saved

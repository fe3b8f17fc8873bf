"""Reading an LR-sweep curve: pure functions of (learning rates, losses), no training.

Every function is NaN-aware (non-finite points are skipped, never propagated) and
returns ``None`` when too few finite points remain to say anything. ``read_sweep``
puts them together: smoothing, divergence, the suggestion rules, one recommended
LR with the spread of the rules, and a stated reason when no suggestion is possible.

The suggestion rules (each takes the smoothed curve up to the divergence point):

- ``steepest``: the LR where the smoothed loss falls fastest per decade of LR
  (the minimum of d loss / d log10 LR), the rule of pytorch-lr-finder.
- ``valley``: the middle of the longest stretch over which the loss keeps
  decreasing (fastai's ``valley``): robust to a noisy start and to a sharp cliff.
- ``minimum_tenth``: one tenth of the LR at the lowest loss (fastai's ``minimum``
  rule): the lowest point is already near the edge of stability.

The recommendation is the valley (fastai found it the best default; it sits between
the cautious steepest point and the edge-of-stability minimum), else the geometric
median of the rules that answered; always capped below the divergence point. The
spread of the rules (in decades) is reported beside it. A descent within the batch noise
(``smoothed_noise``: a short sweep that has barely trained) is not read as a valley: the
recommendation is then a tenth of the divergence LR, the one edge such a curve shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

SMOOTH_BETA = 0.9           # EMA factor of the smoothed loss (bias-corrected; ~10-point memory)
MIN_POINTS = 8              # fewer finite points than this: no suggestion
DIVERGE_FACTOR = 4.0        # diverged when the smoothed loss exceeds its best by 3x the loss scale ...
DIVERGE_FLOOR_SHARE = 0.1   # ... where the scale is max(|best|, 10% of |initial|): tiny bests do not trigger on noise
DIVERGE_WARMUP = 3          # points ignored by the divergence test (the EMA is still settling)
RETURN_DROP_SHARE = 0.25    # a smoothed loss that fell 25% below its start and climbs back above it has diverged
MIN_DECREASE = 0.05         # the loss must fall by 5% of its initial value for the curve to be usable
USEFUL_DROP_SHARE = 0.1     # the useful range starts where 10% of the total decrease has happened
VALLEY_BOTTOM_SHARE = 0.02  # the valley ends where the loss is within 2% of the total decrease from its minimum
DIVERGENCE_MARGIN = 3.0     # the recommendation stays at least 3x below the divergence LR
NOISE_MULTIPLE = 5.0        # a descent smaller than 5x the smoothed curve's batch noise is not read as a valley ...
DIVERGENCE_FALLBACK = 10.0  # ... the recommendation is then a tenth of the divergence LR (the only edge the curve shows)
SKIP_START_SHARE = 0.05    # the first 5% of the points (at least DIVERGE_WARMUP) are left out of the rules:
                           # the average is still settling and one batch weighs too much
EDGE_POINTS = 1             # points dropped at each end before taking a gradient (one-sided differences)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def exp_schedule(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """``steps`` learning rates spaced evenly in log scale from ``min_lr`` to ``max_lr``."""
    if steps < 2:
        return [float(min_lr)] * max(steps, 0)
    ratio = (max_lr / min_lr) ** (1.0 / (steps - 1))
    return [float(min_lr * ratio ** i) for i in range(steps)]


def smooth(losses: Sequence[float], beta: float = SMOOTH_BETA) -> list[float]:
    """Exponential moving average with bias correction; non-finite inputs give NaN and are skipped.

    The average after ``k`` finite points is divided by ``1 - beta**k`` so that the first
    points are not pulled toward zero (the initialisation of the average).
    """
    avg, k, out = 0.0, 0, []
    for x in losses:
        if not finite(x):
            out.append(float("nan"))
            continue
        k += 1
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** k))
    return out


def _finite_pairs(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(lr, y) for lr, y in zip(lrs, losses) if finite(lr) and lr > 0 and finite(y)]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    lr, y = zip(*pairs)
    return np.asarray(lr, dtype=float), np.asarray(y, dtype=float)


def divergence_index(raw: Sequence[float], smoothed: Sequence[float], factor: float = DIVERGE_FACTOR,
                     warmup: int = DIVERGE_WARMUP) -> tuple[int | None, str | None]:
    """The first point where training diverged, and how: ``nonfinite`` or ``rising``; (None, None) if never.

    1. a non-finite raw loss diverges at once (warm-up or not);
    2. after the warm-up, a smoothed loss above ``best + (factor - 1) * scale`` diverges,
       ``scale = max(|best so far|, DIVERGE_FLOOR_SHARE * |first smoothed|)``;
    3. so does a smoothed loss that fell by ``RETURN_DROP_SHARE`` below its start (the smoothed loss
       at the end of the warm-up) and climbs back above it: the LR now undoes the training;
    4. a loss that starts positive and falls below minus its start is ``unbounded``: it left the
       range a loss can take (raw scores into NLLLoss, a sign error), so "lower" no longer means better.
    """
    best, first, start = math.inf, None, None
    for i, (x, s) in enumerate(zip(raw, smoothed)):
        if not finite(x) or not finite(s):
            return i, "nonfinite"
        first = s if first is None else first
        if first > 0 and s < -first:
            return i, "unbounded"
        start = s if i == warmup else start
        if i >= warmup and _rising(s, best, first, start, factor):
            return i, "rising"
        best = min(best, s)
    return None, None


def _rising(s: float, best: float, first: float, start: float, factor: float) -> bool:
    """Steps 2 and 3 of ``divergence_index`` at one point after the warm-up."""
    if s > best + (factor - 1) * max(abs(best), DIVERGE_FLOOR_SHARE * abs(first)):
        return True
    return start - best >= RETURN_DROP_SHARE * abs(start) > 0 and s > start


def steepest(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The LR of the steepest descent of the loss on a log-LR axis; None with too few finite points.

    Only the descent is searched (from where the loss leaves its plateau to its minimum):
    batch noise on the plateau can be locally steeper than a gentle real descent.
    """
    lr, y = _finite_pairs(lrs, losses)
    if len(y) < MIN_POINTS:
        return None
    grad = np.gradient(y, np.log10(lr))
    lo, hi = _descent(lr, y)
    window = grad[max(lo, EDGE_POINTS):min(hi + 1, len(y) - EDGE_POINTS)]
    if not window.size or not np.isfinite(window).any() or np.nanmin(window) >= 0:
        return None  # never decreases
    return float(lr[max(lo, EDGE_POINTS) + int(np.nanargmin(window))])


def _descent(lr: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """Indices (first, last) of the descent: from the end of the plateau to the minimum (the whole curve if none)."""
    low = int(np.argmin(y))
    initial, best = float(np.mean(y[:min(3, low + 1)])), float(y[low])
    start = useful_low(lr[:low + 1], y[:low + 1], initial, best) if initial > best else None
    first = int(np.searchsorted(lr, start)) - 1 if start is not None else 0
    return max(first, 0), low if low > 0 else len(y) - 1


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The middle (on a log-LR axis) of the valley: from where the loss leaves its plateau to its lowest point.

    The plateau ends at the last point, before the minimum, where the loss is still above
    ``USEFUL_DROP_SHARE`` of the way down; the valley's middle is the geometric mean of that
    LR and the LR of the minimum. (fastai's ``valley`` takes the longest decreasing
    subsequence instead, which batch noise on the plateau stretches to the left.)
    None with too few finite points or no decrease.
    """
    lr, y = _finite_pairs(lrs, losses)
    if len(y) < MIN_POINTS:
        return None
    low = int(np.argmin(y))
    initial, best = float(np.mean(y[:min(3, low + 1)])), float(y[low])
    if initial - best <= MIN_DECREASE * max(abs(initial), 1e-12):
        return None  # no valley: the loss never falls
    start = useful_low(lr[:low + 1], y[:low + 1], initial, best)
    bottom = valley_bottom(lr[:low + 1], y[:low + 1], initial, best)
    if start is None or bottom is None:
        return None
    return float(math.sqrt(start * bottom))


def valley_bottom(lrs: Sequence[float], losses: Sequence[float], initial: float, best: float) -> float | None:
    """The first LR where the loss is within ``VALLEY_BOTTOM_SHARE`` of the total decrease from its minimum.

    On an easy task the loss creeps toward zero for decades after the real descent ended; the
    argmin then sits at the far right of the sweep and would drag the valley's middle with it.
    """
    level = best + VALLEY_BOTTOM_SHARE * (initial - best)
    for lr, y in zip(lrs, losses):
        if finite(y) and y <= level:
            return float(lr)
    return None


def minimum_tenth(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """A tenth of the LR at the lowest loss; None with too few finite points."""
    lr, y = _finite_pairs(lrs, losses)
    if len(y) < MIN_POINTS:
        return None
    return float(lr[int(np.argmin(y))] / 10.0)


RULES = {"steepest": steepest, "valley": valley, "minimum_tenth": minimum_tenth}


def geometric_median(values: Sequence[float]) -> float | None:
    """The median of positive values on a log scale (the geometric mean of the middle two for even counts)."""
    logs = sorted(math.log(v) for v in values if finite(v) and v > 0)
    if not logs:
        return None
    mid = len(logs) // 2
    return math.exp(logs[mid] if len(logs) % 2 else (logs[mid - 1] + logs[mid]) / 2)


@dataclass
class SweepReading:
    """What a sweep curve says. ``suggested_lr`` is None exactly when ``reason`` says why."""

    smoothed: list[float]
    divergence_index: int | None = None
    divergence_lr: float | None = None
    divergence_kind: str | None = None      # nonfinite | rising | unbounded
    suggestions: dict = field(default_factory=dict)  # rule -> LR (None when the rule could not answer)
    suggested_lr: float | None = None
    suggested_by: str | None = None          # which rule gave the recommendation
    spread_decades: float | None = None      # log10(max / min) over the rules that answered
    best_lr: float | None = None             # LR at the lowest smoothed loss
    best_loss: float | None = None
    initial_loss: float | None = None
    useful_low: float | None = None          # where the loss starts to fall
    useful_high: float | None = None         # where it stops being safe (divergence, else the last LR)
    reason: str | None = None

    def metrics(self) -> dict:
        return {"suggested_lr": self.suggested_lr, "suggested_by": self.suggested_by,
                "divergence_lr": self.divergence_lr,
                "divergence_kind": self.divergence_kind, "suggestions": dict(self.suggestions),
                "spread_decades": self.spread_decades, "best_lr": self.best_lr, "best_loss": self.best_loss,
                "initial_loss": self.initial_loss, "useful_range": [self.useful_low, self.useful_high],
                "reason": self.reason}


def useful_low(lrs: Sequence[float], losses: Sequence[float], initial: float, best: float) -> float | None:
    """The LR from which the smoothed loss stays below ``USEFUL_DROP_SHARE`` of its total decrease.

    "Stays": the last crossing counts, so early batch-to-batch noise does not start the range.
    """
    level = initial - USEFUL_DROP_SHARE * (initial - best)
    start = None
    for lr, y in zip(lrs, losses):
        if not finite(y):
            continue
        if y > level:
            start = None
        elif start is None:
            start = float(lr)
    return start


def smoothed_noise(raw: Sequence[float], beta: float = SMOOTH_BETA) -> float | None:
    """The batch-to-batch noise left in the smoothed loss: a robust standard deviation of the raw loss
    (1.4826 x the median absolute second difference, / sqrt 6: a trend, even a bending one, does not
    count) times the EMA's noise gain ``sqrt((1 - beta) / (1 + beta))``; None with too few finite points."""
    y = np.asarray([v for v in raw if finite(v)], dtype=float)
    if len(y) < MIN_POINTS:
        return None
    sigma = 1.4826 * float(np.median(np.abs(np.diff(y, n=2)))) / math.sqrt(6)
    return sigma * math.sqrt((1 - beta) / (1 + beta))


def read_sweep(lrs: Sequence[float], raw: Sequence[float], beta: float = SMOOTH_BETA) -> SweepReading:
    """Smooth, find the divergence, apply every rule on the part before it, and recommend one LR."""
    # 1. smooth and find where it diverged
    sm = smooth(raw, beta)
    reading = SweepReading(smoothed=sm)
    idx, kind = divergence_index(raw, sm)
    if idx is not None:
        reading.divergence_index, reading.divergence_kind = idx, kind
        reading.divergence_lr = float(lrs[idx])
    skip = max(DIVERGE_WARMUP, int(SKIP_START_SHARE * len(raw)))
    lr_f, y_f = _finite_pairs(list(lrs)[skip:idx], sm[skip:idx])  # idx None: to the end
    # 2. not enough curve to read: say why
    if len(y_f) < MIN_POINTS:
        reading.reason = ("the loss diverges at the lowest learning rates of the sweep: lower --min-lr, or look for "
                          "a cause outside the learning rate (data, loss, model)" if idx is not None else
                          "too few finite loss values to read the curve")
        return reading
    reading.initial_loss, reading.best_loss = float(y_f[0]), float(y_f.min())
    reading.best_lr = float(lr_f[int(np.argmin(y_f))])
    reading.useful_high = reading.divergence_lr if idx is not None else float(lr_f[-1])
    if reading.initial_loss - reading.best_loss < MIN_DECREASE * max(abs(reading.initial_loss), 1e-12):
        reading.reason = "the loss never decreases over the sweep: no learning rate in the range trains this set-up"
        return reading
    reading.useful_low = useful_low(lr_f, y_f, reading.initial_loss, reading.best_loss)
    # 3. every rule, then the valley (else the geometric median of the others), kept below the divergence
    reading.suggestions = {name: rule(lr_f, y_f) for name, rule in RULES.items()}
    answered = [v for v in reading.suggestions.values() if v is not None]
    if not answered:
        reading.reason = "no rule found a decreasing stretch of the loss"
        return reading
    suggestion = reading.suggestions["valley"] or geometric_median(answered)
    reading.suggested_by = "valley" if reading.suggestions["valley"] else "geometric median of the rules"
    noise = smoothed_noise(raw[skip:idx], beta)
    if reading.divergence_lr is not None and noise is not None and \
            reading.initial_loss - reading.best_loss < NOISE_MULTIPLE * noise:
        # a short sweep (or a noisy loss): the "valley" is batch noise; the divergence is the curve's one fact
        suggestion = reading.divergence_lr / DIVERGENCE_FALLBACK
        reading.suggested_by = "a tenth of the divergence LR: the descent is within the batch noise"
    if reading.divergence_lr is not None:
        suggestion = min(suggestion, reading.divergence_lr / DIVERGENCE_MARGIN)
    reading.suggested_lr = float(suggestion)
    reading.spread_decades = float(math.log10(max(answered) / min(answered)))
    return reading


class DivergenceWatch:
    """``divergence_index`` one point at a time, for a sweep that stops as soon as it diverges.

    ``add(raw_loss)`` returns the divergence kind (``nonfinite`` / ``rising``) or None;
    fed the same losses it agrees with ``divergence_index(raw, smooth(raw))``.
    """

    def __init__(self, beta: float = SMOOTH_BETA, factor: float = DIVERGE_FACTOR, warmup: int = DIVERGE_WARMUP):
        self.beta, self.factor, self.warmup = beta, factor, warmup
        self.avg, self.k, self.i = 0.0, 0, 0
        self.best, self.first, self.start = math.inf, None, None

    def add(self, x: float) -> str | None:
        i, self.i = self.i, self.i + 1
        if not finite(x):
            return "nonfinite"
        self.k += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * x
        s = self.avg / (1 - self.beta ** self.k)
        if not math.isfinite(s):
            return "nonfinite"
        self.first = s if self.first is None else self.first
        self.start = s if i == self.warmup else self.start
        if i >= self.warmup and _rising(s, self.best, self.first, self.start, self.factor):
            return "rising"
        self.best = min(self.best, s)
        return None

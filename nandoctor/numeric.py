"""NaN-safe reductions over plain floats, for the numbers probes report.

A loss or a gradient norm can turn NaN or infinite at any step; the summaries a probe reports
(mean, spread, median, extremes) are taken over the finite values only, and are ``None`` when
none is left, so one bad step never turns a whole statistic into NaN (or, with the ``statistics``
module, into an exception). Probes report how many values were left out beside the statistic.
"""

from __future__ import annotations

import math
from typing import Iterable


def finite(values: Iterable) -> list[float]:
    """The finite numbers among ``values`` (None, NaN, +-Inf and non-numbers left out), as floats."""
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def mean(values: Iterable) -> float | None:
    f = finite(values)
    return math.fsum(f) / len(f) if f else None


def pstdev(values: Iterable) -> float | None:
    """Population standard deviation of the finite values (0.0 for one value), None for none."""
    f = finite(values)
    if not f:
        return None
    m = math.fsum(f) / len(f)
    try:
        return math.sqrt(math.fsum((x - m) ** 2 for x in f) / len(f))
    except OverflowError:  # values near the float limit: their spread is not representable
        return math.inf


def median(values: Iterable) -> float | None:
    f = sorted(finite(values))
    if not f:
        return None
    mid = len(f) // 2
    return f[mid] if len(f) % 2 else (f[mid - 1] + f[mid]) / 2


def fmax(values: Iterable) -> float | None:
    f = finite(values)
    return max(f) if f else None


def fmin(values: Iterable) -> float | None:
    f = finite(values)
    return min(f) if f else None


def count_nonfinite(values: Iterable) -> int:
    """How many of ``values`` are None, NaN or infinite."""
    return sum(1 for v in values if v is None or not isinstance(v, (int, float)) or not math.isfinite(v))

"""Streaming statistics for the data scan: constant memory in the dataset size.

Every accumulator here takes one chunk of samples at a time and keeps a fixed
amount of state, whatever the number of chunks:
- ``FeatureStats``: per-feature (or per-channel) count, mean, variance, min, max,
  non-finite count, whether every value is an integer, and the co-moment with the
  sample index (to find a feature that counts up with the row number). Chunks are
  merged with Chan's parallel formulas in float64, so the result does not depend on
  the order of the chunks.
- ``Reservoir``: a uniform random sample of fixed size (bottom-k by random key).
- ``TopK``: the k largest values and the sample indices they belong to.
- ``TargetStats``: dtype, range, class histogram, labels out of range.
"""

from __future__ import annotations

import torch

MAX_CLASSES = 10_000      # a class histogram is kept for integer labels in [0, MAX_CLASSES)
MAX_LISTED = 1_000        # at most this many sample indices are kept per kind of problem


class FeatureStats:
    """Per-column moments of ``[B, F]`` float64 rows, merged chunk by chunk."""

    def __init__(self, with_index: bool):
        self.with_index = with_index  # also track the co-moment with the sample index
        self.n = None

    def _init(self, f: int) -> None:
        z = lambda: torch.zeros(f, dtype=torch.float64)  # noqa: E731 - tiny factory
        self.n, self.mean, self.m2 = z(), z(), z()
        self.imean, self.im2, self.cov = z(), z(), z()
        self.min = torch.full((f,), float("inf"), dtype=torch.float64)
        self.max = torch.full((f,), float("-inf"), dtype=torch.float64)
        self.nonfinite = torch.zeros(f, dtype=torch.long)
        self.integer = torch.ones(f, dtype=torch.bool)

    def update(self, rows: torch.Tensor, index: torch.Tensor | None = None) -> None:
        # rows: [B, F]; index: [B] sample indices (only used when with_index)
        rows = rows.detach().to("cpu", torch.float64)
        if self.n is None:
            self._init(rows.shape[1])
        ok = torch.isfinite(rows)
        if bool(ok.all()):  # the common case: no masks needed
            vals, w, nb = rows, None, torch.full_like(self.n, rows.shape[0])
            lo, hi = rows.aminmax(dim=0)
        else:
            self.nonfinite += (~ok).sum(0)
            vals = torch.where(ok, rows, torch.zeros((), dtype=torch.float64))
            w = ok.to(torch.float64)
            nb = w.sum(0)
            lo = torch.where(ok, rows, torch.full_like(rows, float("inf"))).amin(0)
            hi = torch.where(ok, rows, torch.full_like(rows, float("-inf"))).amax(0)
        self.min, self.max = torch.minimum(self.min, lo), torch.maximum(self.max, hi)
        still = self.integer.nonzero().squeeze(1)  # only columns that were all integers so far
        if still.numel():
            sub = vals[:, still]
            self.integer[still] = (sub == sub.round()).all(0)
        # 1. chunk moments over the finite values of each column
        mb = vals.sum(0) / nb.clamp(min=1)
        dx = vals - mb if w is None else (vals - mb) * w
        m2b = (dx * dx).sum(0)
        # 2. Chan's merge with what came before
        n = self.n + nb
        delta = mb - self.mean
        frac = torch.where(n > 0, nb / n.clamp(min=1), torch.zeros_like(n))
        old = self.n
        self.mean = self.mean + delta * frac
        self.m2 = self.m2 + m2b + delta * delta * old * frac
        if self.with_index and index is not None:
            self._update_index(index.to(torch.float64), dx, w, nb, delta, old, frac)
        self.n = n

    def _update_index(self, i: torch.Tensor, dx: torch.Tensor, w: torch.Tensor | None, nb, delta, old, frac) -> None:
        """Merge the co-moment of every column with the sample index ``i`` ([B])."""
        if w is None:  # every value finite: one index mean for all columns, a matrix product for the co-moments
            ib = i.mean().expand_as(nb)
            di = i - i.mean()
            cov_b, im2_b = di @ dx, (di * di).sum().expand_as(nb)
        else:
            ii = i[:, None].expand_as(dx)
            ib = (ii * w).sum(0) / nb.clamp(min=1)
            di = (ii - ib) * w
            cov_b, im2_b = (dx * di).sum(0), (di * di).sum(0)
        idelta = ib - self.imean
        self.cov = self.cov + cov_b + delta * idelta * old * frac
        self.im2 = self.im2 + im2_b + idelta * idelta * old * frac
        self.imean = self.imean + idelta * frac

    def result(self) -> dict:
        """Lists of plain floats, one entry per column."""
        if self.n is None:
            return {}
        var = self.m2 / (self.n - 1).clamp(min=1)
        out = {"count": self.n.long().tolist(), "mean": self.mean.tolist(), "std": var.sqrt().tolist(),
               "min": _finite_or_none(self.min), "max": _finite_or_none(self.max),
               "nonfinite": self.nonfinite.tolist(), "integer_valued": self.integer.tolist()}
        if self.with_index:
            denom = (self.m2 * self.im2).sqrt()
            corr = torch.where(denom > 0, self.cov / denom.clamp(min=1e-300), torch.zeros_like(denom))
            slope = torch.where(self.im2 > 0, self.cov / self.im2.clamp(min=1e-300), torch.zeros_like(denom))
            out["index_corr"] = corr.tolist()
            out["index_slope"] = slope.tolist()
            out["index_offset"] = (self.mean - slope * self.imean).tolist()  # value at index 0
        return out


def _finite_or_none(t: torch.Tensor) -> list:
    return [float(v) if abs(v) != float("inf") else None for v in t.tolist()]


class Reservoir:
    """A uniform sample of at most ``size`` rows: every row gets a random key, the smallest keys stay."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.gen = torch.Generator().manual_seed(seed)
        self.keys: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        # rows: [B, ...]; kept as float64
        keys = torch.rand(rows.shape[0], generator=self.gen, dtype=torch.float64)
        rows = rows.detach().cpu()
        if self.keys is not None and self.keys.numel() >= self.size:
            sel = keys < self.keys.max()  # only rows that would enter the sample: most rows of a large set
            keys, rows = keys[sel], rows[sel]
        rows = rows.to(torch.float64)
        if self.keys is not None:
            keys, rows = torch.cat([self.keys, keys]), torch.cat([self.rows, rows])
        if keys.numel() > self.size:
            keep = torch.topk(keys, self.size, largest=False).indices
            keys, rows = keys[keep], rows[keep]
        self.keys, self.rows = keys, rows

    def __len__(self) -> int:
        return 0 if self.keys is None else int(self.keys.numel())


class TopK:
    """The ``k`` largest finite values seen, with their sample indices."""

    def __init__(self, k: int):
        self.k = k
        self.values = torch.empty(0, dtype=torch.float64)
        self.index = torch.empty(0, dtype=torch.long)

    def add(self, values: torch.Tensor, index: torch.Tensor) -> None:
        values = values.detach().to("cpu", torch.float64)
        ok = torch.isfinite(values)
        v, i = torch.cat([self.values, values[ok]]), torch.cat([self.index, index[ok]])
        if v.numel() > self.k:
            top = torch.topk(v, self.k).indices
            v, i = v[top], i[top]
        self.values, self.index = v, i

    def items(self) -> list[tuple[int, float]]:
        order = torch.argsort(self.values, descending=True)
        return [(int(self.index[j]), float(self.values[j])) for j in order]


class IndexList:
    """Sample indices with a problem: all of them counted, the first ``MAX_LISTED`` kept."""

    def __init__(self, limit: int = MAX_LISTED):
        self.limit = limit
        self.count = 0
        self.indices: list[int] = []

    def add(self, index: torch.Tensor) -> None:
        self.count += int(index.numel())
        room = self.limit - len(self.indices)
        if room > 0:
            self.indices.extend(int(i) for i in index[:room].tolist())

    def result(self) -> dict:
        return {"count": self.count, "indices": sorted(self.indices), "listed_all": self.count <= self.limit}


class TargetStats:
    """What the targets look like: dtype, per-sample shape, range, class histogram, labels out of range."""

    def __init__(self, n_classes: int | None, kind: str, ignore_index: int | None = None):
        self.n_classes = n_classes        # the model's outputs per sample for class losses, else None
        self.kind = kind                  # class | binary | regression | unknown
        self.ignore_index = ignore_index  # CrossEntropyLoss/NLLLoss ignore_index
        self.dtype: str | None = None
        self.shape: list[int] | None = None
        self.min, self.max = float("inf"), float("-inf")
        self.integer = True
        self.counts = torch.zeros(0, dtype=torch.long)
        self.negative = 0
        self.out_of_range = IndexList()
        self.out_of_range_values: dict[float, int] = {}

    def update(self, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Take the targets ``y`` ([B, ...]) of the samples ``index`` ([B]); return the [B] mask of bad labels."""
        self.dtype = self.dtype or str(y.dtype).replace("torch.", "")
        self.shape = self.shape or list(y.shape[1:])
        v = y.detach().to("cpu", torch.float64).reshape(y.shape[0], -1)
        finite = torch.isfinite(v)
        vals = v[finite]
        if vals.numel():
            self.min, self.max = min(self.min, float(vals.min())), max(self.max, float(vals.max()))
            self.integer &= bool((vals == vals.round()).all())
        # 1. the class histogram (integer labels, small range)
        if self.integer and vals.numel() and self.kind in ("class", "binary", "unknown"):
            lab = vals.round().long()
            self.negative += int((lab < 0).sum())
            lab = lab[(lab >= 0) & (lab < MAX_CLASSES)]
            if lab.numel():
                counts = torch.bincount(lab)
                if counts.numel() > self.counts.numel():
                    counts, self.counts = self.counts, counts
                self.counts[: counts.numel()] += counts
        # 2. labels the loss cannot take
        bad = self._bad(v, finite)
        rows = bad.any(1) if bad is not None else torch.zeros(v.shape[0], dtype=torch.bool)
        if bool(rows.any()):
            self.out_of_range.add(index[rows])
            for val in v[bad].unique()[:20].tolist():
                self.out_of_range_values[val] = self.out_of_range_values.get(val, 0) + int((v[bad] == val).sum())
        return rows

    def _bad(self, v: torch.Tensor, finite: torch.Tensor) -> torch.Tensor | None:
        if self.kind == "class" and self.n_classes is not None:
            bad = finite & ((v < 0) | (v >= self.n_classes) | (v != v.round()))
            if self.ignore_index is not None:
                bad &= v != self.ignore_index
            return bad
        if self.kind == "binary":
            return finite & ((v < 0) | (v > 1))
        return None

    def result(self) -> dict:
        hist = {int(c): int(k) for c, k in enumerate(self.counts.tolist()) if k}
        return {"dtype": self.dtype, "shape": self.shape, "kind": self.kind, "n_classes": self.n_classes,
                "min": self.min if self.min != float("inf") else None,
                "max": self.max if self.max != float("-inf") else None,
                "integer_valued": self.integer, "histogram": hist if len(hist) <= 200 else None,
                "classes_seen": len(hist), "negative_labels": self.negative,
                "out_of_range": {**self.out_of_range.result(),
                                 "values": {_num(k): c for k, c in sorted(self.out_of_range_values.items())}}}


def _num(x: float):
    return int(x) if float(x).is_integer() else x

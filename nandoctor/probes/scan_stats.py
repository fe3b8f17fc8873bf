"""Streaming statistics for the data scan: constant memory in the dataset size.

Every accumulator here takes one chunk of samples at a time and keeps a fixed
amount of state, whatever the number of chunks (``PerSample`` excepted):
- ``FeatureStats``: per-feature (or per-channel) count, mean, variance, min, max,
  non-finite count, whether every value is an integer, and the co-moment with the
  sample index (to find a feature that counts up with the row number). Chunks are
  merged with Chan's parallel formulas in float64, so the result does not depend on
  the order of the chunks.
- ``Reservoir``: a uniform random sample of fixed size (bottom-k by random key).
- ``TopK``: the k largest values and the sample indices they belong to.
- ``PerSample``: one number per sample and column (loss, input magnitude, gradient norm) for sets of
  up to ``MAX_PER_SAMPLE`` samples: 4 bytes per sample and column, the one state that grows with the set.
- ``Magnitude``: each sample's largest robust z-score against per-feature medians and spreads.
- ``TargetStats``: dtype, range, class histogram, labels out of range.
"""

from __future__ import annotations

import math

import torch

MAX_CLASSES = 10_000      # a class histogram is kept for integer labels in [0, MAX_CLASSES)
MAX_LISTED = 1_000        # at most this many sample indices are kept per kind of problem
MAX_PER_SAMPLE = 2 ** 22  # per-sample numbers of every sample are kept up to this set size (16 MB a column)


class FeatureStats:
    """Per-column moments of ``[B, F]`` rows, merged chunk by chunk.

    A chunk's own moments are computed where its rows are (CPU or GPU) in their dtype, two-pass
    (sum, then squares about the chunk mean), with one transfer of ``[F]`` vectors per chunk; the
    merge with what came before is in float64. Rows with a NaN/Inf take a masked float64 path."""

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

    def update(self, rows: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor | None:
        """Take ``rows`` [B, F] (``index`` [B]: their sample indices, used when with_index). Returns None when
        every value was finite, else the [B] bool mask (on the CPU) of the rows with a NaN/Inf."""
        rows = rows.detach()
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.float()
        if self.n is None:
            self._init(rows.shape[1])
        if rows.shape[0] == 0:
            return None
        index = index if self.with_index else None
        # 1. the common case, every value finite: the row sums say so (NaN and Inf propagate into them)
        bad = ~torch.isfinite(rows.sum(1))
        if not bool(bad.any()):
            self._update_finite(rows, index)
            return None
        # 2. else the finite rows as usual and the few others masked, in float64
        bad = bad.cpu()
        good = (~bad).nonzero().squeeze(1)
        if good.numel():
            self._update_finite(rows[good.to(rows.device)], index[good] if index is not None else None)
        pos = bad.nonzero().squeeze(1)
        few = rows[pos.to(rows.device)].to("cpu", torch.float64)
        self._update_masked(few, index[pos] if index is not None else None)
        bad[pos] = ~torch.isfinite(few).all(1)  # a row of huge finite values can sum to Inf: not one of them
        return bad

    def _update_finite(self, rows: torch.Tensor, index: torch.Tensor | None) -> None:
        b = rows.shape[0]
        mb = rows.sum(0) / b
        d = rows - mb                                    # [B, F] centred on the chunk mean
        parts = [mb, rows.amin(0), rows.amax(0)]
        if index is not None:
            i = index.to(d.device, torch.float64)
            di = (i - i.mean()).to(d.dtype)
            parts.append(di @ d)                         # [F] co-moment with the index
        parts.append(d.square_().sum(0))                 # [F] sum of squares about the chunk mean
        stats = torch.stack(parts).to("cpu", torch.float64)  # one transfer per chunk
        mb, lo, hi, m2b = stats[0], stats[1], stats[2], stats[-1]
        self.min, self.max = torch.minimum(self.min, lo), torch.maximum(self.max, hi)
        self._check_integer(rows)
        nb = torch.full_like(self.n, b)
        old, delta, frac = self._merge(nb, mb, m2b)
        if index is not None:
            i = index.to("cpu", torch.float64)
            ib = i.mean().expand_as(nb)
            im2_b = (i - i.mean()).square().sum().expand_as(nb)
            self._merge_index(ib, im2_b, stats[3], delta, old, frac)
        self.n = self.n + nb

    def _update_masked(self, rows: torch.Tensor, index: torch.Tensor | None) -> None:
        """The same moments over the finite values of each column (rows: float64 on the CPU)."""
        ok = torch.isfinite(rows)
        self.nonfinite += (~ok).sum(0)
        vals = torch.where(ok, rows, torch.zeros((), dtype=torch.float64))
        w = ok.to(torch.float64)
        nb = w.sum(0)
        lo = torch.where(ok, rows, torch.full_like(rows, float("inf"))).amin(0)
        hi = torch.where(ok, rows, torch.full_like(rows, float("-inf"))).amax(0)
        self.min, self.max = torch.minimum(self.min, lo), torch.maximum(self.max, hi)
        self._check_integer(vals)
        mb = vals.sum(0) / nb.clamp(min=1)
        dx = (vals - mb) * w
        old, delta, frac = self._merge(nb, mb, (dx * dx).sum(0))
        if index is not None:
            ii = index.to(torch.float64)[:, None].expand_as(dx)
            ib = (ii * w).sum(0) / nb.clamp(min=1)
            di = (ii - ib) * w
            self._merge_index(ib, (di * di).sum(0), (dx * di).sum(0), delta, old, frac)
        self.n = self.n + nb

    def _check_integer(self, vals: torch.Tensor) -> None:
        still = self.integer.nonzero().squeeze(1)  # only columns that were all integers so far
        if still.numel():
            sub = vals[:, still.to(vals.device)]
            self.integer[still] = (sub == sub.round()).all(0).cpu()

    def _merge(self, nb, mb, m2b):
        """Chan's merge of a chunk's (count, mean, M2) into the running ones; the count is updated by the caller."""
        n = self.n + nb
        delta = mb - self.mean
        frac = torch.where(n > 0, nb / n.clamp(min=1), torch.zeros_like(n))
        old = self.n
        self.mean = self.mean + delta * frac
        self.m2 = self.m2 + m2b + delta * delta * old * frac
        return old, delta, frac

    def _merge_index(self, ib, im2_b, cov_b, delta, old, frac) -> None:
        """Merge the co-moment of every column with the sample index."""
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
    """The ``k`` largest finite values seen, with their sample indices (and, optionally, a few more
    numbers per sample carried along: ``extra`` [B, E])."""

    def __init__(self, k: int):
        self.k = k
        self.values = torch.empty(0, dtype=torch.float64)
        self.index = torch.empty(0, dtype=torch.long)
        self.extra: torch.Tensor | None = None

    def add(self, values: torch.Tensor, index: torch.Tensor, extra: torch.Tensor | None = None) -> None:
        values = values.detach().to("cpu", torch.float64)
        ok = torch.isfinite(values)
        v, i = torch.cat([self.values, values[ok]]), torch.cat([self.index, index[ok]])
        e = None
        if extra is not None:
            extra = extra.detach().to("cpu", torch.float64)[ok]
            e = extra if self.extra is None else torch.cat([self.extra, extra])
        if v.numel() > self.k:
            top = torch.topk(v, self.k).indices
            v, i = v[top], i[top]
            e = e[top] if e is not None else None
        self.values, self.index, self.extra = v, i, e

    def items(self) -> list[tuple[int, float]]:
        order = torch.argsort(self.values, descending=True)
        return [(int(self.index[j]), float(self.values[j])) for j in order]

    def rows(self) -> list[tuple[int, float, list[float]]]:
        """``(index, value, extra)`` largest first (``extra`` empty when none was given)."""
        order = torch.argsort(self.values, descending=True)
        return [(int(self.index[j]), float(self.values[j]),
                 self.extra[j].tolist() if self.extra is not None else []) for j in order]


class PerSample:
    """Numbers of every sample by dataset index (``[N]`` float32 columns, NaN until a sample is scanned):
    kept when the set is at most ``MAX_PER_SAMPLE`` samples, so every sample's loss can be looked up."""

    def __init__(self, n: int, columns: tuple[str, ...]):
        self.n = n
        self.columns = {c: torch.full((n,), float("nan")) for c in columns}
        self.scanned = torch.zeros(n, dtype=torch.bool)

    def add(self, index: torch.Tensor, **values: torch.Tensor | None) -> None:
        self.scanned[index] = True
        for name, v in values.items():
            if v is not None and name in self.columns:
                self.columns[name][index] = v.detach().to("cpu", torch.float32)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.columns[name]

    def finite(self, name: str) -> torch.Tensor:
        """The finite values of one column, over the scanned samples (float64)."""
        v = self.columns[name][self.scanned].double()
        return v[torch.isfinite(v)]


def column_shape(ndim: int, last_dim: bool = False) -> tuple[int, ...]:
    """The shape that broadcasts one value per column over a batch of ``ndim`` dims: ``[1, 1, F]`` for a sequence
    (``last_dim``), else ``[1, F]`` or ``[1, C, 1, 1, ...]``."""
    return (1,) * (ndim - 1) + (-1,) if last_dim else (1, -1) + (1,) * max(0, ndim - 2)


class Magnitude:
    """How far each sample's inputs lie from the bulk of the data: the largest robust z-score over the
    sample's values, ``max |x - median| / spread``, with a median and a spread per feature (or channel)
    taken from a reference sample of rows. The spread is the IQR / 1.349 (the std of a normal), else
    the mean absolute deviation x 1.2533 when more than half the values are the median, else
    ``max(|median|, 1)``; non-finite values are left out (they are data-nonfinite's)."""

    def __init__(self, rows: torch.Tensor, last_dim: bool = False):
        # rows: [R, F] reference rows (features, or pixels per channel); ``last_dim``: the features of a sample
        # [B, T, F] are on its last dim (a sequence), not on dim 1
        self.last_dim = last_dim
        v = rows.detach().to("cpu", torch.float64)
        v = torch.where(torch.isfinite(v), v, torch.full((), float("nan"), dtype=torch.float64))
        q = torch.nanquantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=0)  # [3, F]
        med = q[1]
        iqr = (q[2] - q[0]) / 1.349
        mad = (v - med).abs().nanmean(0) * 1.2533
        spread = torch.where(iqr > 0, iqr, torch.where(mad > 0, mad, med.abs().clamp(min=1.0)))
        empty = ~torch.isfinite(med)  # a column without a finite reference value: left out
        self.center = torch.where(empty, torch.zeros_like(med), med)
        self.inv = torch.where(empty | ~torch.isfinite(spread), torch.zeros_like(med), 1.0 / spread)
        self.rows = int(v.shape[0])
        self._cache: dict = {}

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x.device, x.dtype, x.dim())
        if key not in self._cache:
            shape = column_shape(x.dim(), self.last_dim)
            inv = self.inv.to(x.device, x.dtype).reshape(shape)
            self._cache[key] = (-(self.center.to(x.device, x.dtype).reshape(shape) * inv), inv)
        return self._cache[key]

    def score(self, x: torch.Tensor, finite: bool = True) -> torch.Tensor:
        """``[B]`` float32 on the CPU: the largest robust z-score of each sample of ``x`` ([B], [B, F],
        [B, C, ...] or, ``last_dim``, [B, T, F]); ``finite`` False when x may hold NaN/Inf (they are then left out)."""
        x = x.detach()
        x = x[:, None] if x.dim() == 1 else x
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        shift, inv = self._params(x)
        z = torch.addcmul(shift, x, inv)           # (x - median) / spread, one pass
        if not finite:
            z = torch.where(torch.isfinite(x), z, torch.zeros((), dtype=z.dtype, device=z.device))
        return z.abs_().reshape(x.shape[0], -1).amax(1).to("cpu", torch.float32)


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
        self.total, self.total_sq, self.values = 0.0, 0.0, 0   # regression targets: their mean and spread

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
            if self.kind == "regression":
                self.total += float(vals.sum())
                self.total_sq += float((vals * vals).sum())
                self.values += vals.numel()
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

    def _moments(self) -> dict:
        """Regression targets: the mean and standard deviation of every finite target value."""
        if self.kind != "regression" or not self.values:
            return {}
        mean = self.total / self.values
        return {"mean": mean, "std": math.sqrt(max(0.0, self.total_sq / self.values - mean * mean))}

    def result(self) -> dict:
        hist = {int(c): int(k) for c, k in enumerate(self.counts.tolist()) if k}
        return {"dtype": self.dtype, "shape": self.shape, "kind": self.kind, "n_classes": self.n_classes,
                "min": self.min if self.min != float("inf") else None,
                "max": self.max if self.max != float("-inf") else None,
                "integer_valued": self.integer, "histogram": hist if len(hist) <= 200 else None,
                **self._moments(),
                "classes_seen": len(hist), "negative_labels": self.negative,
                "out_of_range": {**self.out_of_range.result(),
                                 "values": {_num(k): c for k, c in sorted(self.out_of_range_values.items())}}}


def _num(x: float):
    return int(x) if float(x).is_integer() else x

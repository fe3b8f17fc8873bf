"""Feature columns that hurt training: data-unnormalized, data-constant-feature, csv-index-column."""

from __future__ import annotations

import math

import torch
from torch import nn

from nandoctor.diagnoses import Diagnosis
from nandoctor.diagnoses.data_common import (SCAN, SHOWN, column_name, coverage, features, finite, plot, scan,
                                             training_trouble)
from nandoctor.probes.scan_stats import column_shape
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges

# --- csv-index-column thresholds ----------------------------------------------------------------------
INDEX_CORR = 0.999       # |correlation| of a feature with the row index at or above this: it counts up with it
INDEX_SLOPE_TOL = 0.01   # slope within 1 +- this (and integer values): it IS the row number (plus an offset)
INDEX_MIN_ROWS = 20      # fewer finite values say nothing about a trend
WEAK_INDEX_CURED = 1.25  # a column that only counts up with the rows: without it the tail loss 1.25x lower


def each_row_once(f: dict, m: dict) -> bool:
    """The column holds n consecutive integers, each once, over the n rows of the whole set: a row number
    saved from a shuffled frame (``df.sample(frac=1).to_csv()``) or a row ID. Read from the moments the scan
    keeps: integer values spanning exactly n, with the mean and the variance of 0..n-1 (exact for a
    permutation; a column with repeats or gaps in that span misses them)."""
    n, lo, hi, mean, std = f.get("count") or 0, f.get("min"), f.get("max"), f.get("mean"), f.get("std")
    if n < INDEX_MIN_ROWS or not f.get("integer_valued") or not all(map(finite, (lo, hi, mean, std))):
        return False
    if m.get("samples_total") is None or m.get("samples_scanned") != m.get("samples_total") or n != m["samples_total"]:
        return False
    variance = n * (n + 1) / 12.0        # the sample variance (n - 1 in the denominator) of 0..n-1
    return hi - lo + 1 == n and abs(mean - (lo + hi) / 2) <= 1e-6 * n and \
        abs(std * std - variance) <= 1e-6 * variance


def index_features(m: dict) -> list[dict]:
    """Features that are a saved index: by name (``Unnamed: 0`` from CSVDataset) or by value (counts with the row)."""
    names = (m.get("inputs") or {}).get("feature_names") or []
    by_name = set(m.get("index_columns") or [])
    found = []
    for f in features(m):
        name = column_name(m, f["j"])
        corr, slope = f.get("index_corr"), f.get("index_slope")
        strong_value = (finite(corr) and abs(corr) >= INDEX_CORR and (f.get("count") or 0) >= INDEX_MIN_ROWS
                        and (f.get("std") or 0) > 0)
        if name in by_name and names:
            found.append({**f, "name": name, "how": "named like a saved pandas index", "strong": True})
        elif strong_value:
            counter = bool(f.get("integer_valued")) and finite(slope) and abs(abs(slope) - 1) <= INDEX_SLOPE_TOL
            found.append({**f, "name": name, "strong": counter,
                          "how": "equals the row index plus an offset" if counter else "counts up with the row index"})
        elif each_row_once(f, m):
            found.append({**f, "name": name, "strong": True,
                          "how": "holds every row number once, in shuffled order (a saved index)"})
    return found


class CsvIndexColumn(Diagnosis):
    code = "csv-index-column"
    title = "A saved row index is used as a feature"
    severity = "critical"
    role = "cause"
    requires = (SCAN,)
    explains = ("data-unnormalized", "exploding-gradients", "cannot-overfit-batch", "lr-too-high",
                "nonfinite-source", "sample-loss-outlier", "initial-loss-mismatch", "saturated-activation")
    thresholds = {"index_corr": INDEX_CORR, "index_slope_tol": INDEX_SLOPE_TOL, "min_rows": INDEX_MIN_ROWS,
                  "weak_cured_ratio": WEAK_INDEX_CURED}
    fix = ("Drop the index column: save with df.to_csv(path, index=False), read with pd.read_csv(path, index_col=0), "
           "or list the real inputs under 'feature_columns:' for nandoctor.datasets.CSVDataset.")
    doc = """
    ## What it detects
    An input feature that is the row number: a column named like the index pandas writes with
    `df.to_csv()` and reads back as `Unnamed: 0`, or a feature whose values equal the sample index
    plus an offset (correlation with the index at least `index_corr`, integer values, slope 1), or
    that counts up with the index (correlation alone: reported as a warning), or, in a set scanned
    whole, that holds each of n consecutive integers once over its n rows in any order (the index
    of a frame shuffled before it was saved, or a row ID: integer values spanning exactly n with the
    mean and variance of 0..n-1).

    ## Why it breaks training
    The row number carries no information about the target, but it is the largest input by far
    (0..N), so it dominates the first layer, blows up the activations and the gradients (often to
    NaN at the user's learning rate), and, when the rows are ordered (by time, by class), it leaks
    the order into the model: it fits the training set and fails on anything else.

    ## Evidence
    The column's name and position, its range, its correlation and slope against the sample index,
    and the feature scale plot. The cure trains a copy without the column (zeroed in front of the
    model): a critical finding (the row number itself) is confirmed when the copy trains no worse; a
    warning (a column that only counts up with the rows, like a year in a time-ordered file) only
    when the copy ends clearly lower (a tail loss `weak_cured_ratio` times lower): a model that can
    use no input at all ends the same either way, which proves nothing.

    ## Fix
    `df.to_csv(path, index=False)` when saving; `pd.read_csv(path, index_col=0)` when reading a file
    already saved with its index; or name the real inputs in `feature_columns:`.

    ## Known false positives
    A real feature that grows with the row order: a time stamp or a day counter in a time-ordered file,
    or a file sorted by one of its features (then the correlation is high but the values are not the
    row number; such cases get a warning, not critical).
    """

    def check(self, ev: Evidence):
        r = scan(ev)
        if r is None:
            return None
        found = index_features(r.metrics)
        if not found:
            return None
        strong = [f for f in found if f["strong"]]
        top = (strong or found)[0]
        evidence = {"columns": [{"name": f["name"], "position": f["j"], "min": f.get("min"), "max": f.get("max"),
                                 "index_corr": f.get("index_corr"), "index_slope": f.get("index_slope"),
                                 "how": f["how"]} for f in found[:SHOWN]], **coverage(r.metrics)}
        return self.finding(0.95 if top["how"].startswith("named") else 0.85 if strong else 0.55, evidence,
                            severity="critical" if strong else "warning", plots=plot(r, "data-features"),
                            title=f"Feature '{top['name']}' {top['how']} (values {fmt(top.get('min'))}.."
                                  f"{fmt(top.get('max'))})")


    def cures(self, ctx, finding):
        """Train without the column (zeroed in front of a copy of the model, features layout only): a row number
        carries nothing about the target, so the copy trains at least as well; a real input on an evenly spaced
        grid (a curve fit) is what the model needs, and without it the copy trains worse: refuted."""
        r = scan(ctx.evidence)
        layout = ((r.metrics.get("inputs") or {}).get("layout")) if r is not None else None
        columns = [c["position"] for c in finding.evidence.get("columns") or [] if c.get("position") is not None]
        if layout != "features" or not columns:
            return []
        names = ", ".join(repr(c["name"]) for c in finding.evidence["columns"])
        factory = ctx.patient.model_factory
        variant = ctx.patient.variant(f"without {names}",
                                      model_factory=lambda: nn.Sequential(DropColumns(columns), factory()))
        # a column that is the row number (critical: named so, or the index plus an offset, or each row number
        # once) is proven by a copy that trains no worse without it; one that only counts up with the rows (a
        # year in a time-ordered file) must be in the way: without it the copy ends clearly lower. A model that
        # can use no input at all (its hidden units pinned) ends the same either way, which proves nothing
        strong = finding.severity == "critical"
        test = judges.not_worse(1.05) if strong else judges.tail_ratio(WEAK_INDEX_CURED)
        return [Cure(f"trained without {names} (zeroed before the model)", variant,
                     judge=judges.when_either_trains(test), refuted_severity="info")]


class DropColumns(nn.Module):
    """Zero the given feature columns of ``[N, F]`` inputs (the column is there, it says nothing)."""

    def __init__(self, columns: list[int]):
        super().__init__()
        self.columns = list(columns)

    def forward(self, x):
        x = x.clone()
        x[:, self.columns] = 0
        return x


class DataUnnormalized(Diagnosis):
    code = "data-unnormalized"
    title = "Inputs are far from unit scale"
    severity = "warning"
    role = "cause"
    requires = (SCAN,)
    explains = ("exploding-gradients", "cannot-overfit-batch", "lr-too-high", "sample-loss-outlier",
                "nonfinite-source", "initial-loss-mismatch", "saturated-activation", "dead-relu",
                "vanishing-gradients")
    thresholds = {
        "far_above": 10.0,      # a feature whose median or robust spread is at least this is far above unit scale
        "far_below": 0.01,      # every feature's magnitude at most this: far below unit scale
        "spread_ratio": 1e3,    # largest / smallest feature spread at least this: wildly different scales
        "critical_scale": 1e4,  # at least this is critical even while training still runs
        "target_far_above": 100.0,  # regression targets whose mean or spread is this large, where training
    }                               # is in trouble: a candidate for the targets' own standardisation
    fix = ("Standardise the inputs with statistics of the training set: x = (x - mean) / std per feature "
           "(sklearn StandardScaler, or transforms.Normalize(mean, std) for images after ToTensor()).")
    doc = """
    ## What it detects
    Inputs whose typical magnitude (per feature or per channel: the larger of the median's size and
    the robust spread, IQR / 1.349) is `far_above` or more (pixels 0..255, incomes, years, a saved
    index), all features `far_below` or less, or features whose spreads differ by `spread_ratio` or
    more. Robust statistics come from a uniform sample of the scanned rows, so a few outlier samples
    do not make a column look unnormalised (those are `sample-loss-outlier`). A tabular column whose
    extreme value sits 100 robust spreads or more from its median in a share of 1-50% of its rows
    (a code for "unknown" stored as a number, -999 or -10000: read from the moments, a mass at that
    value over the rest) is named too; its cure replaces the code by the column's median.

    ## Why it breaks training
    Default initialisations assume inputs of unit scale. Inputs of scale 100 give pre-activations of
    scale 100: saturated sigmoids, huge logits, a loss and gradients 100x too large, so the learning
    rate that works for normalised data diverges (often to NaN) here. Features on wildly different
    scales make the loss surface ill-conditioned: the small features are never learned.

    ## Evidence
    The worst columns with their median, robust spread, min and max; the ratio of largest to smallest
    spread; whether a probe that trained saw trouble (non-finite loss, cannot memorise a batch), which
    makes the finding critical; and the feature scale plot. When training is in trouble nandoctor tries
    the cure on a copy: a fixed standardisation layer in front of the model. Where the loss at
    initialisation is 3x its expected value or more (huge inputs make huge logits), a cured copy
    that starts within 2x the expected loss, trains (memorised, or 25% off its loss) and ends no
    worse proves the cause too; two runs stuck at one loss prove nothing.

    Regression targets far from unit scale (a mean or spread of `target_far_above` or more: sale
    prices in dollars) where the inputs are fine and training is in trouble: errors and gradients of
    that size, and an output layer that starts near 0 with that far to go. A candidate its cure
    decides: the same training with the targets standardised in the loss (the scan's mean and std),
    which must memorise the batch or train clearly better than the untreated run; confirmed, it
    explains the LR findings that scale caused.

    ## Fix
    Standardise with the training set's mean and std (store them; use the same for validation). For
    regression targets, standardise them too and undo it on the predictions (or inside the model, as
    a fitted scaler does).

    ## Known false positives
    Models that normalise their own input (a BatchNorm or LayerNorm first layer, or a scaling inside
    `forward`): the data is then fine as it is. Count-like features that are meant to be large and are
    log-transformed inside the model.
    """

    def check(self, ev: Evidence):
        r = scan(ev)
        if r is None:
            return None
        m = r.metrics
        skip = {f["j"] for f in index_features(m) if f["strong"]}   # a column that only counts up with the rows (a
        # year in a time-ordered file) may be a real quantity: its scale is judged too
        cols = [c for c in (scaled(f) for f in features(m) if f["j"] not in skip) if c is not None]
        if not cols:
            return self._targets(ev, m, r)
        th = self.thresholds
        big = max(cols, key=lambda c: c["magnitude"])
        spread = max(c["scale"] for c in cols) / min(c["scale"] for c in cols)
        reasons = []
        codes = [(c, sentinel(c)) for c in cols] if (m.get("inputs") or {}).get("layout") == "features" else []
        codes = [(c, k) for c, k in codes if k is not None]
        for c, k in codes[:SHOWN]:
            reasons.append(f"'{column_name(m, c['j'])}' holds {fmt(k['value'])} in about {k['share']:.0%} of its rows "
                           f"({k['far']:.3g} spreads from its median: a code for a missing value?)")
        if big["magnitude"] >= th["far_above"]:
            reasons.append(f"'{column_name(m, big['j'])}' has magnitude {fmt(big['magnitude'])}")
        if max(c["magnitude"] for c in cols) <= th["far_below"]:
            reasons.append(f"every column is below {th['far_below']} in magnitude")
        if spread >= th["spread_ratio"]:
            reasons.append(f"column spreads differ {spread:.3g}x")
        if not reasons:
            return self._targets(ev, m, r)
        trouble = training_trouble(ev)
        critical = big["magnitude"] >= th["critical_scale"] or trouble is not None
        worst = sorted(cols, key=lambda c: -c["magnitude"])[:SHOWN]
        evidence = {"largest_magnitude": big["magnitude"], "spread_ratio": spread,
                    "columns": [{"name": column_name(m, c["j"]), "median": c.get("median"),
                                 "robust_scale": c.get("robust_scale"), "std": c.get("std"), "min": c.get("min"),
                                 "max": c.get("max")} for c in worst[:8]],
                    "layout": (m.get("inputs") or {}).get("layout"), "training_trouble": trouble, **coverage(m)}
        if codes:
            evidence["sentinels"] = [{"name": column_name(m, c["j"]), "position": c["j"], "value": k["value"],
                                      "share": k["share"], "median": c.get("median"),
                                      "spreads_from_median": k["far"]} for c, k in codes[:8]]
            critical = critical or max(abs(k["value"] - c["median"]) for c, k in codes) >= th["critical_scale"]
        confidence = 0.7 + 0.25 * min(1.0, math.log10(max(big["magnitude"], 10) / 10) / 3)
        return self.finding(confidence if not trouble else max(confidence, 0.85), evidence,
                            severity="critical" if critical else "warning", plots=plot(r, "data-features"),
                            title="Inputs are far from unit scale: " + "; ".join(reasons))

    def _targets(self, ev: Evidence, m: dict, r):
        """Inputs at unit scale, regression targets far from it (prices in dollars), and training in trouble: the
        output layer starts near 0 and has to travel to the targets' scale, which at the configured LR takes
        longer than any training runs. A candidate its cure decides (the targets standardised)."""
        t = m.get("targets") or {}
        mean, std = t.get("mean"), t.get("std")
        if t.get("kind") != "regression" or not (finite(mean) and finite(std)):
            return None
        scale = max(abs(mean), std)
        trouble = training_trouble(ev)
        if scale < self.thresholds["target_far_above"] or trouble is None:
            return None
        evidence = {"targets": {"mean": mean, "std": std, "min": t.get("min"), "max": t.get("max")},
                    "target_scale": scale, "training_trouble": trouble, **coverage(m)}
        finding = self.finding(0.75, evidence, severity="warning", plots=plot(r, "data-features"),
                               title=f"The regression targets are far from unit scale (mean {fmt(mean)}, std "
                                     f"{fmt(std)}): errors and gradients of that size, and an output layer that "
                                     f"starts near 0")
        finding.explains = tuple(dict.fromkeys(finding.explains + ("lr-too-low", "lr-too-high")))
        return finding

    def cures(self, ctx, finding):
        """Put a fixed standardisation (the scan's mean and std) in front of a copy of the model; for the targets,
        standardise them in the loss."""
        r = scan(ctx.evidence)
        if r is None:
            return []
        t = finding.evidence.get("targets")
        if t is not None:
            mean, std = float(t["mean"]), float(t["std"]) or 1.0
            loss = ctx.patient.loss_fn
            variant = ctx.patient.variant("targets standardised", loss_fn=lambda out, y: loss(out, (y - mean) / std))
            fix = (f"Standardise the targets with the training set's statistics, y = (y - {fmt(mean)}) / {fmt(std)}, "
                   f"and undo it on the predictions (or scale them inside the model, as a fitted scaler does).")
            return [Cure(f"targets standardised in the loss ((y - {fmt(mean)}) / {fmt(std)})", variant,
                         severity="critical", refuted_severity="info", fix=fix,
                         judge=judges.either(judges.beats_control, *starts_repaired(ctx.evidence)))]
        layout = (r.metrics.get("inputs") or {}).get("layout")
        f = r.metrics.get("features") or {}
        if layout not in ("features", "channels", "sequence") or r.metrics.get("features_truncated") or \
                not f.get("mean"):
            return []
        factory = ctx.patient.model_factory
        start, on_stream = starts_repaired(ctx.evidence), starts_repaired(ctx.evidence, judges.trains_on_stream)
        steps = 2 * (ctx.planned_steps or 0) or None   # the data-stream cures: twice the plan's steps
        on_stream_judge = judges.either(judges.fixes(judges.trains_on_stream), judges.ends_lower(STREAM_CURED),
                                        *on_stream)
        codes = finding.evidence.get("sentinels")
        if codes and layout == "features":
            fix = {int(c["position"]): (float(c["value"]), float(c["median"])) for c in codes}
            front = ReplaceSentinel(fix)
            what = ("the code " + ", ".join(f"{c['value']:.6g} in '{c['name']}'" for c in codes[:SHOWN]) +
                    " replaced by the column's median in front of a copy of the model")
            variant = ctx.patient.variant("sentinel replaced", model_factory=lambda: nn.Sequential(front, factory()))
            advice = ("Treat the code as missing: replace it (and add a was-missing indicator column) before "
                      "standardising, e.g. df[col].replace(CODE, np.nan) then an imputer; a code for "
                      "'unknown' stored as a number is read by the model as a real, extreme value.")
            return [Cure(what + ON_STREAM, variant, train="lr_check", steps=steps, severity="critical",
                         refuted_severity="info", judge=on_stream_judge, fix=advice),
                    matched_cure(what, variant, steps, fix=advice)]
        norm = Standardize(f["mean"], f["std"], layout)
        variant = ctx.patient.variant("inputs standardised", model_factory=lambda: nn.Sequential(norm, factory()))
        what = "inputs standardised with the training set's mean and std"
        if str(finding.evidence.get("training_trouble") or "").startswith("overfit"):
            first = Cure(what, variant, severity="critical", refuted_severity="info",
                         judge=judges.either(judges.beats_control, *start))
        else:  # the trouble showed on the data stream (the warm-up, the scan's training): train the cure there
            first = Cure(what + ON_STREAM, variant, train="lr_check", steps=steps, severity="critical",
                         refuted_severity="info", judge=on_stream_judge)
        return [first, matched_cure(what, variant, steps)]


ON_STREAM = " (on the data stream, against the same run without)"


def matched_cure(tried: str, variant, steps: int | None, fix: str | None = None) -> Cure:
    """The second try of a rescaling cure: both arms at their own LR. Rescaled inputs change the gradients'
    size, so at the configured LR the two arms differ by an LR as well (an LR too high for both hides what the
    scale does; one tuned to the raw scale is too low for the rescaled copy). Each arm runs its own LR range
    test and trains at its suggestion on the same batches; the rescaled one must end clearly lower."""
    return Cure(tried + " (each arm at the LR its own sweep suggests, on the data stream)", variant,
                train="lr_matched", steps=steps, severity="critical", refuted_severity="info", fix=fix,
                judge=judges.ends_lower_by(STREAM_CURED, MATCHED_MARGIN))


START_FAR = 3.0   # the loss at initialisation this many times its expected value: the inputs' scale shows there


def starts_repaired(ev: Evidence, trained=judges.trains) -> tuple:
    """Where the loss at initialisation is ``START_FAR`` times its expected value or more (huge inputs make huge
    logits), one more way a rescaling cure proves itself: the treated run starts near the expected loss, trains
    (``trained``: the overfit run's test, or the data stream's) and ends no worse; two runs stuck at the same
    loss prove nothing. Empty where the start was fine or is unknown."""
    out = ev.ok("outputs")
    first = out.metrics.get("initial_loss") if out is not None else None
    expected = out.metrics.get("expected_initial_loss") if out is not None else None
    if not (finite(first) and finite(expected)) or expected <= 0 or first < START_FAR * expected:
        return ()
    @judges.judge(f"the treated run {trained.text}")
    def treated_trains(before, after) -> bool:
        return bool(trained(after))
    return (judges.both(judges.starts_near(expected, 2.0), treated_trains, judges.not_worse(1.05)),)


STREAM_CURED = 0.9  # standardised inputs cure a stalled stream when the run ends at most 0.9x the untreated loss
MATCHED_MARGIN = 0.1  # ... and, each arm at its own LR, lower by a tenth of the untrained model's loss


class Standardize(nn.Module):
    """(x - mean) / std per feature ([N, F], or [N, T, F] for a sequence) or per channel ([N, C, ...]);
    constant columns are only centred."""

    def __init__(self, mean: list[float], std: list[float], layout: str):
        super().__init__()
        std = [s if finite(s) and s > 0 else 1.0 for s in std]
        self.last_dim = layout == "sequence"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))  # [F] or [C]
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x):
        shape = column_shape(x.dim(), self.last_dim)
        return (x - self.mean.reshape(shape)) / self.std.reshape(shape)


SENTINEL_FAR = 100.0              # a value this many robust spreads from the median ...
SENTINEL_SHARE = (0.01, 0.5)      # ... held by this share of the rows (estimated from the moments) ...
SENTINEL_FIT = 0.15               # ... whose two-point variance matches the column's within this share


def sentinel(f: dict) -> dict | None:
    """A code for "unknown" stored as a number (-999, -10000, 9999) in a share of a column's rows: the column's
    extreme value lies `SENTINEL_FAR` robust spreads from its median, and its mean and variance are those of
    a mass of share p at that value over the rest (p from the mean, the variance p (1-p) d^2 + (1-p) s^2 then
    checked). Robust statistics ignore it (a minority of rows), the plain ones are ruled by it. ``{"value",
    "share", "far"}`` or None."""
    med, rs, mean, std = f.get("median"), f.get("robust_scale"), f.get("mean"), f.get("std")
    if not all(finite(v) for v in (med, rs, mean, std)) or rs <= 0:
        return None
    for v in (f.get("min"), f.get("max")):
        if not finite(v):
            continue
        d = v - med
        if abs(d) < SENTINEL_FAR * rs:
            continue
        p = (mean - med) / d
        if not SENTINEL_SHARE[0] <= p <= SENTINEL_SHARE[1]:
            continue
        predicted = p * (1 - p) * d * d + (1 - p) * rs * rs
        if abs(std * std - predicted) <= SENTINEL_FIT * predicted:
            return {"value": v, "share": p, "far": abs(d) / rs}
    return None


class ReplaceSentinel(nn.Module):
    """In front of a copy of the model: in column ``j`` of ``[N, F]`` inputs, the sentinel value replaced by the
    column's median (what an imputer does with a missing value)."""

    def __init__(self, codes: dict[int, tuple[float, float]]):
        super().__init__()
        self.codes = dict(codes)   # column -> (sentinel value, median)

    def forward(self, x):
        x = x.clone()
        for j, (value, median) in self.codes.items():
            col = x[:, j]
            x[:, j] = torch.where(col == value, torch.full_like(col, median), col)
        return x


def scaled(f: dict) -> dict | None:
    """A column's magnitude and spread, or None when it is constant or empty."""
    std, rs, med = f.get("std"), f.get("robust_scale"), f.get("median")
    if not finite(std) or std <= 0 or not (f.get("count") or 0):
        return None
    scale = rs if finite(rs) and rs > 0 else std
    center = abs(med) if finite(med) else abs(f.get("mean") or 0.0)
    return {**f, "scale": scale, "magnitude": max(center, scale)}


class DataConstantFeature(Diagnosis):
    code = "data-constant-feature"
    title = "A feature has the same value in every sample"
    severity = "warning"
    role = "cause"
    requires = (SCAN,)
    explains = ()
    thresholds = {"min_rows": 2}  # a column needs at least two finite values to be called constant
    fix = ("Drop the constant column(s) before training; if you standardise, divide by (std + eps) or skip columns "
           "whose std is 0, or the division turns the whole column into NaN.")
    doc = """
    ## What it detects
    Input features (tabular columns) or channels (images) whose every finite value in the scanned
    samples is the same: zero variance. Also columns that are NaN/Inf in every sample: what a
    constant column becomes after `(x - mean) / std` divides 0 by 0 (critical; it then ranks above
    `data-nonfinite`, which describes the same NaN).

    ## Why it breaks training
    A constant column carries no information, and the usual normalisation `(x - mean) / std` divides
    by zero and turns it into NaN for every sample, which makes the loss NaN from the first step. It
    is often the sign of a bug upstream: a column filled with a default, an empty channel, a join
    that failed.

    ## Evidence
    The constant columns (name or position) and their value, and the feature scale plot (constant
    columns in red).

    ## Fix
    Drop the column; guard normalisation with an epsilon; find why it is constant.

    ## Known false positives
    One-hot columns of a category absent from the training set; on a scanned share of a very large set,
    a rare non-zero value can be missed (the evidence says how much was scanned).
    """

    def check(self, ev: Evidence):
        r = scan(ev)
        if r is None:
            return None
        m = r.metrics
        feats = features(m)
        nan_cols = [f for f in feats if not f.get("count") and (f.get("nonfinite") or 0) >= self.thresholds["min_rows"]]
        if nan_cols:
            return self.divided_by_zero(m, nan_cols, r)
        const = [f for f in feats if (f.get("count") or 0) >= self.thresholds["min_rows"]
                 and f.get("min") is not None and f.get("min") == f.get("max")]
        if not const:
            return None
        every = len(const) == len(feats)
        evidence = {"constant_columns": {column_name(m, f["j"]): f["min"] for f in const[:SHOWN]},
                    "count": len(const), "of_columns": len(feats),
                    "layout": (m.get("inputs") or {}).get("layout"), **coverage(m)}
        names = ", ".join(f"'{n}'" for n in list(evidence["constant_columns"])[:3])
        return self.finding(0.9 if every else 0.85 if m.get("whole_set") else 0.6, evidence,
                            severity="critical" if every else "warning", plots=plot(r, "data-features"),
                            title=f"{len(const)} of {len(feats)} input column(s) never change: {names}")


    def divided_by_zero(self, m: dict, cols: list[dict], r):
        """Columns with no finite value at all: a constant column standardised by its zero std (0/0), or empty."""
        names = [column_name(m, f["j"]) for f in cols]
        evidence = {"nonfinite_columns": {n: f.get("nonfinite") for n, f in zip(names, cols)}, "count": len(cols),
                    "positions": [f["j"] for f in cols], "of_columns": len(features(m)),
                    "layout": (m.get("inputs") or {}).get("layout"), **coverage(m)}
        found = self.finding(0.85, evidence, severity="critical", plots=plot(r, "data-features"),
                             title=f"{len(cols)} input column(s) are NaN/Inf in every sample "
                                   f"({', '.join(repr(n) for n in names[:3])}): a constant column divided by "
                                   "its zero std, or an empty column",
                             fix="Drop the column, or standardise with (x - mean) / (std + eps) and skip columns "
                                 "whose std is 0.")
        found.explains = ("data-nonfinite", "nonfinite-source", "training-crashed", "cannot-overfit-batch",
                          "exploding-gradients", "initial-loss-mismatch", "sample-loss-outlier")
        return found

    def cures(self, ctx, finding):
        """Columns NaN in every sample: zeroed in each sample (what dropping them, or (x - mean) / (std + eps), gives
        a constant column), in the target too where it is the input's shape (an autoencoder's target is its
        input); the overfit run must then run clean where the untreated one broke."""
        e = finding.evidence
        if not e.get("positions") or e.get("layout") not in ("features", "sequence", "channels"):
            return []
        names = ", ".join(repr(n) for n in list(e.get("nonfinite_columns") or {})[:3])
        data = ZeroedColumns(ctx.patient.train_data, e["positions"], channels=e["layout"] == "channels")
        variant = ctx.patient.variant(f"{names} zeroed", train_data=data)
        return [Cure(f"zeroed {names} in every sample (a constant column, as (x - mean) / (std + eps) leaves it)",
                     variant, judge=judges.fixes(judges.clean))]


class ZeroedColumns(torch.utils.data.Dataset):
    """The user's samples with some columns set to 0 (the last dim of a sample, or its dim 0 for ``channels``),
    in the target too when it has the input's shape; the user's dataset is read, never changed."""

    def __init__(self, dataset, columns: list[int], channels: bool = False):
        self.dataset, self.columns, self.channels = dataset, list(columns), channels

    def __len__(self):
        return len(self.dataset)

    def _zeroed(self, t):
        t = t.clone()
        if self.channels:
            t[self.columns] = 0
        else:
            t[..., self.columns] = 0
        return t

    def __getitem__(self, i):
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or not item or not isinstance(item[0], torch.Tensor):
            return item
        x = item[0]
        out = [self._zeroed(x)] + [self._zeroed(t) if isinstance(t, torch.Tensor) and t.shape == x.shape and
                                   t.is_floating_point() else t for t in item[1:]]
        return tuple(out) if isinstance(item, tuple) else out


def fmt(x) -> str:
    return f"{x:.4g}" if finite(x) else str(x)

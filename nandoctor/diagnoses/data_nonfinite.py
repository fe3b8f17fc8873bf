"""data-nonfinite (NaN/Inf in the samples) and sample-load-error (samples that cannot be loaded)."""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.diagnoses.data_common import SCAN, SHOWN, column_name, coverage, features, scan
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.rewire import without_samples


class DataNonfinite(Diagnosis):
    observed = True   # seen in the set-up itself
    code = "data-nonfinite"
    title = "Some samples contain NaN or Inf"
    severity = "critical"
    role = "cause"
    requires = (SCAN,)
    explains = ("nonfinite-source", "training-crashed", "cannot-overfit-batch", "exploding-gradients",
                "sample-loss-outlier", "initial-loss-mismatch", "lr-too-high", "lr-too-low", "data-unnormalized")
    thresholds = {"min_samples": 1}  # one sample with a NaN is enough: it turns every batch it is in NaN
    fix = ("Find the missing values at the sample indices shown and drop or fill them before training "
           "(pandas: df.dropna() or df.fillna(df.median()); numpy: np.nan_to_num), or fix the preprocessing "
           "step that produces them (a division by a zero std, a log of zero).")
    doc = """
    ## What it detects
    Samples of the training set whose inputs or targets contain NaN or ±Inf. The data scan looks at
    every sample (or a stated, uniformly drawn share of a very large set) and lists the indices,
    and, for tabular data, the columns the missing values are in.

    ## Why it breaks training
    One NaN in a batch makes the batch loss NaN, the gradients NaN, and after the optimizer step
    every weight NaN: from then on the loss is NaN whatever the data. It looks like a learning-rate
    or model problem, but the model never had a chance. pandas reads empty CSV cells as NaN, and a
    standardisation that divides by a zero standard deviation makes NaN out of a constant column.

    ## Evidence
    The number of samples with a NaN/Inf, their indices, whether they are in the inputs or the
    targets, the columns (or channels) concerned and how many values each has, and how much of the
    set was scanned.

    ## Fix
    Drop or impute the rows (`df.dropna()`, `df.fillna(...)`), or fix the transform that produces
    the values. Check with `nandoctor scan-data CONFIG` that the count is zero.

    ## Known false positives
    None for the samples listed: the values are there. NaN used on purpose as a "missing" marker that
    the model masks out itself (the loss ignores it) is reported too; ignore the finding then.
    """

    def check(self, ev: Evidence):
        r = scan(ev)
        if r is None:
            return None
        m = r.metrics
        nf = m.get("nonfinite") or {}
        count = nf.get("count", 0)
        if count < self.thresholds["min_samples"]:
            return None
        columns = {column_name(m, f["j"]): f["nonfinite"] for f in features(m) if f.get("nonfinite")}
        scanned = m.get("samples_scanned") or 1
        evidence = {"samples_with_nonfinite": count, "share": count / scanned,
                    "sample_indices": nf.get("indices", [])[:SHOWN],
                    "in_inputs": (nf.get("inputs") or {}).get("count"),
                    "in_targets": (nf.get("targets") or {}).get("count"),
                    "values_per_column": dict(sorted(columns.items(), key=lambda kv: -kv[1])[:SHOWN]),
                    **coverage(m)}
        where = ", ".join(list(evidence["values_per_column"])[:3])
        return self.finding(0.97, evidence, plots=[],
                            title=f"{count} sample(s) contain NaN/Inf"
                                  f"{f' (columns: {where})' if where else ''}, e.g. sample(s) "
                                  f"{', '.join(str(i) for i in evidence['sample_indices'][:5])}")


    def cures(self, ctx, finding):
        """Train on the data stream without the samples that hold NaN/Inf (every one must be known)."""
        r = scan(ctx.evidence)
        nf = (r.metrics.get("nonfinite") or {}) if r is not None else {}
        if not nf.get("listed_all") or r.metrics.get("samples_scanned") != r.metrics.get("samples_total"):
            return []
        drop = nf.get("indices") or []
        if len(ctx.patient.train_data) - len(drop) < ctx.patient.batch_size:
            return []   # not a batch left without them: a column NaN everywhere is a feature's fault, not samples'
        shown = listed(drop)
        tried = f"dropped the {len(drop)} sample(s) with NaN/Inf ({shown}) and trained on the data stream"
        variant = ctx.patient.variant(f"without samples {shown}", train_data=without_samples(ctx.patient, drop))
        return [Cure(tried, variant, train="lr_check", judge=judges.when_broken(judges.clean))]


def listed(indices) -> str:
    """The first five sample indices, and "..." when there are more."""
    return ", ".join(str(i) for i in indices[:5]) + (" ..." if len(indices) > 5 else "")


class SampleLoadError(Diagnosis):
    observed = True   # seen in the set-up itself
    code = "sample-load-error"
    title = "Some samples cannot be loaded"
    severity = "critical"
    role = "cause"
    requires = (SCAN,)
    accepts_failed = True
    explains = ("training-crashed", "cannot-overfit-batch")
    thresholds = {"min_samples": 1}  # training dies on the first batch that contains one
    fix = "Fix the dataset's __getitem__ for the sample indices shown (the exception and the line are given)."
    doc = """
    ## What it detects
    Samples whose loading raises (the dataset's `__getitem__` fails on them), or whose shape or type
    differs from the other samples so they cannot be put in one batch.

    ## Why it breaks training
    Training stops with an exception the first time one of these samples is drawn, which with
    shuffling may be hours in, and differently every run.

    ## Evidence
    How many samples failed, and for the first ones: the index, the exception, its message and the
    line of the dataset code that raised.

    ## Fix
    Fix or drop those samples (a missing file, a corrupt image, a row with a different number of
    columns); a `try/except` that skips them hides the problem.

    ## Known false positives
    A dataset that fails on purpose for some indices (a sparse index space) is reported too.
    """

    def check(self, ev: Evidence):
        r = ev.get(SCAN)
        if r is None or r.status == "skipped":
            return None
        errors = [e for e in (r.metrics.get("load_errors") or {}).get("first", [])
                  if e.get("stage") in ("loading", "collate")]
        if r.status == "failed" and r.error and r.error.get("stage") in ("loading", "collate"):
            errors.append(r.error)
        if len(errors) < self.thresholds["min_samples"]:
            return None
        first = errors[0]
        failed = len(errors) if r.status == "failed" else (r.metrics.get("load_errors") or {}).get("count", len(errors))
        indices = [e.get("index") for e in errors]
        evidence = {"samples_failed": failed, "sample_indices": indices[:SHOWN],
                    "exception": first.get("type"), "message": first.get("message"), "where": first.get("where"),
                    "errors": errors[:5]}
        if r.status != "failed" and failed == len(errors) and None not in indices and \
                r.metrics.get("samples_scanned") == r.metrics.get("samples_total"):
            evidence["all_indices"] = indices   # the scan went over every sample and kept each failure: all known
        which = f"sample {first.get('index')}" if failed == 1 else f"{failed} samples ({listed(indices)})"
        return self.finding(0.9, evidence, title=f"Loading {which} raises {first.get('type')}: "
                                                 f"{(first.get('message') or '')[:100]}")

    def cures(self, ctx, finding):
        """Train on the data stream without the samples that cannot be loaded (every one must be known): the
        stream must then train clean. The untreated stream stops at the first of them it draws, when it draws
        one in the steps the cure has; the scan found them all either way."""
        drop = finding.evidence.get("all_indices")
        if not drop or len(ctx.patient.train_data) - len(drop) < ctx.patient.batch_size:
            return []
        shown = listed(drop)
        tried = f"dropped the {len(drop)} sample(s) that cannot be loaded ({shown}) and trained on the data stream"
        variant = ctx.patient.variant(f"without samples {shown}", train_data=without_samples(ctx.patient, drop))
        return [Cure(tried, variant, train="lr_check", judge=LOADS_AND_TRAINS)]


@judges.judge("the data stream without them trains clean (no exception, finite, 25% off its loss)")
def LOADS_AND_TRAINS(before, after) -> bool:
    return judges.clean(after) and judges.trains_on_stream(after)

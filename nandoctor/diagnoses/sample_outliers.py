"""sample-loss-outlier: individual samples whose loss, gradient or input magnitude is extreme, or whose loss is
non-finite."""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.diagnoses.data_common import SCAN, SHOWN, coverage, finite, plot, scan
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges, scored_on
from nandoctor.treatments.rewire import without_samples

SCORED = 128   # the other samples scored after both trainings


class SampleLossOutlier(Diagnosis):
    code = "sample-loss-outlier"
    title = "A few samples have an extreme or non-finite loss, or extreme inputs"
    severity = "warning"
    role = "cause"
    requires = (SCAN,)
    explains = ("exploding-gradients", "nonfinite-source", "cannot-overfit-batch", "initial-loss-mismatch",
                "lr-too-high")
    thresholds = {
        "ratio": 100.0,          # loss at least this many times the median sample's loss ...
        "robust_z": 10.0,        # ... and at least this many robust standard deviations (1.4826 MAD) above it
        "trained_floor": 10.0,   # after training also at least this many times the median loss at initialisation
        "grad_ratio": 100.0,     # gradient norm at least this many times the reference samples' median
        "critical_ratio": 1e4,   # a loss this many times the median dominates every batch it is in
        "jump": 10.0,            # the flagged losses (gradients) at least this many times the next sample's:
                                 # a few samples set apart, not the top of a heavy tail (real, heavy-tailed inputs)
        "max_share": 0.01,       # if more than this share of samples is that far out (p99 is), it is not "a few"
        "nonfinite_share": 0.5,  # NaN losses on more than half the samples: the model or loss makes them (nonfinite-source)
        "magnitude": 1e3,        # an input this many robust spreads (IQR / 1.349) from its feature's median ...
        "magnitude_gap": 1e3,    # ... and this many times the next sample's: a jump above the data, not a heavy tail
        "magnitude_critical": 1e5,  # a sample this far out dominates every batch it is in once its loss is not ~0
        "magnitude_max_rows": 3,    # "a few": at most this many rows, or max_share of the scanned ones if more
        "cure_ratio": 0.5,          # cured: trained without them, the other samples' loss at most half of with them
    }
    fix = ("Look at the samples listed (their inputs and labels): drop or fix corrupted rows and mislabelled samples, "
           "clip or winsorise extreme values, or use a robust loss (HuberLoss / SmoothL1Loss) for heavy-tailed targets.")
    doc = """
    ## What it detects
    Individual samples whose loss is far above every other sample's: at initialisation (where a
    random model's loss only reflects the size of the inputs and targets: a corrupted value, a target
    1000x the others) and after a short training (where it also shows samples the model cannot fit:
    mislabelled ones). Also samples whose per-sample gradient norm is far above a random reference
    set's, samples with a finite input whose loss is NaN/Inf, and samples whose inputs are extreme
    whatever their loss: a row scaled by 1e6 whose label happens to agree with the model gets a loss
    near zero, yet its magnitude (the largest `|x - median| / spread` over its values, per-feature
    medians and IQR spreads) is `magnitude` or more and `magnitude_gap` times the next sample's.
    Scores are robust (median, MAD, IQR), so the outliers do not hide themselves by inflating the spread,
    and the samples named must stand apart: the last one's loss (gradient norm) at least `jump` times
    the next sample's, where the top of a heavy tail rises smoothly. When more than `max_share` of the
    samples is `ratio` times the median (the 99th percentile is), the far-out losses are a property of
    the data (an `info` note), unless such a jump still sets the listed samples apart from the next
    one: four corrupted boxes among 192 samples put the 99th percentile among them.

    ## Why it breaks training
    A sample whose loss is 1000x the others' produces a gradient that dominates every batch it is in:
    the loss spikes each time it is drawn, the optimizer's moment estimates are thrown off, and a
    learning rate that is fine for the rest of the data diverges. A NaN loss on one sample poisons the
    whole model on the first step that sees it. A sample 1e6 times the scale of the others does
    no harm while the model agrees with its label, and blows the weights away on the first step
    where it does not (its gradient is 1e6 times the others').

    ## Evidence
    The worst samples with their index, loss and ratio to the median, the median loss, the largest
    per-sample gradient norms with their ratio to the reference, the samples with a non-finite loss,
    the samples with extreme inputs (index, magnitude, their loss, the next sample's magnitude), and
    the per-sample loss and magnitude plot with the worst samples labelled by index. Per-sample
    numbers come from the model in eval mode (BatchNorm running statistics, dropout off).

    ## Fix
    Inspect and fix or drop the samples; clip extreme values; a robust loss for heavy-tailed targets.

    ## Known false positives
    Heavy-tailed targets that are real (prices, counts) give large losses on honest samples; hard or
    rare-class samples after training (their loss is compared with the untrained model's median loss
    to keep these out, and a rare class is reported as `class-imbalance` above this finding). Heavy-
    tailed inputs (incomes, Student-t returns) give their largest samples large losses and gradients,
    but these rise smoothly and rarely make the jumps `jump` and `magnitude_gap` ask for; the heaviest
    tails (Cauchy-like, a squared loss on t-distributed inputs) now and then do, and a feature that is
    almost always the same value with a handful of real exceptions (a rare event amount) can.
    """

    def check(self, ev: Evidence):
        r = scan(ev)
        if r is None:
            return None
        m = r.metrics
        loss = m.get("loss") or {}
        init, trained = loss.get("init") or {}, loss.get("trained") or {}
        th = self.thresholds
        nonfinite = (loss.get("nonfinite") or {})
        scanned = m.get("samples_scanned") or 0
        if scanned and (nonfinite.get("count") or 0) > th["nonfinite_share"] * scanned:
            nonfinite = {}  # not a few bad samples: every sample's loss is NaN, the computation is at fault
        flagged_init = outliers(init, th["ratio"], th["robust_z"])
        floor = th["trained_floor"] * init["median"] if finite(init.get("median")) else None
        flagged_trained = [w for w in outliers(trained, th["ratio"], th["robust_z"])
                           if floor is not None and w["loss"] >= floor]
        ginit = (m.get("grad_norms") or {}).get("init") or {}
        flagged_grads = [g for g in ginit.get("worst") or []
                         if finite(g.get("ratio")) and g["ratio"] >= th["grad_ratio"]]
        # many samples that far out is a property of the data's distribution, not a few bad samples, unless a
        # jump sets the listed ones apart from the next sample (two corrupted samples in 192 put p99 among them)
        apart_init = set_apart(flagged_init, "loss", init, th["jump"])
        many = not apart_init and any(finite(d.get("p99")) and finite(d.get("median")) and d["median"] > 0
                                      and d["p99"] >= th["ratio"] * d["median"] for d in (init,))
        if not many:  # a few samples set apart from the rest, not the top of a heavy tail that rises smoothly
            flagged_init = apart_init
            flagged_trained = set_apart(flagged_trained, "loss", trained, th["jump"])
            flagged_grads = set_apart(flagged_grads, "grad_norm", ginit, th["jump"])
        flagged_inputs = extreme_inputs(m.get("magnitude") or {}, th, scanned, init.get("median"))
        if not (nonfinite.get("count") or flagged_init or flagged_trained or flagged_grads or flagged_inputs):
            return None
        worst_ratio = max([w["ratio"] for w in flagged_init + flagged_trained] or [0.0])
        worst_magnitude = max([w["magnitude"] for w in flagged_inputs] or [0.0])
        severity = ("critical" if nonfinite.get("count") or worst_magnitude >= th["magnitude_critical"] else
                    "info" if many and not flagged_inputs else
                    "critical" if worst_ratio >= th["critical_ratio"] else "warning")
        evidence = {"nonfinite_loss_samples": nonfinite.get("count", 0),
                    "nonfinite_loss_indices": (nonfinite.get("indices") or [])[:SHOWN],
                    "worst_at_init": flagged_init[:8], "median_loss_at_init": init.get("median"),
                    "worst_after_training": flagged_trained[:8], "median_loss_after_training": trained.get("median"),
                    "largest_gradients": flagged_grads[:8],
                    "extreme_inputs": flagged_inputs[:8],
                    "median_magnitude": (m.get("magnitude") or {}).get("median"),
                    "many_outliers": many, "mode": m.get("mode"), **coverage(m)}
        ranked = evidence["nonfinite_loss_indices"] + [w["index"] for w in flagged_init + flagged_trained
                                                       + flagged_inputs + flagged_grads]
        evidence["sample_indices"] = list(dict.fromkeys(ranked))[:SHOWN]  # worst first, each once
        confidence = 0.5 if many and severity == "info" else 0.9 if severity == "critical" else 0.8
        finding = self.finding(confidence, evidence, severity=severity, plots=plot(r, "data-sample-loss"),
                               title=self._title(evidence, worst_ratio, worst_magnitude))
        nf = ev.ok("nonfinite")
        if nonfinite.get("count") and nf is not None and nf.metrics.get("samples") and \
                (nf.metrics.get("birth") or {}).get("in_model"):
            # a checked forward pass on those samples found the op in the model where their NaN is born: the
            # samples show the fault, they are not it
            finding.role = "symptom"
            finding.explains = tuple(c for c in finding.explains if c != "nonfinite-source")
        return finding

    def cures(self, ctx, finding):
        """Train on the data stream with and without the samples named (every one of them must be listed) and
        score the same other samples after each: where the untreated stream breaks (non-finite, raises) and
        the stream without them runs clean, or the other samples end at most half as far from their targets,
        the named samples spoiled the training of the rest. (A lower loss on a stream without the samples
        whose loss is highest would prove nothing: the score is on samples both arms kept.)"""
        e = finding.evidence
        if (e.get("nonfinite_loss_samples") or 0) > len(e.get("nonfinite_loss_indices") or []):
            return []   # more samples with a NaN loss than are listed: dropping the listed ones cannot cure it
        drop = list(dict.fromkeys(list(e.get("nonfinite_loss_indices") or []) + [
            w["index"] for key in ("worst_at_init", "worst_after_training", "extreme_inputs", "largest_gradients")
            for w in e.get(key) or []]))
        if not drop:
            return []
        shown = ", ".join(str(i) for i in drop[:5]) + (" ..." if len(drop) > 5 else "")
        tried = (f"dropped the {len(drop)} sample(s) named ({shown}), trained on the data stream and scored "
                 f"the other samples")
        variant = ctx.patient.variant(f"without samples {shown}", train_data=without_samples(ctx.patient, drop))
        others = variant.fixed_batch(size=SCORED, offset=97)   # the same samples, none of them dropped, both arms
        judge = judges.either(judges.fixes(judges.clean),
                              judges.measure_lower("others_loss", self.thresholds["cure_ratio"]))
        cures = [Cure(tried, variant, train=scored_on(others, "others_loss"),
                      steps=2 * (ctx.planned_steps or 0) or None, judge=judge)]
        over = ctx.evidence.ok("overfit")
        held = sorted(set(drop) & set(ctx.patient.fixed_indices()))
        if over is not None and over.metrics.get("memorised") is False and held:
            # the overfit probe's batch holds some of them and was not memorised: a batch of the data without
            # them is (a robust loss keeps them from spoiling the others' fit, not from ruling the batch's loss)
            cures.append(Cure(f"the overfit run on a batch of the data without the {len(drop)} sample(s) named (its "
                              f"batch held {', '.join(str(i) for i in held[:5])})", variant,
                              judge=judges.fixes(judges.trains)))
        return cures

    @staticmethod
    def _title(e: dict, ratio: float, magnitude: float) -> str:
        shown = ", ".join(str(i) for i in e["sample_indices"][:5])
        if e["nonfinite_loss_samples"]:
            return f"{e['nonfinite_loss_samples']} sample(s) with finite inputs have a NaN/Inf loss (e.g. {shown})"
        by_loss = list(dict.fromkeys(w["index"] for w in e["worst_at_init"] + e["worst_after_training"]))
        size = _size_phrase([w for w in e["extreme_inputs"] if w["index"] not in by_loss])
        if ratio:
            loud = ", ".join(str(i) for i in by_loss[:5])
            return f"Sample(s) {loud} have a loss up to {ratio:.3g}x the median sample's{'; ' + size if size else ''}"
        if magnitude:
            return size[0].upper() + size[1:]
        return f"Sample(s) {shown} have a gradient norm over {SampleLossOutlier.thresholds['grad_ratio']:.0f}x " \
               "the typical sample's"


def _size_phrase(extreme: list[dict]) -> str:
    """"sample(s) 12, 40 have inputs up to 2.5e+06 robust spreads ..." for the samples named by their size."""
    if not extreme:
        return ""
    quiet = " (their loss does not show it)" if all(w["loss_small"] for w in extreme) else ""
    return (f"sample(s) {', '.join(str(w['index']) for w in extreme[:5])} have inputs up to "
            f"{max(w['magnitude'] for w in extreme):.3g} robust spreads from the feature medians{quiet}")


def outliers(dist: dict, ratio: float, z: float) -> list[dict]:
    """The worst samples of one loss distribution that are ``ratio`` x the median and ``z`` robust SDs above it."""
    med, mad = dist.get("median"), dist.get("mad")
    if not finite(med) or med <= 0:
        return []
    spread = max(mad if finite(mad) else 0.0, 1e-12)
    return [{"index": w["index"], "loss": w["loss"], "ratio": w["loss"] / med, "robust_z": (w["loss"] - med) / spread}
            for w in dist.get("worst") or []
            if finite(w.get("loss")) and w["loss"] >= ratio * med and (w["loss"] - med) / spread >= z]


def set_apart(flagged: list[dict], key: str, dist: dict, jump: float) -> list[dict]:
    """The leading ``flagged`` samples (a prefix of ``dist["worst"]``, largest first) up to the last one whose
    ``key`` is at least ``jump`` times the next sample's (the next listed, else ``dist["next"]``, the largest
    value not listed, else the 99th percentile). The top of a heavy tail rises smoothly and has no such jump;
    without a next value to compare with, every flagged sample stays."""
    values = [w[key] for w in dist.get("worst") or [] if finite(w.get(key))]
    after = dist.get("next") if finite(dist.get("next")) else dist.get("p99")
    values += [after] if finite(after) else []
    cut = 0
    for k in range(1, len(flagged) + 1):
        if k >= len(values) or values[k - 1] >= jump * max(values[k], 1e-12):
            cut = k
    return flagged[:cut]


def extreme_inputs(dist: dict, th: dict, scanned: int, loss_median: float | None = None) -> list[dict]:
    """The samples whose input magnitude is at least ``th["magnitude"]`` and ``th["magnitude_gap"]`` times the
    next sample's (the lowest such jump in the listed ranking, or the jump to the 99th percentile): a few
    samples set apart from the data. Empty when the jump is only past every listed sample (not "a few")."""
    worst = sorted((w for w in dist.get("worst") or [] if finite(w.get("magnitude"))), key=lambda w: -w["magnitude"])
    values = [w["magnitude"] for w in worst] + ([dist["p99"]] if finite(dist.get("p99")) else [])
    cut = 0
    for k in range(1, len(values)):
        above, below = values[k - 1], max(values[k], 1.0)
        if above >= th["magnitude"] and above >= th["magnitude_gap"] * below:
            cut = k
    allowed = max(th["magnitude_max_rows"], int(th["max_share"] * (scanned or 0)))
    if cut == 0 or cut >= len(worst) or cut > allowed:
        return []
    nxt = max(values[cut], 1.0)
    out = []
    for w in worst[:cut]:
        losses = [v for v in (w.get("loss_init"), w.get("loss_trained")) if finite(v)]
        quiet = bool(losses) and finite(loss_median) and loss_median > 0 and max(losses) < th["ratio"] * loss_median
        out.append({"index": w["index"], "magnitude": w["magnitude"], "next_magnitude": values[cut],
                    "ratio_to_next": w["magnitude"] / nxt, "loss_at_init": w.get("loss_init"),
                    "loss_after_training": w.get("loss_trained"), "loss_small": quiet})
    return out

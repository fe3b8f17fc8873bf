"""loss-reduction-sum: the loss grows with the batch size (summed, not averaged)."""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.diagnoses.pairing_evidence import Pairing, finite, overfit_metrics
from nandoctor.records import Evidence, Finding
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.pairing import mean_over_batch

SUM_RATIO_LO = 1.6   # doubling the batch multiplies a summed loss by ~2, a mean by ~1
SUM_RATIO_HI = 2.5   # ... and not by much more (that would be noise, not a sum)


ADDITIVE_LO, ADDITIVE_HI = 0.8, 1.25   # loss(batch) / (loss(half) + loss(other half)): ~1 for a sum, ~1/2 a mean


def looks_summed(metrics: dict) -> bool:
    """The loss of each doubled batch is the sum of its two halves' losses (additive: a sum over samples), or,
    where that was not measured, both doublings of the batch (B/2 -> B -> 2B) doubled the loss."""
    additive = metrics.get("scale_additivity") or []
    if len(additive) >= 2 and all(finite(a) for a in additive):
        return all(ADDITIVE_LO <= a <= ADDITIVE_HI for a in additive)
    ratios = metrics.get("scale_ratios") or []
    return len(ratios) >= 2 and all(finite(r) and SUM_RATIO_LO <= r <= SUM_RATIO_HI for r in ratios)


def diverged_run(overfit: dict) -> bool:
    """The overfit run went non-finite, or ended higher than it started."""
    if not overfit:
        return False
    if overfit.get("nonfinite_step") is not None:
        return True
    initial, tail = overfit.get("initial_loss"), overfit.get("tail_loss")
    return finite(initial) and finite(tail) and tail > initial


class LossReductionSum(Diagnosis):
    code = "loss-reduction-sum"
    title = "The loss grows with the batch size: it is summed over the samples, not averaged"
    severity = "warning"
    requires = ("outputs",)
    explains = ("exploding-gradients", "lr-too-high", "cannot-overfit-batch", "nonfinite-source",
                "initial-loss-mismatch", "training-crashed")
    thresholds = {"sum_ratio_lo": SUM_RATIO_LO, "sum_ratio_hi": SUM_RATIO_HI}
    fix = ("Use reduction='mean' (the default), or divide a hand-written summed loss by the batch size; "
           "then the learning rate no longer depends on the batch size.")
    doc = """
    ## What it detects
    The loss of a fresh model on nested batches of B/2, B and 2B samples (each containing the
    previous one) is, at each doubling, the sum of the losses of its two disjoint halves (their
    ratio within 0.8-1.25; a mean gives 1/2, whatever the samples): the loss is a sum over samples
    (`reduction='sum'`, or `.sum()` in a hand-written loss) rather than a mean. With the user's own
    `train_step`, the losses are those the step returns (from a copy stepped at LR 0), so a sum
    written inside the step is seen too.

    ## Why it breaks training
    A summed loss has gradients B times larger than the mean: the effective learning rate of SGD
    grows with the batch size, so an LR tuned at one batch size diverges at another, and the loss
    values are not comparable across batch sizes or with the last incomplete batch. Adam is mostly
    insensitive to the scale, so on its own this is a warning; when the overfit probe diverged
    (non-finite, or ending above where it started) it becomes critical.

    ## Evidence
    The batch sizes and the loss on each, the two doubling ratios (about 2 for a sum, about 1 for a
    mean) and the two additivity ratios,
    the loss's `reduction` setting when it has one, and the overfit probe's outcome.

    ## Fix
    `reduction='mean'`, or divide by the batch size. The treatment divides the loss by the batch
    size on a copy and re-runs the overfit probe (only when the overfit probe diverged or did not
    memorise its batch: otherwise there is nothing to cure); confirmed, the finding is critical.

    ## Known false positives
    Losses that are deliberately sums (per-sequence sums in language models, ELBO terms) and are
    used with a learning rate tuned for that; batches so small that the per-sample losses vary by
    a factor of two between halves (the two-doubling check makes this unlikely).
    """

    def check(self, ev: Evidence) -> Finding | None:
        p = Pairing.of(ev)
        if p is None or not looks_summed(p.metrics):
            return None
        m, of = p.metrics, overfit_metrics(ev)
        reduction = (m.get("loss") or {}).get("reduction")
        diverged = diverged_run(of)
        confidence = 0.85 + (0.1 if reduction == "sum" else 0.0)
        evidence = {"batch_sizes": m.get("scale_batches"), "losses": m.get("scale_losses"),
                    "ratios": m.get("scale_ratios"), "additivity": m.get("scale_additivity"), "reduction": reduction, "loss": p.loss_name,
                    "optimizer": ev.facts.get("optimizer"), "overfit_memorised": of.get("memorised"),
                    "overfit_nonfinite_step": of.get("nonfinite_step"), "overfit_diverged": diverged}
        return self.finding(confidence, evidence, severity="critical" if diverged else "warning",
                            probes=["outputs", "overfit"] if of else ["outputs"])

    def cures(self, ctx, finding: Finding) -> list:
        e = finding.evidence
        if e.get("overfit_memorised") is not False and not e.get("overfit_diverged"):
            return []  # the summed loss trains: nothing to cure, the finding stays a warning
        if ctx.patient.train_step is not None:   # the sum may be written inside the step: scale what it produces
            size = ctx.patient.batch_size
            tried = f"divided every gradient by the batch size ({size}) as it is computed (sum -> mean)"
            variant = ctx.patient.variant(tried, model_factory=mean_gradients(ctx.patient.model_factory, size))
            return [Cure(tried, variant, judge=judges.fixes(judges.memorised), severity="critical")]
        tried = "divided the loss by the batch size (sum -> mean)"
        variant = ctx.patient.variant(tried, loss_fn=mean_over_batch(ctx.patient.loss_fn))
        return [Cure(tried, variant, judge=judges.fixes(judges.memorised), severity="critical")]


def mean_gradients(factory, size: int):
    """A model factory: the user's model with a hook on every parameter that divides each gradient it receives
    by ``size`` before it is accumulated: what a mean over the batch gives where the step sums, also when the
    step never zeroes the gradients (they then accumulate means, as they would). A change of the set-up, so the
    battery can run again on it."""
    def build():
        model = factory()
        for p in model.parameters():
            if p.requires_grad:
                p.register_hook(lambda g: g / size)
        return model
    return build

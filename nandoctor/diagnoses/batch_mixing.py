"""batch-mixing: a sample's output depends on the other samples in its batch."""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.rewire import batch_first_flipped

NORMALISERS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")   # batch statistics by design


class BatchMixing(Diagnosis):
    observed = True   # seen in the set-up itself
    code = "batch-mixing"
    title = "Each sample's output depends on the other samples in its batch"
    severity = "warning"
    role = "cause"
    requires = ("outputs",)
    explains = ("cannot-overfit-batch", "no-generalisation", "train-eval-gap")
    thresholds = {
        "tolerance": 1e-3,   # the shared samples' outputs move by more than this share of their scale (rounding,
                             #   a kernel picked for another batch size, moves them by ~1e-6)
        "confidence": 0.8,
        "confidence_batch_first": 0.95,   # a batch_first=False layer fed the batch on dim 0
    }
    fix = ("Keep the batch on the axis every layer reads as the batch: build nn.MultiheadAttention, "
           "nn.TransformerEncoderLayer, nn.LSTM/GRU/RNN with batch_first=True for [batch, time, features] inputs "
           "(or transpose to [time, batch, features] before them); use permute/transpose, not view/reshape, to "
           "swap axes; give softmax, normalisations and reductions a dim other than 0.")
    doc = """
    ## What it detects
    With the model in eval mode (running BatchNorm statistics, no dropout) and no gradient, the
    `outputs` probe runs the fixed batch, and then its second half alone. A model that keeps its
    samples apart gives those samples the same outputs both times (up to rounding: a kernel picked
    for another batch size differs by about 1e-6). The finding fires when they move by more than
    `tolerance` of the outputs' scale. A model that samples at random in eval mode (two calls on the
    same batch from two RNG states differ) is not judged. A fourth pass with a hook on every
    module names the first one whose output on those samples changed with their batch-mates.

    ## Why it breaks training
    The model no longer computes a function of each sample: an attention layer attends across the
    batch, a recurrent layer carries its state from one sample to the next, a softmax normalises
    over the samples. It can still memorise a fixed batch, which is why the loss looks fine; what it
    learns does not belong to any one sample, predictions change with the batch size and with
    whatever happens to sit beside a sample, and validation suffers. The usual cause is
    `batch_first=False` (the default of `nn.MultiheadAttention`, `nn.TransformerEncoderLayer`,
    `nn.LSTM`, `nn.GRU`, `nn.RNN`) given `[batch, time, features]`: the layer reads the batch as the
    sequence and the sequence as the batch. Another is `x.view(T, B, C)` where `x.transpose(0, 1)` was
    meant.

    ## Evidence
    The largest change of the shared samples' outputs over their scale (`difference`), the batch and
    half sizes, the first module whose output changed and its type, and whether it is a
    `batch_first=False` layer that was given the batch on dim 0 (`batch_first_mismatch`). When no
    module's output changed, the mixing is in the model's own `forward` (`after`: the last module
    whose outputs still agreed).

    ## Cure
    When the first module that mixes is a `batch_first=False` attention or recurrent layer given
    the batch on dim 0: a copy with `batch_first=True` on the model's `batch_first=False` layers,
    trained on the same batch as the untreated model. Confirmed when the copy's samples no longer
    depend on each other and it trains no worse; then critical. Mixing elsewhere (a `view` that
    interleaves samples, a softmax over dim 0) has no cure to try: the finding stays a warning.

    ## Fix
    `batch_first=True` on the layers (or `x.transpose(0, 1)` before and after them); `permute`, not
    `view`, to swap axes; `dim=1` (or `-1`) for softmax and normalisations.

    ## Known false positives
    BatchNorm built with `track_running_stats=False` uses the batch's statistics in eval mode too,
    by design: reported as a note, not a warning. Set-ups where the samples of a batch are meant to
    see each other (a batch that is one set, in-batch retrieval scored in the model) get a warning
    that the cure does not confirm.
    """

    def check(self, ev: Evidence):
        r = ev.ok("outputs")
        mix = r.metrics.get("batch_mixing") if r is not None else None
        if not mix or not mix.get("difference", 0) > self.thresholds["tolerance"]:
            return None
        module, kind = mix.get("module"), mix.get("module_type")
        mismatch = bool(mix.get("batch_first_mismatch"))
        by_design = kind in NORMALISERS
        n, k = (mix.get("samples") or [None, None])[:2]
        where = (f"`{module}` ({kind}, built with batch_first=False and given the batch on dim 0)" if mismatch
                 else f"`{module}` ({kind})" if module else
                 "the model's own forward" + (f", after `{mix['after']}`" if mix.get("after") else ""))
        title = (f"The outputs of {k} samples move by {mix['difference']:.1%} of their scale when the other {n - k} "
                 f"samples of the batch are beside them: they mix in {where}")
        evidence = {**mix, "by_design": by_design}
        severity = "info" if by_design else "warning"
        confidence = self.thresholds["confidence_batch_first" if mismatch else "confidence"]
        return self.finding(confidence, evidence, title=title, severity=severity)

    def cures(self, ctx, finding):
        layers = finding.evidence.get("batch_first_layers") or []
        if not layers or not finding.evidence.get("batch_first_mismatch"):
            return []   # no batch_first=False layer given the batch on dim 0: nothing this cure can mend
        tried = f"batch_first=True on {', '.join(f'`{n}`' for n in layers)}"
        variant = ctx.patient.variant(tried, model_factory=batch_first_flipped(ctx.patient, layers))
        tolerance = self.thresholds["tolerance"]
        judge = judges.both(judges.measured("batch_mixing", at_least=tolerance, arm="before"),
                            judges.measured("batch_mixing", at_most=tolerance), judges.trains_no_worse())
        return [Cure(tried, variant, judge=judge, measure="batch_mixing", severity="critical")]

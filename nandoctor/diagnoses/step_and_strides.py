"""The user's step and the layer geometry: gradients that accumulate, strides that skip inputs."""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.rewire import zero_grad_first


class MissingZeroGrad(Diagnosis):
    observed = True   # seen in the set-up itself
    code = "missing-zero-grad"
    title = "Gradients accumulate across steps: zero_grad() is missing"
    severity = "critical"
    role = "cause"
    requires = ("structure",)
    explains = ("cannot-overfit-batch", "exploding-gradients", "lr-too-high")
    thresholds = {"accumulated_ratio": 1.5,   # <g2, g1>/<g1, g1>: 1 when zeroed, 2 when summed; flag above halfway
                  "min_cosine": 0.9}          # the second gradient points the same way as the first
    fix = ("Call optimizer.zero_grad() (or model.zero_grad()) at the start of every step, before backward(); "
           "when accumulating on purpose, zero after each optimizer.step().")
    doc = """
    ## What it detects
    With the user's own `train_step`, two identical calls on the same batch at learning rate zero
    (same seed, so dropout agrees) give the gradient seen at `optimizer.step()` twice. If the step
    zeroes the gradients the two agree (ratio 1); if it does not, the second is the sum of both
    (ratio 2).

    ## Why it breaks training
    PyTorch adds every `backward()` into `.grad`. Without `zero_grad()` the step uses the sum of all
    past gradients: the effective learning rate grows every step, updates keep pushing in stale
    directions, and the loss oscillates or diverges (it looks like a learning rate that is too high).

    ## Evidence
    The ratio `<g2, g1> / <g1, g1>` and the cosine between the two gradients, both gradient norms;
    the cure tried on a copy (the same step with `zero_grad()` first): cured when the ratio falls
    back to 1 and the batch is memorised (or the loss falls 10% further). When `optimizer.step()`
    ran in both calls the summed gradient was applied, not accumulated on purpose: then a ratio back
    at 1 with a training no worse than before is the cure too, since on one batch an adaptive
    optimizer hides much of the harm in a short run. Where the batch cannot tell, the same cure is
    judged on the data stream. Its loss curve beside the untreated one.

    ## Fix
    `optimizer.zero_grad()` at the top of the step. For deliberate gradient accumulation over k
    micro-batches, call `optimizer.step()` and then `optimizer.zero_grad()` every k-th call.

    ## Known false positives
    A step that accumulates on purpose and only steps/zeroes every k-th call (the probe sees the
    first two calls): when `optimizer.step()` did not run in both, the finding is only a warning
    that says so, and the cure must train clearly better to confirm it.
    """

    def check(self, ev: Evidence):
        r = ev.ok("structure")
        acc = r.metrics.get("accumulation") if r is not None else None
        if not acc or acc.get("ratio") is None:
            return None
        if acc["ratio"] < self.thresholds["accumulated_ratio"] or (acc.get("cosine") or 0) < self.thresholds["min_cosine"]:
            return None
        confidence = 0.97 if abs(acc["ratio"] - 2.0) < 0.05 else 0.85
        evidence = {**acc, "expected_if_zeroed": 1.0, "expected_if_accumulating": 2.0}
        if acc.get("stepped_every_call") is False:
            # no optimizer.step() in one of the calls: this may be gradient accumulation on purpose (step and
            # zero every k-th call), which two calls cannot tell from a missing zero_grad()
            return self.finding(0.5, evidence, severity="warning",
                                title=f"Gradients accumulate across calls of train_step ({acc['ratio']:.2f}x) and "
                                      f"optimizer.step() did not run in every call: accumulation on purpose, or "
                                      f"zero_grad() missing")
        return self.finding(confidence, evidence,
                            title=f"Gradients accumulate across calls of train_step: the second step's gradient is "
                                  f"{acc['ratio']:.2f}x the first (zero_grad() missing)")

    def cures(self, ctx, finding):
        if ctx.patient.train_step is None:
            return []
        variant = ctx.patient.variant("optimizer.zero_grad() before each step",
                                      train_step=zero_grad_first(ctx.patient.train_step))
        # cured: the gradients no longer accumulate, and the treated run trains
        stepped = finding.evidence.get("stepped_every_call") is not False
        # the summed gradient applied at every step is broken by construction: the treated run only has to pass;
        # where the step may accumulate on purpose it has to train clearly better than the untreated one
        trains = judges.either(judges.repairs(judges.memorised), judges.improves(0.1)) if stepped \
            else judges.improves(0.1)
        ratio = judges.measured("gradient_ratio", at_most=self.thresholds["accumulated_ratio"])
        judge = judges.both(trains, ratio)
        if finding.evidence.get("stepped_every_call"):
            # optimizer.step() ran in every call, so the summed gradient was applied: no accumulation on
            # purpose. Removing the sum is the cure when the training is no worse for it, even where the
            # short run cannot show the harm yet (an adaptive optimizer on one batch hides it)
            judge = judges.either(judge, judges.both(ratio, judges.not_worse(1.05)))
        # on one fixed batch an adaptive optimizer hides much of the harm (the summed gradients all point the
        # same way); on the data stream they are the sum of every past batch's: judged there when the batch
        # alone cannot tell
        stream = judges.both(judges.either(judges.fixes(judges.trains_on_stream), judges.ends_lower(STREAM_CURED)),
                             ratio)
        steps = 2 * (ctx.planned_steps or 0) or None
        return [Cure("called optimizer.zero_grad() before each step", variant, judge=judge, measure="gradient_ratio"),
                Cure("called optimizer.zero_grad() before each step (on the data stream, against the same run "
                     "without)", variant, train="lr_check", steps=steps, judge=stream, measure="gradient_ratio")]


STREAM_CURED = 0.9  # on the data stream: the zeroed run ends at most 0.9x the accumulating one's loss


class PoolStrideGtKernel(Diagnosis):
    code = "pool-stride-gt-kernel"
    title = "A pooling/convolution stride is larger than its kernel: inputs are skipped"
    severity = "warning"
    role = "cause"
    requires = ("structure",)
    thresholds = {"confidence": 0.9}
    fix = "Make the stride at most the kernel size (stride=None for pooling means stride = kernel), or grow the kernel."
    doc = """
    ## What it detects
    A max/avg pooling or convolution call, as traced during a real forward pass (modules and
    `F.*` calls alike), whose stride is larger than its dilated kernel `d*(k-1)+1` in some
    dimension. 1x1 convolutions with stride 2 (ResNet projection shortcuts) are exempt.

    ## Why it breaks training
    The windows do not touch: between two windows `stride - kernel` positions are never read. The
    layer throws away that share of its input (and of the gradient to the layers before it), which
    silently drops features such as thin edges or single time steps.

    ## Evidence
    The module name and type (or `forward() code` for functional calls), the op, kernel, stride and
    dilation, and the share of positions skipped in each dimension.

    ## Fix
    Use `stride <= kernel_size` (for pooling the default `stride=None` means `stride=kernel_size`),
    or a larger kernel; for deliberate subsampling prefer a strided convolution with kernel >= stride.

    ## Known false positives
    Deliberate subsampling (dilated "à trous" layouts, stride tricks on sparse inputs).
    """

    def check(self, ev: Evidence):
        r = ev.ok("structure")
        strided = (r.metrics.get("strided") or []) if r is not None else []
        if not strided:
            return None
        for s in strided:
            s["skipped_share"] = [max(0.0, (st - (d * (k - 1) + 1)) / st)
                                  for st, k, d in zip(s["stride"], s["kernel"], s["dilation"])]
        top = strided[0]
        return self.finding(self.thresholds["confidence"], {"layers": strided},
                            title=f"{top.get('type') or top['op']} `{top['module']}` has stride {top['stride']} > "
                                  f"kernel {top['kernel']}: {max(top['skipped_share']):.0%} of the inputs are never read")

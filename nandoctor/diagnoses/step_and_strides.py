"""The user's step and the layer geometry: gradients that accumulate, strides that skip inputs."""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.rewire import zero_grad_first


class MissingZeroGrad(Diagnosis):
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
    back to 1 and the batch is memorised; its loss curve beside the untreated one.

    ## Fix
    `optimizer.zero_grad()` at the top of the step. For deliberate gradient accumulation over k
    micro-batches, call `optimizer.step()` and then `optimizer.zero_grad()` every k-th call.

    ## Known false positives
    A step that accumulates on purpose and only steps/zeroes every k-th call (the probe sees the
    first two calls); the cure then shows whether it matters.
    """

    def check(self, ev: Evidence):
        r = ev.ok("structure")
        acc = r.metrics.get("accumulation") if r is not None else None
        if not acc or acc.get("ratio") is None:
            return None
        if acc["ratio"] < self.thresholds["accumulated_ratio"] or (acc.get("cosine") or 0) < self.thresholds["min_cosine"]:
            return None
        confidence = 0.97 if abs(acc["ratio"] - 2.0) < 0.05 else 0.85
        return self.finding(confidence, {**acc, "expected_if_zeroed": 1.0, "expected_if_accumulating": 2.0},
                            title=f"Gradients accumulate across calls of train_step: the second step's gradient is "
                                  f"{acc['ratio']:.2f}x the first (zero_grad() missing)")

    def cures(self, ctx, finding):
        if ctx.patient.train_step is None:
            return []
        variant = ctx.patient.variant("optimizer.zero_grad() before each step",
                                      train_step=zero_grad_first(ctx.patient.train_step))
        # cured: the gradients no longer accumulate, and the treated run trains
        judge = judges.both(judges.either(judges.repairs(judges.memorised), judges.improves(0.1)),
                            judges.measured("gradient_ratio", at_most=self.thresholds["accumulated_ratio"]))
        return [Cure("called optimizer.zero_grad() before each step", variant, judge=judge, measure="gradient_ratio")]


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

"""nonfinite-source: the first module/op that produced NaN/Inf, the step, and its inputs at that moment."""

from __future__ import annotations

import math

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence
from nandoctor.treatments import Cure
from nandoctor.treatments.guards import guardable, guarded


def before_birth(losses: list[float], step: int) -> list[float]:
    return [x for x in losses[:step] if math.isfinite(x)]


class NonfiniteSource(Diagnosis):
    code = "nonfinite-source"
    title = "Where the first NaN/Inf is born"
    severity = "critical"
    role = "cause"
    requires = ("overfit",)
    explains = ("cannot-overfit-batch", "training-crashed", "exploding-gradients", "loss-nonfinite")
    thresholds = {"diverged_factor": 10.0,   # the loss grew 10x above its start before the NaN: a consequence of divergence
                  "huge_input": 1e10,        # inputs this large overflow anywhere: the cause is their scale (data, LR)
                  "confidence_model": 0.9,   # born in the model's own computation, with the loss still sane
                  "confidence_other": 0.6}   # born in the loss, or after divergence: the cause is elsewhere
    fix = ("Guard the op named here: clamp before log/sqrt/pow/division (torch.clamp(x, min=eps)), use the "
           "numerically stable fused version (log_softmax, BCEWithLogitsLoss, logsumexp), or keep its input in range.")
    doc = """
    ## What it detects
    During the overfit probe a value turned NaN or Inf. The recorder names the first module whose
    output was non-finite while its input was finite (forward hooks), or the first parameter whose
    gradient was (checked at `optimizer.step()`), with the step. The `nonfinite` probe then replays
    the training up to that step and checks every torch call of it: the first call with finite
    inputs and a non-finite output (op, module, line of the user's code, input statistics), or, for a
    birth in backward, the backward function `torch.autograd.detect_anomaly` names.

    Where training on one batch stays finite but the data scan found samples with finite inputs and
    a NaN loss, the probe runs one checked forward pass on (up to 8 of) them as the scan did (eval
    mode, no gradient: the path inference takes, which is not always the one training takes; PyTorch's
    fused attention fast path is NaN on a row whose keys are all masked, where training's path
    zero-fills it). An op inside the model that turns them non-finite is reported with the samples
    (`samples`, `mode`, `during_training: false`), as a direct observation; the samples' own finding
    ranks under it.

    ## Why it breaks training
    One NaN spreads through every later op: the loss becomes NaN, every gradient becomes NaN, and
    after one optimizer step every weight is NaN too; training is over even if the loss is printed
    only as `nan` much later.

    ## Evidence
    The op (`torch.sqrt`, `torch.nn.functional.linear`, `LogBackward0`, ...), the module it ran in and
    whether that is part of the model or of the loss, the phase (forward, backward, optimizer step),
    the step, the user's line, the statistics of its inputs and output at that moment, and the loss
    just before.

    ## Fix
    Keep the op's input in its domain (clamp before `log`, `sqrt`, `pow` with fractional exponents,
    divisions), use fused stable forms (`log_softmax`, `BCEWithLogitsLoss`, `logsumexp`), and if the
    NaN only follows a loss that grew first, fix the divergence (learning rate, clipping) instead.

    ## Known false positives
    When the NaN follows a diverging loss (an overflow in a Linear layer, say) the op named is only
    where the overflow became visible; the finding is then a warning and a symptom, and
    `lr-too-high`/`exploding-gradients` carry the cause. The same holds when the op's inputs were
    already huge (|x| >= 1e10: unnormalised data, say). NaN born in the loss is left to the
    output/loss diagnoses (warning). NaN that arrives with the batch is not reported here
    (`data-nonfinite` is).
    """

    def check(self, ev: Evidence):
        r = ev.ok("overfit")
        if r is None or r.data.get("recorder") is None:
            return None
        run, rec = r.data.get("run"), r.data["recorder"]
        fwd, grad = rec.nonfinite_forward, rec.nonfinite_grad
        loss_step = run.nonfinite_step if run is not None else None
        nf = ev.ok("nonfinite")
        if fwd is None and grad is None and loss_step is None:
            return self._on_samples(nf)
        # 1. the op, when the nonfinite probe narrowed it
        birth = nf.metrics.get("birth") if nf is not None else None
        steps = [s for s in (loss_step, (fwd or {}).get("step"), (grad or {}).get("step")) if s is not None]
        step = nf.metrics.get("step") if birth is not None else min(steps)
        if (birth is None and fwd is None and grad is None) or (birth or {}).get("phase") == "inputs":
            return None  # no op produced it: the batch brought it in (data-nonfinite judges that)
        # 2. where: the op's module, else the recorder's module or gradient
        evidence = self._evidence(birth, fwd, grad, step)
        losses = run.losses if run is not None else []
        prior = before_birth(losses, step)
        evidence["loss_before"] = prior[-1] if prior else None
        evidence["initial_loss"] = losses[0] if losses and math.isfinite(losses[0]) else None
        # 3. a consequence (divergence, the loss) or the source itself?
        diverged = bool(prior) and max(abs(x) for x in prior) > self.thresholds["diverged_factor"] * max(abs(prior[0]), 1e-8)
        in_loss = birth is not None and birth.get("phase") == "forward" and not birth.get("in_model")
        largest = max((max(abs(s.get("min", 0.0)), abs(s.get("max", 0.0))) for s in evidence.get("input_stats") or []),
                      default=0.0)
        overflow = largest >= self.thresholds["huge_input"]  # the values were already huge: scale, not this op
        evidence["after_divergence"], evidence["born_in_loss"], evidence["overflow_of_huge_inputs"] = \
            diverged, in_loss, overflow
        diverged = diverged or overflow
        where = evidence.get("op") or evidence.get("module")
        title = f"The first NaN/Inf is born in {where}" + \
                (f" (module `{evidence['module']}`)" if evidence.get("op") and evidence.get("module") else "") + \
                f", {evidence.get('phase', 'forward')}, at step {step}"
        if diverged or in_loss:
            finding = self.finding(self.thresholds["confidence_other"], evidence, severity="warning",
                                   title=title + (" from inputs already huge" if overflow else
                                                  " after the loss diverged" if diverged else " inside the loss"))
            if diverged:
                finding.role, finding.explains = "symptom", ()
            return finding
        if evidence.get("phase") == "optimizer step":
            # finite gradients, a non-finite update: the optimizer's own arithmetic (Adam's eps=0 divides 0 by 0)
            settings = ev.facts.get("optimizer_settings") or {}
            evidence["optimizer"], evidence["optimizer_settings"] = ev.facts.get("optimizer"), settings
            eps = settings.get("eps")
            hint = (f"the optimizer's eps is {eps:g}: with it, a weight whose gradient is 0 gets 0/0 = NaN. Use "
                    f"eps=1e-8 (the default) or larger." if isinstance(eps, (int, float)) and eps <= 0 else
                    "check the optimizer's settings (eps, weight decay, momentum) and the learning rate.")
            return self.finding(self.thresholds["confidence_model"], evidence,
                                title=f"The optimizer's update ({where}) turns finite gradients into NaN/Inf at step "
                                      f"{step}", fix="The first NaN/Inf is born in optimizer.step(): " + hint)
        return self.finding(self.thresholds["confidence_model"], evidence, title=title)

    def _on_samples(self, nf):
        """Training on one batch stayed finite, but the data scan found samples with finite inputs and a NaN loss,
        and one checked forward pass on them (eval mode, no gradient, as the scan and any evaluation run them)
        found the op inside the model where it is born: a model that breaks on those inputs, or on the path
        inference takes (PyTorch's fused attention fast path, say, on a row whose keys are all masked)."""
        m = nf.metrics if nf is not None else {}
        birth, samples = m.get("birth"), m.get("samples")
        if not samples or not birth or birth.get("phase") != "forward" or not birth.get("in_model"):
            return None   # nothing born in the model (a loss on wrong targets, the data): the others judge that
        evidence = self._evidence(birth, None, None, None)
        evidence.update(samples=samples, mode=m.get("mode"), during_training=False)
        where = evidence.get("op") or evidence.get("module")
        shown = ", ".join(str(i) for i in samples[:5])
        finding = self.finding(self.thresholds["confidence_model"], evidence,
                               title=f"NaN/Inf is born in {where}" +
                                     (f" (module `{evidence['module']}`)" if evidence.get("op") and evidence.get("module")
                                      else "") +
                                     f" on sample(s) {shown} ({m.get('mode')}, as the data scan and an evaluation run "
                                     f"them); training on one batch stayed finite")
        finding.explains = tuple(dict.fromkeys(finding.explains + ("sample-loss-outlier", "train-eval-gap")))
        finding.observed = True   # seen directly: the model's own op turns those finite samples into NaN
        return finding

    def cures(self, ctx, finding):
        """Born in the optimizer's update with eps <= 0: the same training with the default eps. Born in a
        forward op at the user's line (a log, a root, a fractional power, a division): the same training with
        that call's argument moved into the op's domain there (``treatments.guards``)."""
        e = finding.evidence
        if e.get("during_training") is False:
            return []   # born outside the training step: a guard judged by a training run would prove nothing
        if e.get("phase") == "forward" and e.get("where") and guardable(e.get("op")):
            tried = f"guarded {e['op']} at {e['where']} (its argument kept inside the op's domain)"
            # confirmed, the NaN is born there and nowhere else: what breaks the training, wherever the call is
            return [Cure(tried, guarded(ctx.patient, e["op"], e["where"]),
                         severity=None if e.get("born_in_loss") else "critical")]
        settings = e.get("optimizer_settings") or {}
        eps = settings.get("eps")
        if e.get("phase") != "optimizer step" or not isinstance(eps, (int, float)) or eps > 0:
            return []
        kwargs = {**ctx.patient.optimizer_kwargs, "eps": 1e-8}
        return [Cure(f"the optimizer's eps set to 1e-8 (was {eps:g})",
                     ctx.patient.variant("optimizer eps 1e-8", optimizer_kwargs=kwargs))]

    @staticmethod
    def _evidence(birth: dict | None, fwd: dict | None, grad: dict | None, step: int) -> dict:
        evidence: dict = {"step": step}
        if birth is not None:
            evidence.update({k: birth.get(k) for k in ("op", "module", "module_type", "phase", "in_model", "where")})
            evidence["input_stats"] = birth.get("inputs")
            evidence["output_stats"] = birth.get("output")
            if evidence.get("module") is None and grad is not None:  # a backward birth: the layer whose grad broke
                evidence.update(module=grad["module"], module_type=grad.get("type"))
        elif fwd is not None:
            evidence.update(module=fwd["module"], module_type=fwd.get("type"), phase="forward",
                            input_stats=[fwd["input"]] if fwd.get("input") else [], output_stats=fwd.get("output"))
        else:
            evidence.update(module=grad["module"], module_type=grad.get("type"), phase="backward")
        evidence["first_module_forward"] = fwd
        evidence["first_parameter_gradient"] = grad
        return evidence

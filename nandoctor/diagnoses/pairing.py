"""Output/loss pairing: the outputs are not what the loss expects.

Four codes, one decision (``pairing_evidence.pairing_verdict``) so that one wrong
pairing gets one finding:

- ``nll-on-raw-logits``: NLLLoss/KLDivLoss get scores that are not log-probabilities;
- ``double-softmax``: softmax (or sigmoid, log-softmax) before a loss that applies it again;
- ``bounded-output-activation``: a ReLU/sigmoid/softmax output layer where the loss wants
  logits, a ReLU output fed to a log, or a bounded output that cannot reach the targets;
- ``probability-loss-on-logits``: BCELoss or a hand-written log(p) on values outside (0, 1].

Each judges the outputs by their values (the ``outputs`` probe); the op or module that
produced them is supporting evidence only. A crash of the loss that these explain
(BCELoss's "between 0 and 1") becomes the finding, ranked above ``training-crashed``.
"""

from __future__ import annotations

from torch import nn

from nandoctor.diagnoses import Diagnosis
from nandoctor.diagnoses.pairing_evidence import (PROB_RANGE_ERROR, Pairing, crash, finite, overfit_metrics,
                                                  pairing_verdict)
from nandoctor.records import Evidence, Finding
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.pairing import append_op, clamped_outputs, logits_loss, replace_module

SUPPORT_BONUS = 0.05   # added to the confidence when the overfit run shows the expected damage
NEGATIVE_FLOOR_TOL = 1e-3   # a log-likelihood loss below -this has passed its floor of zero
NLL_LOSS_NAMES = {"NLLLoss", "nll_loss", "KLDivLoss", "kl_div"}
# the outputs do not fit the loss (static evidence): the repaired copy must learn, or learn clearly more than the
# untreated one when the steps run out first (a slow LR)
REPAIRED = judges.either(judges.repairs(judges.falls), judges.improves(0.1))
REPAIRED_TRAINS = judges.either(judges.repairs(judges.trains), judges.improves(0.1))
COMMON_SYMPTOMS = ("training-crashed", "cannot-overfit-batch", "exploding-gradients", "nonfinite-source",
                   "sample-loss-outlier", "initial-loss-mismatch", "lr-too-high", "lr-too-low")


class PairingDiagnosis(Diagnosis):
    """Base: fires when ``pairing_verdict`` names this code; subclasses give titles and fixes per reason."""
    observed = True   # seen in the set-up itself

    titles: dict[str, str] = {}
    fixes: dict[str, str] = {}
    severities: dict[str, str] = {}

    def check(self, ev: Evidence) -> Finding | None:
        verdict = pairing_verdict(ev)
        if verdict is None or verdict[0] != self.code:
            return None
        _, reason, confidence = verdict
        p = Pairing.of(ev)
        evidence = {"reason": reason, **(p.summary() if p is not None else {})}
        err = crash(ev, PROB_RANGE_ERROR)
        if err is not None:
            evidence["exception"] = {k: err.get(k) for k in ("type", "message", "where", "probe", "phase", "step")}
        of = overfit_metrics(ev)
        if of:
            evidence.update(overfit_initial_loss=of.get("initial_loss"), overfit_min_loss=of.get("min_loss"),
                            overfit_final_loss=of.get("final_loss"), overfit_nonfinite_step=of.get("nonfinite_step"))
        confidence += SUPPORT_BONUS if self.supported(evidence) else 0.0
        probes = [n for n in ("outputs", "overfit") if n in ev] or ["warmup"]
        plots = list(ev["overfit"].plots) if "overfit" in ev and ev["overfit"].plots else []
        return self.finding(confidence, evidence, title=self.titles.get(reason, self.title),
                            fix=self.fixes.get(reason, self.fix), severity=self.severities.get(reason),
                            probes=probes, plots=plots)

    def supported(self, evidence: dict) -> bool:
        """Did training show the damage this pairing causes? (non-finite loss by default)"""
        init = evidence.get("initial_loss")
        return evidence.get("overfit_nonfinite_step") is not None or (init is not None and not finite(init)) \
            or "exception" in evidence


class NllOnRawLogits(PairingDiagnosis):
    code = "nll-on-raw-logits"
    title = "NLLLoss is fed raw scores, not log-probabilities"
    severity = "critical"
    requires = ()           # the outputs probe decides; without it, a loss below zero in the overfit probe
    explains = COMMON_SYMPTOMS
    fix = "Add nn.LogSoftmax(dim=1) as the last layer, or use nn.CrossEntropyLoss on the raw scores."
    titles = {"probabilities": "NLLLoss is fed probabilities (softmax), not log-probabilities",
              "wrong-dim": "NLLLoss is fed outputs normalised over the batch (dim=0), not over the classes"}
    fixes = {"probabilities": "Replace the final Softmax with nn.LogSoftmax(dim=1) (or drop it and use "
                              "nn.CrossEntropyLoss).",
             "wrong-dim": "Take the log-softmax over the classes: nn.LogSoftmax(dim=1), not dim=0."}
    thresholds = {"logsumexp_tolerance": 1e-3, "logprob_max": 1e-4, "support_bonus": SUPPORT_BONUS,
                  "negative_floor_tolerance": NEGATIVE_FLOOR_TOL}
    doc = """
    ## What it detects
    `NLLLoss` (or `KLDivLoss`, or `F.nll_loss` inside a custom loss) receives model outputs that are
    not log-probabilities. Log-probabilities are all <= 0 and `exp` of each row sums to 1; the probe
    checks both on a fresh model's outputs for the fixed batch. Raw scores (a `Linear` layer's
    output) and probabilities (a `Softmax` output) both fail it.

    ## Why it breaks training
    `NLLLoss` is just `-output[target]`: it does not take a log or normalise. On raw scores the
    optimiser can lower the loss without bound by making the target's score huge, so the loss goes
    negative and keeps falling (-8421 in the seed case) while accuracy stays at chance. On
    probabilities the loss is `-p[target]`, bounded at -1, with weak gradients.

    ## Evidence
    The loss, what the outputs are (`outputs_are`, min/max, how far each row's logsumexp is from 0),
    the op and the module that produced them, the loss at init (often already negative) and the
    overfit probe's minimum loss (below zero, the floor of any log-likelihood). Without the outputs
    probe, an NLLLoss/KLDivLoss that the overfit probe drives below zero is enough on its own.

    ## Fix
    Add `nn.LogSoftmax(dim=1)` as the last layer (or `F.log_softmax(x, dim=1)` at the end of
    `forward`), or keep the raw scores and switch to `nn.CrossEntropyLoss`, which applies
    log-softmax itself. The treatment appends log-softmax on a copy and re-runs the overfit probe.

    ## Known false positives
    A model that deliberately outputs unnormalised log-scores for a custom likelihood (rare), and
    `KLDivLoss(log_target=True)` setups where the *target* is the log-probability.
    """

    def supported(self, evidence: dict) -> bool:
        values = [evidence.get("initial_loss"), evidence.get("overfit_min_loss")]
        return any(finite(v) and v < 0 for v in values)

    def check(self, ev: Evidence) -> Finding | None:
        found = super().check(ev)
        if found is not None or Pairing.of(ev) is not None:
            return found
        # without the outputs probe: a log-likelihood loss that went below its floor of zero
        of = overfit_metrics(ev)
        low = of.get("min_loss")
        if ev.facts.get("loss") not in NLL_LOSS_NAMES or not finite(low) or low >= -NEGATIVE_FLOOR_TOL:
            return None
        evidence = {"reason": "negative-loss", "loss": ev.facts.get("loss"), "overfit_initial_loss":
                    of.get("initial_loss"), "overfit_min_loss": low, "overfit_final_loss": of.get("final_loss")}
        return self.finding(0.8, evidence, probes=["overfit"], plots=ev["overfit"].plots,
                            title=f"{ev.facts.get('loss')} went to {low:.4g}, below its floor of 0: "
                                  "it is not fed log-probabilities")

    def cures(self, ctx, finding: Finding) -> list:
        probs = finding.evidence.get("reason") == "probabilities"
        op, tried = ("log", "took the log of the softmax output") if probs else \
            ("log_softmax", "appended log-softmax(dim=1) to the model's output")
        variant = ctx.patient.variant(tried, model_factory=append_op(ctx.patient, op))
        return [Cure(tried, variant, judge=REPAIRED)]


class DoubleSoftmax(PairingDiagnosis):
    code = "double-softmax"
    title = "Softmax is applied twice: the model outputs probabilities and the loss applies softmax again"
    severity = "critical"
    requires = ("outputs",)
    explains = COMMON_SYMPTOMS + ("vanishing-gradients", "saturated-activation")
    fix = "Remove the final Softmax from the model and give nn.CrossEntropyLoss the raw scores (logits)."
    titles = {"log-softmax-twice": "Log-softmax output fed to CrossEntropyLoss, which applies log-softmax again",
              "sigmoid-twice": "Sigmoid is applied twice: sigmoid output fed to BCEWithLogitsLoss"}
    fixes = {"log-softmax-twice": "Drop the final LogSoftmax and keep CrossEntropyLoss, or keep it and use "
                                  "nn.NLLLoss: the two pairings are equivalent, the mix is redundant.",
             "sigmoid-twice": "Remove the final Sigmoid and keep nn.BCEWithLogitsLoss (or keep it and use nn.BCELoss)."}
    severities = {"log-softmax-twice": "warning"}
    thresholds = {"row_sum_tolerance": 1e-3, "support_bonus": SUPPORT_BONUS}
    doc = """
    ## What it detects
    The model's outputs are already probabilities (rows in [0, 1] summing to 1: a softmax) and the
    loss applies softmax again (`CrossEntropyLoss`, or a custom loss calling softmax/log_softmax);
    or the outputs are sigmoid values fed to `BCEWithLogitsLoss`, which applies sigmoid again; or
    (warning only) log-softmax outputs fed to `CrossEntropyLoss`.

    ## Why it breaks training
    Softmax of probabilities is nearly uniform: inputs in [0, 1] differ by at most 1, so the loss
    cannot go below `log(1 + (C-1)/e)` (0.55 for 3 classes) and the gradients are squashed. The
    model learns slowly and plateaus; accuracy may still rise, hiding the problem. Log-softmax
    twice is mathematically harmless (log-softmax is idempotent) but shows a confusion about what
    the model outputs.

    ## Evidence
    What the outputs are (row sums, min/max), the op and module that produced them, the loss and the
    op it applies first, the loss at init and the overfit probe's curve (a floor well above 0).

    ## Fix
    Remove the final `Softmax`/`Sigmoid` and give the logits loss the raw scores; apply softmax
    only at inference. The treatment takes the log of the probabilities on a copy (which turns
    CrossEntropyLoss into NLL of the probabilities) or drops the final activation, and re-runs the
    overfit probe.

    ## Known false positives
    Knowledge-distillation or label-smoothing set-ups that deliberately pass probabilities through a
    second softmax with a temperature.
    """

    def supported(self, evidence: dict) -> bool:
        return False

    def cures(self, ctx, finding: Finding) -> list:
        reason, last = finding.evidence.get("reason"), finding.evidence.get("last_module") or {}
        if reason == "log-softmax-twice":
            return []  # harmless: nothing to cure
        if last.get("is_output") and last.get("type") in ("Softmax", "Sigmoid"):
            tried = f"removed the final {last['type']} ({last.get('name')})"
            factory = replace_module(ctx.patient, last["name"], nn.Identity)
        else:
            op = "logit" if reason == "sigmoid-twice" else "log"
            tried = f"applied {op} to the model's output (undoing the activation)"
            factory = append_op(ctx.patient, op)
        variant = ctx.patient.variant(tried, model_factory=factory)
        return [Cure(tried, variant, judge=REPAIRED_TRAINS)]


class BoundedOutputActivation(PairingDiagnosis):
    code = "bounded-output-activation"
    title = "A bounded activation (ReLU/sigmoid/softmax) is the output layer where the loss wants logits"
    severity = "critical"
    requires = ()           # also judged from a crash alone
    accepts_failed = True
    # a ReLU output's row sum is 0, its log -inf: the op that turns NaN (numerical-hazard) is where the bounded
    # output meets the loss, not a second cause
    explains = COMMON_SYMPTOMS + ("dead-relu", "saturated-activation", "vanishing-gradients", "numerical-hazard")
    fix = "Remove the final activation and use a loss that takes raw scores (CrossEntropyLoss, BCEWithLogitsLoss)."
    titles = {
        "relu-into-log": "ReLU output layer feeds a loss that takes the log of the outputs: log(0) turns the loss NaN",
        "relu-into-probability-loss": "ReLU output layer feeds BCELoss, which needs probabilities in [0, 1]",
        "relu-into-logits-loss": "ReLU output layer clips the logits the loss needs to be negative",
        "bounded-into-logits-loss": "Sigmoid/softmax output fed to a loss that expects raw logits",
        "relu-regression-negative-targets": "ReLU output layer cannot reach the negative regression targets",
        "bounded-regression-unreachable-targets": "Bounded output activation cannot reach the regression targets",
    }
    fixes = {
        "relu-into-log": "Use softmax (or sigmoid for one output) as the last activation, not ReLU; better, output "
                         "raw scores and use nn.CrossEntropyLoss / BCEWithLogitsLoss.",
        "relu-into-probability-loss": "Replace the final ReLU with Sigmoid, or drop it and use nn.BCEWithLogitsLoss.",
        "relu-regression-negative-targets": "Remove the final ReLU (a regression head is a plain Linear layer).",
        "bounded-regression-unreachable-targets": "Remove the final activation, or scale the targets into its range.",
    }
    thresholds = {"relu_zero_share": 0.05, "range_margin": 0.05, "support_bonus": SUPPORT_BONUS}
    doc = """
    ## What it detects
    The model's last activation bounds its outputs in a way the loss cannot live with, judged by the
    output values on a fresh model (the last module/op is supporting evidence):
    - ReLU-like outputs (>= 0 with exact zeros beside positive values; outputs that are all exactly
      zero say the output weights are zero, a zero init, not that a ReLU clips) fed to a loss that
      takes a log (Keras-style categorical cross-entropy that normalises and logs, `torch.log(p)`,
      BCELoss);
    - ReLU, sigmoid or softmax outputs fed to a loss that wants raw logits (CrossEntropyLoss,
      BCEWithLogitsLoss) when it is not a plain double softmax;
    - a regression head whose activation cannot reach the targets (ReLU with negative targets,
      sigmoid with targets outside [0, 1], tanh outside [-1, 1]).
    A BCELoss crash ("all elements of input should be between 0 and 1") on ReLU outputs is mapped here.

    ## Why it breaks training
    A ReLU output row can be all zeros: normalising it divides 0 by 0 and `log(0)` is `-inf`, so the
    loss becomes NaN and every weight after the next step too (the seed case: fine for two epochs,
    then NaN and chance accuracy). Units clipped at 0 get no gradient, so a logit that should be
    negative can never get there. Bounded regression outputs plateau at the bound.

    ## Evidence
    What the outputs are (min, share of exact zeros, whole rows of zeros), the op and module that
    produced them, what the loss does with them (the log it takes, the smallest value that reaches
    it), the loss at init (NaN when a row is all zeros), the overfit probe's non-finite step, and
    the user's exception when the loss raised.

    ## Fix
    Output raw scores (no final activation) and use the logits loss; if the loss needs probabilities
    use softmax (sigmoid for one output), never ReLU. The treatment replaces the final activation on
    a copy (Identity for a logits loss, Softmax/Sigmoid for a log loss) and re-runs the overfit probe.

    ## Known false positives
    Losses that are fine with non-negative outputs (Poisson rates, counts with an MSE target >= 0)
    are not flagged; a custom loss that adds its own epsilon *before* normalising is still flagged
    although it survives all-zero rows (the clipped units still get no gradient).
    """

    def cures(self, ctx, finding: Finding) -> list:
        reason, last = finding.evidence.get("reason"), finding.evidence.get("last_module") or {}
        if not last.get("is_output") or not last.get("name"):
            return []  # a functional activation in forward(): nothing to swap on a copy
        shape = finding.evidence.get("outputs_shape") or []
        rows = len(shape) >= 2 and shape[1] >= 2
        if reason in ("relu-into-log", "relu-into-probability-loss"):
            new, what = ((lambda: nn.Softmax(dim=1)), "Softmax(dim=1)") if rows and reason == "relu-into-log" \
                else (nn.Sigmoid, "Sigmoid")
        else:
            new, what = nn.Identity, "nothing (raw scores)"
        tried = f"replaced the final {last.get('type')} ({last['name']}) with {what}"
        variant = ctx.patient.variant(tried, model_factory=replace_module(ctx.patient, last["name"], new))
        return [Cure(tried, variant, judge=REPAIRED)]


class ProbabilityLossOnLogits(PairingDiagnosis):
    code = "probability-loss-on-logits"
    title = "A probability loss (BCELoss / log(p)) is fed raw scores outside (0, 1]"
    severity = "critical"
    requires = ()           # also judged from a crash alone
    accepts_failed = True
    explains = tuple(c for c in COMMON_SYMPTOMS if not c.startswith("lr-"))
    fix = "Use nn.BCEWithLogitsLoss on the raw scores (or add a Sigmoid/Softmax before the loss)."
    titles = {"bce-range-error": "BCELoss raises: its input is not in [0, 1] (the model outputs raw scores)",
              "logits-into-log": "The loss takes the log of raw scores: negative values give NaN",
              "log-of-zero": "The loss takes the log of outputs that reach 0 (or 1 - p that reaches 0): "
                             "the loss turns infinite/NaN"}
    fixes = {"logits-into-log": "Apply softmax (or sigmoid) before the log, or better use nn.CrossEntropyLoss / "
                                "nn.BCEWithLogitsLoss on the raw scores.",
             "log-of-zero": "Clamp before the log (p.clamp_min(eps)) or compute the loss from logits "
                            "(log_softmax / BCEWithLogitsLoss)."}
    thresholds = {"support_bonus": SUPPORT_BONUS}
    doc = """
    ## What it detects
    A loss that needs probabilities gets values outside (0, 1]: `BCELoss` on raw scores (PyTorch
    raises "all elements of input should be between 0 and 1"), or a hand-written loss that takes
    `log` of outputs that are negative (NaN) or exactly zero (-inf). Judged by the values that reach
    the loss and the ops it applies (traced on a fresh model); the crash message alone is enough
    when the loss raises. A hand-written log of sigmoid/softmax outputs without a clamp is flagged
    when the overfit probe's loss turned non-finite while every module's output stayed finite
    (the outputs saturated to exactly 0 or 1 in float32 and the log made the NaN).

    ## Why it breaks training
    The log of a negative number is NaN and of zero is -inf: one such value makes the batch loss and
    then every weight non-finite. BCELoss refuses such inputs outright, so training crashes at the
    first step.

    ## Evidence
    The loss and the op it applies first, what the outputs are (min/max), the smallest value that
    reaches a log, the loss at init, the overfit probe's non-finite step, and the exception with the
    user's line when the loss raised.

    ## Fix
    Keep the model's raw scores and use the logits form of the loss (`BCEWithLogitsLoss`,
    `CrossEntropyLoss`), which is also numerically safer; or add `Sigmoid`/`Softmax` before a loss
    that needs probabilities, and clamp before any hand-written log. The treatment swaps BCELoss
    for BCEWithLogitsLoss, appends the squashing op, or clamps the outputs, on a copy, and re-runs
    the overfit probe.

    ## Known false positives
    A custom loss that takes the log of a quantity that is positive by construction but only
    happens to be zero on this batch at init; a NaN born in the loss for another reason (a
    division by zero) while the loss also takes an unclamped log.
    """

    def cures(self, ctx, finding: Finding) -> list:
        reason, loss = finding.evidence.get("reason"), getattr(ctx.patient.loss_fn, "func", ctx.patient.loss_fn)
        if reason == "log-of-zero":
            tried = "clamped the outputs to [1e-7, 1 - 1e-7] before the loss"
            variant = ctx.patient.variant(tried, loss_fn=clamped_outputs(ctx.patient.loss_fn))
        elif isinstance(loss, nn.BCELoss):
            tried = "used BCEWithLogitsLoss instead of BCELoss"
            variant = ctx.patient.variant(tried, loss_fn=logits_loss(loss))
        else:
            shape = finding.evidence.get("outputs_shape") or []
            op = "softmax" if len(shape) >= 2 and shape[1] >= 2 else "sigmoid"
            tried = f"appended {op} to the model's output"
            variant = ctx.patient.variant(tried, model_factory=append_op(ctx.patient, op))
        return [Cure(tried, variant, judge=REPAIRED)]

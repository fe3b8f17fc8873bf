"""fp16-overflow: under fp16 autocast a value leaves the fp16 range; the same run is finite in fp32."""

from __future__ import annotations

import math

from nandoctor.diagnoses import Diagnosis
from nandoctor.patient import FP16_MAX
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges, precision_outcome
from nandoctor.treatments.setups import CALIBRATION, IDEAL_STEPS, MIN_STEPS, bf16_available

PROBE = "precision"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def broke(run: dict, t: dict) -> bool:
    """The run as configured failed: a non-finite loss, non-finite gradients without a GradScaler, or (with
    one) a scaler that never found a scale that fits: its scale fell below 1 (the gradients overflow fp16
    unscaled), or it skipped most of the steps after its calibration (the leading skips every GradScaler
    takes while it halves its scale from 2**16 to one the gradients fit in, which depend on the gradients'
    size, not on how long the run is)."""
    if run.get("nonfinite_step") is not None or run.get("error"):
        return True
    if not run.get("grad_scaler"):
        return run.get("grad_nonfinite_step") is not None
    scale_min = run.get("scale_min")
    if isinstance(scale_min, (int, float)) and scale_min < 1.0:
        return True
    after = (run.get("steps") or 0) - (run.get("calibration_steps") or 0)
    return after > 0 and (run.get("skipped_after_calibration") or 0) >= t["skipped_share"] * after


def clean(run: dict) -> bool:
    """The fp32 run stayed finite (loss and gradients) and raised nothing."""
    return bool(run.get("steps")) and run.get("nonfinite_step") is None and run.get("grad_nonfinite_step") is None \
        and not run.get("error")


class FP16Overflow(Diagnosis):
    code = "fp16-overflow"
    title = "Under fp16 autocast values leave the fp16 range; the same run is finite in fp32"
    severity = "critical"
    role = "cause"
    requires = (PROBE,)
    explains = ("nonfinite-source", "loss-nonfinite", "cannot-overfit-batch", "training-crashed",
                "exploding-gradients", "initial-loss-mismatch", "bad-init", "lr-too-high", "lr-too-low",
                "vanishing-gradients", "dead-relu", "saturated-activation")
    thresholds = {
        "skipped_share": 0.5,     # with a GradScaler: the run failed when the scaler skipped half the steps or more
        "headroom": 0.5,          # finite in fp16, but the fp32 run's activations reach half the fp16 max: warning
        "trains_share": 0.5,      # a cure "trains" when its loss falls by half as much as the fp32 run's ...
        "trains_min_drop": 0.05,  # ... and by at least 5%
    }
    fix = ("Train in bf16 (precision: bf16), which has fp32's range, or keep fp16 with a GradScaler "
           "(grad_scaler: true) when the gradients overflow; when the activations themselves pass 65504, bring "
           "them into range: normalise the inputs, scale attention scores by 1/sqrt(d), put a LayerNorm before "
           "the layer that overflows, or run that block in fp32 (torch.autocast(..., enabled=False)).")
    doc = """
    ## What it detects
    The config trains under fp16 autocast. The `precision` probe trains a fresh model on one
    batch twice, from the same seed: as configured and in fp32. The run as configured goes
    non-finite (the loss, or the gradients without a GradScaler; with one, its scale falls below 1
    or it skips most steps after its calibration, the leading skips every GradScaler takes while
    it halves its scale from 2^16) while the fp32 run stays finite. The evidence names the first module whose output
    became inf while its input was finite, the largest activation the fp32 run reached against
    the fp16 maximum 65504, and the GradScaler's scale trajectory. A warning when the fp16 run
    stays finite but the fp32 run's activations already reach half of 65504.

    ## Why it breaks training
    float16 holds nothing above 65504: a larger activation, loss or gradient becomes inf, and the
    next op turns it into NaN (inf - inf, 0 * inf, a LayerNorm of inf). Without a GradScaler a
    non-finite gradient reaches optimizer.step() and every weight becomes NaN; with one, the
    scaler skips those steps and halves its scale, which cures gradients that overflow but not
    activations that do: every step is skipped and the model never trains. This is the most
    common NaN in large-model training, and the same model trains fine in fp32 or bf16.

    ## Evidence
    The precision, whether a GradScaler is in use, the step where the loss (or the gradients)
    went non-finite, the module where the overflow was born with its input's magnitude, the
    largest |activation| of the fp32 run and its ratio to 65504, the scaler's first, last and
    smallest scale and how many steps it skipped, and the fp32 run's loss. The treatment reruns
    the same training with a GradScaler (when there was none) or in bf16, and says cured when that
    run stays finite and trains. Plot: both loss curves, and the largest activation per step
    against the fp16 limit (plots/precision.png).

    ## Fix
    Use bf16 autocast where the hardware has it (same range as fp32, no scaler needed). In fp16,
    always use torch.amp.GradScaler; if activations still overflow, keep them in range
    (normalised inputs, attention scores divided by sqrt(d), LayerNorm/RMSNorm computed in fp32)
    or disable autocast for the block that overflows.

    ## Known false positives
    On the CPU, torch's list of ops autocast to fp32 differs from CUDA's (CUDA runs pow, exp,
    sum, softmax and most losses in fp32): an overflow born in such an op can be seen on one device
    and not on the other. A model that is simply unstable at its LR goes non-finite in every
    precision: that is not reported here (the fp32 run must stay finite).
    """

    def check(self, ev: Evidence):
        r = ev.ok(PROBE)
        if r is None or r.metrics.get("precision") != "fp16":
            return None
        m, t = r.metrics, self.thresholds
        mine, ref = m.get("as_configured") or {}, m.get("fp32") or {}
        if not clean(ref):
            return None  # the fp32 run broke too: the cause is not the precision
        ref_max = ref.get("act_max")
        evidence = {"precision": "fp16", "grad_scaler": m.get("grad_scaler"), "steps": mine.get("steps"),
                    "nonfinite_step": mine.get("nonfinite_step"),
                    "grad_nonfinite_step": mine.get("grad_nonfinite_step"), "overflow": mine.get("overflow"),
                    "fp32_act_max": ref_max, "fp32_act_max_module": ref.get("act_max_module"),
                    "fp32_act_max_over_fp16_max": ref_max / FP16_MAX if _finite(ref_max) else None,
                    "fp16_max": FP16_MAX, "scale_initial": mine.get("scale_initial"),
                    "scale_final": mine.get("scale_final"), "scale_min": mine.get("scale_min"),
                    "skipped_steps": mine.get("skipped_steps"), "fp32_initial_loss": ref.get("initial_loss"),
                    "fp32_final_loss": ref.get("final_loss")}
        # 1. broken in fp16, finite in fp32
        if broke(mine, t):
            where = mine.get("overflow") or {}
            past = _finite(ref_max) and ref_max > FP16_MAX
            confidence = 0.9 if where or past else 0.8
            if where:
                what = f"{where['module']} ({where['type']}) outputs inf at step {where['step']}"
            elif mine.get("nonfinite_step") is not None:
                what = f"the loss is non-finite at step {mine['nonfinite_step']}"
            elif not mine.get("grad_scaler"):
                what = f"the gradients are non-finite at step {mine.get('grad_nonfinite_step')}"
            else:
                what = f"the GradScaler skips {mine.get('skipped_steps')} of {mine.get('steps')} steps"
            return self.finding(confidence, evidence, plots=r.plots,
                                title=f"Under fp16 autocast {what}; the same run is finite in fp32"
                                      + (f" (its activations reach {ref_max:.3g} > 65504)" if past else ""))
        # 2. finite, with little headroom left
        if _finite(ref_max) and ref_max >= t["headroom"] * FP16_MAX:
            return self.finding(0.5, evidence, severity="warning", plots=r.plots,
                                title=f"fp16 activations reach {ref_max:.3g}, {ref_max / FP16_MAX:.0%} of the fp16 "
                                      f"maximum, in {ref.get('act_max_module')}")
        return None

    def cures(self, ctx, finding):
        if finding.severity != "critical":
            return []  # a warning about headroom: nothing is broken to cure
        r = ctx.evidence.get(PROBE)
        runs = (r.data or {}).get("runs") if r is not None else None
        if not runs:
            return []
        before, ref = runs["as_configured"], runs["fp32"]
        patient = ctx.patient
        steps = max(MIN_STEPS, min(max(ref.run.steps, MIN_STEPS), IDEAL_STEPS))
        # cured: finite all along, and the loss falls by a good share of what the fp32 run took off
        need = max(self.thresholds["trains_min_drop"], self.thresholds["trains_share"] * (ref.relative_drop or 0.0))
        judge = judges.both(judges.measured("finite", at_least=1), judges.measured("relative_drop", at_least=need))
        reference = {"reference": {"fp32_relative_drop": ref.relative_drop,
                                   "fp32_final_loss": ref.run.losses[-1] if ref.run.losses else None}}
        # the cures to try, cheapest change first: a GradScaler (default step only), then bf16
        cures = []
        if not patient.uses_grad_scaler and patient.train_step is None:
            cures.append(("fp16 autocast with torch.amp.GradScaler", patient.variant("GradScaler on", grad_scaler=True),
                          "grad_scaler: true"))
        if bf16_available(patient.device):
            cures.append(("bf16 autocast instead of fp16", patient.variant("bf16 autocast", precision="bf16"),
                          "precision: bf16"))
        # a GradScaler variant calibrates first (its leading skips): those steps come on top
        return [Cure(label, variant, judge=judge, train="precision", control=precision_outcome(before),
                     steps=steps + (CALIBRATION if variant.uses_grad_scaler and not patient.uses_grad_scaler else 0),
                     follows_plan=False,
                     extra=reference, fix=f"Use {label} ({key} in the config): the same training then stays finite "
                                          f"and trains. " + self.fix)
                for label, variant, key in cures]

"""Activation health from the overfit probe's forward hooks: dead ReLUs, saturated sigmoid/tanh.

Both read the overfit probe's ``Recorder``: per call of each activation module, the
share of its units that were dead (ReLU family) or of its outputs pinned at a bound
(sigmoid/tanh). The model's output layer is left to the output/loss diagnoses
(``bounded-output-activation``), and the softmax is never judged here.
"""

from __future__ import annotations

from statistics import fmean

from nandoctor.diagnoses import Diagnosis
from nandoctor.diagnoses.module_tree import not_memorised, output_layer
from nandoctor.probes.instrument import INACTIVE_BELOW, SATURATION_MARGIN
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges

DEAD_TYPES = ("ReLU", "ReLU6")            # units that can die for good (leaky variants cannot)
SATURATING_TYPES = ("Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid")
ACTIVATION_SYMPTOMS = ("cannot-overfit-batch", "vanishing-gradients")


def window(series: list[float], share: float, last: bool) -> float | None:
    """Mean of the first or last ``share`` of a per-call series (at least one call); None when empty."""
    if not series:
        return None
    k = max(1, int(len(series) * share))
    return fmean(series[-k:] if last else series[:k])


def recorder_of(ev: Evidence):
    r = ev.ok("overfit")
    return (r, r.data.get("recorder")) if r is not None else (None, None)


class DeadRelu(Diagnosis):
    code = "dead-relu"
    title = "Most units of a ReLU layer never activate"
    severity = "warning"
    role = "cause"
    requires = ("overfit",)
    explains = ACTIVATION_SYMPTOMS
    thresholds = {"layer_dead_share": 0.5,       # SageMaker Debugger's threshold_layer: 50% of a layer's units dead
                  "inactive_below": INACTIVE_BELOW,  # a unit is dead when active on < 1% of the positions of a call
                  "window": 0.2,                 # judged on the last 20% of the probe's forward calls
                  "critical_dead_share": 0.9}    # critical when >= 90% dead from init and the batch is not memorised
    fix = ("Lower the learning rate, initialise with He/Kaiming (nn.init.kaiming_normal_) and zero or small "
           "positive biases, normalise the inputs, or use LeakyReLU/GELU instead of ReLU.")
    doc = """
    ## What it detects
    ReLU (and ReLU6) layers, other than the model's output layer, in which more than half the units
    are dead over the last 20% of the overfit probe: a unit counts as dead in a forward call when it
    is positive on fewer than 1% of the positions of the batch. These are SageMaker Debugger's
    `DeadRelu` defaults. A unit is what the layer feeding the ReLU makes: a channel after a
    convolution or BatchNorm (dim 1 of `[N, C, H, W]`), a feature after a Linear, LayerNorm or
    attention layer (the last dim, also of `[N, T, C]` sequences, so every token is a position).

    ## Why it breaks training
    A dead ReLU outputs zero and passes back zero gradient, so nothing upstream of it learns through
    it and it never recovers. With most of a layer dead the network loses capacity; with all of it
    dead the output no longer depends on the input.

    ## Evidence
    Per flagged layer: the dead share at the end of the probe and at its first call (dead from
    initialisation points to the init or the input scale: a cause; dying during the probe points
    to a learning rate too high, and the finding is then a lower-confidence warning reported as a
    symptom), and the number of forward calls recorded.

    ## Fix
    He/Kaiming initialisation and biases >= 0; normalised inputs; a lower learning rate; LeakyReLU,
    ELU or GELU, which cannot die.

    ## Known false positives
    A `nn.ReLU` module reused at several places of forward() mixes their statistics; ReLUs called as
    functions (`F.relu`, `torch.relu`) are not seen. Very sparse inputs (one-hot, bag-of-words) can
    leave many units legitimately inactive on one small batch.
    """

    def check(self, ev: Evidence):
        r, rec = recorder_of(ev)
        if rec is None:
            return None
        out_layer = output_layer(rec)
        share, start = self.thresholds["window"], self.thresholds["layer_dead_share"]
        flagged = []
        for name, series in getattr(rec, "dead_per_call", {}).items():
            if rec.layer_types.get(name) not in DEAD_TYPES or name == out_layer:
                continue
            late = window(series, share, last=True)
            if late is not None and late > start:  # SageMaker: above the threshold
                flagged.append({"layer": name, "dead_share": late, "dead_share_at_init": series[0],
                                "calls": len(series)})
        if not flagged:
            return None
        flagged.sort(key=lambda f: -f["dead_share"])
        worst = flagged[0]
        at_init = worst["dead_share_at_init"] >= start
        severity = "critical" if at_init and worst["dead_share"] >= self.thresholds["critical_dead_share"] \
            and not_memorised(ev) else "warning"
        confidence = (0.6 + 0.35 * (worst["dead_share"] - start) / (1 - start)) * (1.0 if at_init else 0.6)
        finding = self.finding(confidence, {"layers": flagged, "output_layer_skipped": out_layer},
                               severity=severity, plots=r.plots,
                               title=f"{worst['dead_share']:.0%} of the units of ReLU layer `{worst['layer']}` are dead "
                                     f"({'from initialisation' if at_init else 'they died during training'})")
        zeroed = [k for k, v in getattr(rec, "weight_norms", {}).items() if v and v[0] == 0.0]
        if at_init and zeroed:  # all-zero weights: nothing is "dead", the init is the cause (bad-init)
            finding.role, finding.explains = "symptom", ()
            finding.evidence["zero_initialised_layers"] = zeroed
        elif at_init:  # dead from the first call: the init is the mechanism, this names the layer
            finding.explains = tuple(dict.fromkeys(finding.explains + ("bad-init",)))
            finding.evidence["feeding_layer"] = feeding_layer(rec, worst["layer"])
        else:  # dying during training is usually the learning rate's doing: a symptom
            finding.role, finding.explains = "symptom", ()
        return finding

    def cures(self, ctx, finding):
        """Dead from initialisation: the layer that feeds the dead ReLU re-drawn by its own reset_parameters() (the
        weights and biases PyTorch's default gives it) on a copy; the overfit run must train where it did not, or
        memorise where it was 25% off."""
        layer = finding.evidence.get("feeding_layer")
        if not layer or not finding.evidence.get("layers"):
            return []
        factory = ctx.patient.model_factory

        def build():
            model = factory()
            module = dict(model.named_modules()).get("" if layer == "(model)" else layer)
            if module is not None and hasattr(module, "reset_parameters"):
                module.reset_parameters()
            return model
        tried = f"re-drew `{layer}` (the layer feeding the dead ReLU) with its default reset_parameters()"
        variant = ctx.patient.variant(tried, model_factory=build)
        return [Cure(tried, variant, judge=judges.either(judges.fixes(judges.trains), judges.fixes(judges.memorised)))]


def feeding_layer(rec, relu: str) -> str | None:
    """The module with parameters the forward pass ran last before ``relu`` (what makes its units), if it can be
    reset (``reset_parameters``)."""
    order = list(getattr(rec, "forward_order", []) or [])
    if relu not in order:
        return None
    for name in reversed(order[:order.index(relu)]):
        module = rec.layers.get("" if name == "(model)" else name)
        if module is not None:
            return name if hasattr(module, "reset_parameters") else None
    return None


class SaturatedActivation(Diagnosis):
    code = "saturated-activation"
    title = "Sigmoid/tanh units are pinned at their bounds"
    severity = "warning"
    role = "cause"
    requires = ("overfit",)
    explains = ACTIVATION_SYMPTOMS
    thresholds = {"layer_saturated_share": 0.5,   # SageMaker's threshold_layer: 50% of a layer's outputs saturated
                  "margin": SATURATION_MARGIN,     # within 1% of the range from a bound (sigmoid < 0.01 or > 0.99)
                  "window": 0.2}                   # judged on the first 20% of the calls (and the last 20% if stuck)
    fix = ("Normalise the inputs, use Xavier/Glorot initialisation for sigmoid/tanh layers (or smaller weights), "
           "add normalisation before the activation, or switch hidden activations to ReLU/GELU.")
    doc = """
    ## What it detects
    Sigmoid, tanh, hardtanh or hardsigmoid layers (not the model's output layer, not softmax) where
    at least half the outputs lie within 1% of the range from a bound (sigmoid below 0.01 or above
    0.99, tanh beyond ±0.98) during the first 20% of the overfit probe; or during its last 20%
    when the batch was not memorised.

    ## Why it breaks training
    The derivative of a saturated sigmoid/tanh is nearly zero: gradients through that layer vanish,
    the layers before it stop learning, and the layer itself is stuck at its bounds.

    ## Evidence
    Per flagged layer: the saturated share at the start and at the end of the probe, and the calls
    recorded.

    ## Fix
    Inputs at unit scale; Xavier/Glorot initialisation (`nn.init.xavier_uniform_`) or smaller init
    weights; BatchNorm/LayerNorm before the activation; a lower learning rate when it saturates
    during training; ReLU-family hidden activations.

    ## Known false positives
    Gates meant to be near 0 or 1 (LSTM-style gating, attention masks); an activation module reused
    at several places mixes their statistics; a memorised batch can legitimately push hidden units
    to their bounds late in the probe (only reported then when the batch was not memorised).
    """

    def check(self, ev: Evidence):
        r, rec = recorder_of(ev)
        if rec is None:
            return None
        out_layer = output_layer(rec)
        share, limit = self.thresholds["window"], self.thresholds["layer_saturated_share"]
        stuck = not_memorised(ev)
        flagged = []
        for name, series in rec.saturated.items():
            if rec.layer_types.get(name) not in SATURATING_TYPES or name == out_layer:
                continue
            early, late = window(series, share, last=False), window(series, share, last=True)
            if (early is not None and early >= limit) or (stuck and late is not None and late >= limit):
                flagged.append({"layer": name, "type": rec.layer_types.get(name), "saturated_at_start": early,
                                "saturated_at_end": late, "calls": len(series)})
        if not flagged:
            return None
        flagged.sort(key=lambda f: -max(f["saturated_at_start"] or 0, f["saturated_at_end"] or 0))
        worst = flagged[0]
        peak = max(worst["saturated_at_start"] or 0, worst["saturated_at_end"] or 0)
        at_start = (worst["saturated_at_start"] or 0) >= limit
        confidence = (0.85 if at_start else 0.7) * (0.8 + 0.2 * peak)
        finding = self.finding(confidence, {"layers": flagged, "output_layer_skipped": out_layer},
                               severity="critical" if peak >= 0.9 and stuck and at_start else "warning", plots=r.plots,
                               title=f"{peak:.0%} of the outputs of {worst['type']} layer `{worst['layer']}` are "
                                     f"pinned at its bounds{'' if at_start else ' (they saturated during training)'}")
        if not at_start:   # saturated by training, not by the init or the inputs: what a failing fit does, a symptom
            finding.role, finding.explains = "symptom", ()
        return finding

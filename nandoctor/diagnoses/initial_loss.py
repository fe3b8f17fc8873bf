"""initial-loss-mismatch: the loss at initialisation is far from its expected value."""

from __future__ import annotations

import torch

from nandoctor.diagnoses import Diagnosis
from nandoctor.diagnoses.loss_reduction import looks_summed
from nandoctor.diagnoses.pairing_evidence import Pairing, finite, pairing_verdict
from nandoctor.records import Evidence, Finding
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.rewire import raw_output_reset


class InitialLossMismatch(Diagnosis):
    code = "initial-loss-mismatch"
    title = "The loss at initialisation is far above its expected value"
    severity = "warning"
    role = "symptom"        # of over-confident logits: init scale, input scale, a bias that is off
    requires = ("outputs",)
    thresholds = {
        "ratio_min": 2.0,     # the loss at init is at least this many times the expected value ...
        "excess_min": 1.0,    # ... and at least this much above it (nats)
        "max_confidence": 0.75,
        "typical_ratio": 1.5,  # ... while the median sample's loss at init (the data scan) is below this many times
                               #   the expected value: a few samples carry it, the model's start is fine ...
        "typical_spread": 0.5,  # ... with the samples' losses gathered there (MAD at most this share of the expected
                                #   value; a confidently wrong model spreads them from ~0 to far above)
    }
    fix = ("Make the initial predictions near-uniform: scale down the last layer's weights (or zero them), "
           "normalise the inputs, and set the output bias to the class log-frequencies.")
    doc = """
    ## What it detects
    On a fresh model, the loss on the fixed batch is far above the value a model that predicts
    uniformly would get: `ln(C)` for `CrossEntropyLoss` with C classes (or `NLLLoss` on
    log-probabilities), `ln(2)` for `BCEWithLogitsLoss`/`BCELoss`. Only evaluated when the
    output/loss pairing is right (otherwise the pairing diagnoses speak) and the loss is a mean.

    When the data scan's median per-sample loss at init is below `typical_ratio` times the
    expected value and the samples' losses gather there (their MAD at most `typical_spread` of
    it; a confidently wrong model spreads them from about 0 to far above), and the model has no
    BatchNorm or dropout (the scan scores in eval mode, the batch loss is the training mode's),
    the excess is carried by a few samples (a code such as -10000 in some rows, a handful of huge
    inputs): the finding is then an `info` note and its cure is not tried; the samples are the
    finding (`sample-loss-outlier`, `data-unnormalized`).

    ## Why it breaks training
    A loss far above `ln(C)` at init means the model is confidently wrong before it has seen any
    data: its logits are large. The first steps are spent shrinking them (the "hockey stick" at the
    start of the curve), gradients are large and saturated softmax units learn slowly; it often
    signals unnormalised inputs or a bad init of the last layer.

    ## Evidence
    The measured loss at init, the expected value and their ratio, the number of classes and the
    spread of the outputs (the logits' std and largest magnitude).

    ## Fix
    Normalise the inputs, initialise the last layer with small (or zero) weights, and set its bias
    to the log of the class frequencies for imbalanced data. Look for `data-unnormalized` or
    `bad-init` among the other findings: they are the usual causes.

    ## Known false positives
    Losses with class weights or label smoothing (the uniform prediction still gives ln C, so these
    are fine); deliberately sharp initialisations such as a pretrained head on new classes.
    """

    def check(self, ev: Evidence) -> Finding | None:
        p = Pairing.of(ev)
        if p is None or pairing_verdict(ev) is not None or looks_summed(p.metrics):
            return None
        measured, expected = p.metrics.get("initial_loss"), p.metrics.get("expected_initial_loss")
        if not (finite(measured) and finite(expected)) or expected <= 0:
            return None
        ratio = measured / expected
        if ratio < self.thresholds["ratio_min"] or measured - expected < self.thresholds["excess_min"]:
            return None
        confidence = min(self.thresholds["max_confidence"], 0.45 + 0.05 * ratio)
        o = p.outputs
        last = (p.metrics.get("last_module") or {}) if isinstance(p.metrics.get("last_module"), dict) else {}
        evidence = {"initial_loss": measured, "expected_initial_loss": expected, "ratio": ratio,
                    "loss": p.loss_name, "classes": o.get("classes"), "outputs_std": o.get("std"),
                    "outputs_max_abs": max(abs(o.get("min") or 0), abs(o.get("max") or 0)),
                    "output_layer": last.get("name"), "output_layer_type": last.get("type")}
        typical, spread = median_sample_loss(ev)
        if not p.metrics.get("mode_dependent") and finite(typical) and finite(spread) \
                and typical < self.thresholds["typical_ratio"] * expected \
                and spread <= self.thresholds["typical_spread"] * expected:
            evidence.update(median_sample_loss=typical, carried_by_few=True)
            return self.finding(confidence, evidence, severity="info",
                                title=f"The loss at initialisation is {measured:.3g}, {ratio:.1f}x its expected "
                                      f"{expected:.3g}, carried by a few samples: the median sample starts at "
                                      f"{typical:.3g}")
        return self.finding(confidence, evidence,
                            title=f"The loss at initialisation is {measured:.3g}, {ratio:.1f}x its expected "
                                  f"{expected:.3g}: the model starts confidently wrong")

    def cures(self, ctx, finding):
        """The output layer re-initialised by PyTorch's own ``reset_parameters()`` (its default init): cured when
        the loss then starts near its expected value and the training is no worse. Where the inputs' scale or
        an earlier layer makes the logits large, this does not bring the loss down, and the finding stays."""
        e = finding.evidence
        name = e.get("output_layer")
        if name is None or e.get("carried_by_few"):
            return []   # the median sample starts where it should: the samples, not the output layer
        name = "" if name == "(model)" else name
        try:
            layer = ctx.patient.new_model().get_submodule(name) if name else ctx.patient.new_model()
        except Exception:
            return []
        judge = judges.both(judges.starts_near(e["expected_initial_loss"], self.thresholds["ratio_min"]),
                            judges.trains_no_worse(1.05))
        if not callable(getattr(layer, "reset_parameters", None)):
            # raw parameters (``h @ self.W2 + self.b2``): the pair that makes the output, drawn as nn.Linear would
            classes = e.get("classes")
            try:
                build = raw_output_reset(ctx.patient, name, int(classes)) if classes else None
            except Exception:
                build = None
            if build is None:
                return []
            where = f"`{name}`" if name else f"the model ({e.get('output_layer_type') or 'its own'})"
            tried = f"re-drew the raw output weights of {where} as nn.Linear draws its own (uniform +-1/sqrt(fan_in))"
            return [Cure(tried, ctx.patient.variant(tried, model_factory=build), judge=judge,
                         fix=(f"Draw the output weights of {where} small (nn.Linear's default: uniform +-1/sqrt(fan_in), "
                              f"or scaled by 0.01) and the bias near zero: they make the loss start at "
                              f"{e['initial_loss']:.3g} where {e['expected_initial_loss']:.3g} is expected."))]
        factory = ctx.patient.model_factory

        def build():
            model = factory()
            with torch.no_grad():
                model.get_submodule(name).reset_parameters()
            return model
        variant = ctx.patient.variant(f"{name} re-initialised by reset_parameters()", model_factory=build)
        return [Cure(f"re-initialised the output layer `{name}` with PyTorch's default (reset_parameters())",
                     variant, judge=judge,
                     fix=(f"Initialise `{name}` with PyTorch's default (or smaller) weights instead of the current "
                          f"init: its outputs make the loss start at {e['initial_loss']:.3g} where "
                          f"{e['expected_initial_loss']:.3g} is expected."))]


def median_sample_loss(ev: Evidence) -> tuple:
    """The data scan's median per-sample loss of a fresh model (eval mode) and its MAD, or Nones."""
    r = ev.ok("data_scan")
    init = ((r.metrics.get("loss") or {}).get("init") or {}) if r is not None else {}
    return init.get("median"), init.get("mad")

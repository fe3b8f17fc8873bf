"""cannot-overfit-batch: the model cannot memorise one batch."""

from __future__ import annotations

import math

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence


class CannotOverfitBatch(Diagnosis):
    code = "cannot-overfit-batch"
    title = "The model cannot memorise a single batch"
    severity = "critical"
    role = "symptom"
    requires = ("overfit",)
    thresholds = {"critical_below_drop": 0.25, "warning_below_drop": 0.9}
    fix = ("Check that every layer is trainable and in the optimizer, that the loss matches the model's "
           "outputs, and that the learning rate is in the useful range (run `nandoctor lr-sweep`).")
    doc = """
    ## What it detects
    A fresh copy of the model, trained with the user's optimizer and learning rate on one fixed
    batch, fails to drive the loss on that batch down (and, for classification, to classify the
    batch right). Any model with enough capacity memorises one batch: it is the first sanity check
    of every training recipe.

    ## Why it breaks training
    If the set-up cannot fit 16-32 samples it will not fit the dataset. Something between the data,
    the model, the loss and the optimizer is disconnected: frozen or unregistered layers, a loss
    that does not match the outputs, a learning rate far too small or too large, a bug in the step.

    ## Evidence
    Initial and final loss on the batch, the relative drop, the batch accuracy, the number of steps,
    the learning rate, and the loss curve (plots/overfit.png).

    ## Fix
    Look at the findings ranked above this one: they usually name the cause. Otherwise check the
    learning rate with `nandoctor lr-sweep`, make the model bigger, and verify the labels.

    ## Known false positives
    Very small budgets (few steps) on slow models; heavy regularisation (dropout, weight decay) or
    data augmentation inside the dataset, which keep the same batch from being memorised; losses with
    a large irreducible floor (e.g. label smoothing) where a 90% drop is not reachable.
    """

    def check(self, ev: Evidence):
        r = ev.ok("overfit")
        if r is None:
            return None
        m = r.metrics
        if m.get("memorised") or m.get("initial_loss") is None:
            return None
        initial, tail = m["initial_loss"], m.get("tail_loss")
        if not (isinstance(initial, float) and math.isfinite(initial)) or tail is None:
            return None  # a non-finite run is judged by the NaN/explosion diagnoses
        drop = (initial - tail) / abs(initial) if initial else 0.0
        if drop >= self.thresholds["warning_below_drop"]:
            return None
        severity = "critical" if drop < self.thresholds["critical_below_drop"] else "warning"
        confidence = 0.9 if drop < 0.05 else 0.75 if drop < self.thresholds["critical_below_drop"] else 0.5
        evidence = {"initial_loss": initial, "final_loss": m.get("final_loss"), "tail_loss": tail,
                    "relative_drop": drop, "accuracy": m.get("accuracy"), "steps": m.get("steps"),
                    "lr": m.get("lr"), "batch_size": m.get("batch_size")}
        return self.finding(confidence, evidence, severity=severity, plots=r.plots,
                            title=f"The model cannot memorise a single batch (loss {initial:.4g} -> {tail:.4g} "
                                  f"in {m.get('steps')} steps)")

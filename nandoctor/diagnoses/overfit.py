"""cannot-overfit-batch: the model cannot memorise one batch."""

from __future__ import annotations

import math

from torch import nn

from nandoctor.diagnoses import Diagnosis
from nandoctor.diagnoses.module_tree import output_layer
from nandoctor.probes.instrument import FOLLOW, layer_kind
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges
from nandoctor.treatments.judges import arm_clean, arm_memorised, arms_of
from nandoctor.treatments.rewire import REWIRED, bottleneck_widened

NARROW_UNITS = 2      # a hidden nn.Linear of at most this many outputs ...
NARROW_FAN = 4        # ... between layers at least this many times wider (its input, its reader's output)
WIDENED_UNITS = 64    # the capacity test widens it to min(this, its input, its reader's output)
SQUEEZED = ("saturated-activation", "vanishing-gradients", "lr-too-low", "lr-too-high", "initial-loss-mismatch",
            "dead-relu", "no-trainable-params")   # what a confirmed bottleneck explains


def bottleneck(rec) -> dict | None:
    """A hidden nn.Linear of ``NARROW_UNITS`` outputs or fewer whose output reaches another nn.Linear through
    elementwise layers only, both neighbours ``NARROW_FAN`` times wider (``LSTM -> Linear(128, 1) -> sigmoid ->
    Linear(1, 20)``): every sample squeezed through one or two numbers. From the overfit run's recorder (the
    forward order of the leaf modules); None when there is none."""
    if rec is None:
        return None
    order, output = rec.forward_order, output_layer(rec)
    for i, name in enumerate(order):
        m = rec.layers.get(name)
        if not isinstance(m, nn.Linear) or name == output or m.out_features > NARROW_UNITS or \
                m.in_features < NARROW_FAN * m.out_features:
            continue
        for nxt in order[i + 1:]:
            reader = rec.layers.get(nxt)
            if reader is None and nxt != "(model)" and layer_kind(rec.model.get_submodule(nxt)) == FOLLOW:
                continue   # an elementwise layer (activation, dropout): the units pass through
            if isinstance(reader, nn.Linear) and reader.in_features == m.out_features and \
                    reader.out_features >= NARROW_FAN * m.out_features:
                width = min(WIDENED_UNITS, m.in_features, reader.out_features)
                return {"layer": name, "units": m.out_features, "in_features": m.in_features, "reader": nxt,
                        "reader_out_features": reader.out_features, "widened_to": width}
            break
    return None


class CannotOverfitBatch(Diagnosis):
    code = "cannot-overfit-batch"
    title = "The model cannot memorise a single batch"
    severity = "critical"
    role = "symptom"
    generic = True
    requires = ("overfit",)
    thresholds = {"critical_below_drop": 0.25, "warning_below_drop": 0.9,
                  "still_learning_drop": 0.1,  # the second half of the run still took 10% of the start off
                  "warning_min_steps": 120,    # below this many steps only a loss that does not move is evidence:
                  "stuck_below_drop": 0.05,    # less than 5% off; 5-90% is "not yet", whatever the budget allowed
                  "weight_decay_suspect": 0.01,             # L2 in the gradient (SGD, Adam): its cure is tried
                  "decoupled_weight_decay_suspect": 0.1}    # decoupled (AdamW, default 0.01): from here
    fix = ("Check that every layer is trainable and in the optimizer, that the loss matches the model's "
           "outputs, and that the learning rate is in the useful range (run `nandoctor lr-sweep`).")
    doc = """
    ## What it detects
    A fresh copy of the model, trained with the user's optimizer and learning rate on one fixed
    batch, fails to drive the loss on that batch down by 90% and to classify the batch right (95%
    of it; for 0/1 masks and multi-label targets under a binary or regression loss, a balanced
    accuracy of 95% over the elements, so that calling a 92%-background mask all background does
    not count). Any model with enough capacity memorises one batch: it is the first sanity check
    of every training recipe.

    ## Why it breaks training
    If the set-up cannot fit 16-32 samples it will not fit the dataset. Something between the data,
    the model, the loss and the optimizer is disconnected: frozen or unregistered layers, a loss
    that does not match the outputs, a learning rate far too small or too large, a bug in the step.

    ## Evidence
    Initial and final loss on the batch, the relative drop, the batch accuracy, the number of steps,
    the learning rate, and the loss curve (plots/overfit.png). A run whose loss was still falling
    clearly over its second half (`still_learning_drop` of the initial loss) is not flagged at any
    step count: a large model or a careful learning rate memorises slowly, and the verdict must be the
    same whether the budget allowed 30 steps or 300. For the same reason, below `warning_min_steps`
    only a loss that does not move (`stuck_below_drop`) is reported: a run that took 5% or more off
    in a short probe is "not yet", not "never".

    Where the model squeezes every sample through a hidden nn.Linear of one or two units read by a
    layer at least 4x wider (`LSTM -> Linear(128, 1) -> sigmoid -> Linear(1, 20)`), a capacity test
    is tried on a copy: that layer and its reader widened (to 64 units, or the narrower neighbour),
    freshly initialised, on the same batch. When the widened copy memorises where the model did not,
    the finding is confirmed, names the squeeze, and becomes the cause of the symptoms it explains
    (a sigmoid pinned behind the squeeze).

    Where the optimizer has a large weight decay (from 0.01 when it is added to the gradient, as
    SGD, Adam and RMSprop do; above 0.1 when it is decoupled, as AdamW's is), the same training is
    tried with `weight_decay=0`: when that memorises the batch (or trains clearly better), the
    finding is confirmed and becomes the cause, naming the decay (Adam's coupled 0.01 in BERT-pytorch
    #32; an SGD run whose every step pulls the weights back to zero).

    ## Fix
    Look at the findings ranked above this one: they usually name the cause. Otherwise check the
    learning rate with `nandoctor lr-sweep`, make the model bigger, and verify the labels. A
    confirmed squeeze: widen that layer. A confirmed weight decay: lower it (1e-4 to 5e-4 for SGD
    and Adam, 0.01 to 0.1 for AdamW).

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
        if m.get("memorised") or m.get("initial_loss") is None or m.get("nonfinite_step") is not None:
            return None  # a run that turned non-finite is loss-nonfinite's
        initial, tail = m["initial_loss"], m.get("tail_loss")
        if not (isinstance(initial, float) and math.isfinite(initial)) or tail is None:
            return None  # a non-finite run is judged by the NaN/explosion diagnoses
        drop = (initial - tail) / abs(initial) if initial else 0.0
        if drop >= self.thresholds["warning_below_drop"]:
            return None
        late = m.get("late_drop")
        if late is not None and late >= self.thresholds["still_learning_drop"] and drop >= 0:
            return None  # still learning when the probe stopped: slow to memorise is not unable to
        if drop >= self.thresholds["stuck_below_drop"] and (m.get("steps") or 0) < self.thresholds["warning_min_steps"]:
            return None  # learning, not memorised yet, in a short run: no verdict either way
        severity = "critical" if drop < self.thresholds["critical_below_drop"] else "warning"
        confidence = 0.9 if drop < 0.05 else 0.75 if drop < self.thresholds["critical_below_drop"] else 0.5
        evidence = {"initial_loss": initial, "final_loss": m.get("final_loss"), "tail_loss": tail,
                    "relative_drop": drop, "accuracy": m.get("accuracy"), "steps": m.get("steps"),
                    "lr": m.get("lr"), "batch_size": m.get("batch_size"), "late_drop": late}
        return self.finding(confidence, evidence, severity=severity, plots=r.plots,
                            title=f"The model cannot memorise a single batch (loss {initial:.4g} -> {tail:.4g} "
                                  f"in {m.get('steps')} steps)")

    def cures(self, ctx, finding):
        """A capacity test where the model squeezes every sample through a hidden layer of one or two units: the
        same model with that layer (and the one reading it) widened, trained on the same batch."""
        r = ctx.evidence.ok("overfit") if ctx.evidence is not None else None
        b = bottleneck(r.data.get("recorder")) if r is not None else None
        cures = self._without_weight_decay(ctx, finding)
        if b is None:
            return cures
        finding.evidence["bottleneck"] = b
        variant = ctx.patient.variant(f"{b['layer']} widened to {b['widened_to']} units",
                                      model_factory=bottleneck_widened(ctx.patient, b["layer"], b["reader"],
                                                                       b["widened_to"]))
        fix = (f"Widen `{b['layer']}`: every sample passes through its {b['units']} unit(s) between a "
               f"{b['in_features']}-wide input and a {b['reader_out_features']}-wide output; give it (and "
               f"`{b['reader']}`'s input) {b['widened_to']} or more units, or drop the squeeze.")
        becomes = {"role": "cause", "generic": False, "explains": SQUEEZED,
                   "title": f"Every sample is squeezed through {b['units']} unit(s) of `{b['layer']}`: "
                            f"{finding.title[0].lower()}{finding.title[1:]}"}
        return [Cure(f"`{b['layer']}` ({b['units']} unit(s)) and `{b['reader']}` widened to {b['widened_to']} units",
                     variant, judge=judges.either(judges.beats_control, REWIRED), fix=fix, becomes=becomes)] + cures

    def _without_weight_decay(self, ctx, finding) -> list:
        """A large weight decay pulls every weight to zero at each step (from 0.01 where it is added to the gradient,
        as SGD and Adam do; above 0.1 where it is decoupled, AdamW); the same training with weight_decay=0 must
        memorise the batch (or train clearly better) for the decay to be the cause."""
        kwargs = dict(ctx.patient.optimizer_kwargs or {})
        decay = kwargs.get("weight_decay")
        name = getattr(ctx.patient.optimizer_cls, "__name__", "")
        decoupled = name.endswith("W") or bool(kwargs.get("decoupled_weight_decay"))
        suspect = self.thresholds["decoupled_weight_decay_suspect" if decoupled else "weight_decay_suspect"]
        if not isinstance(decay, (int, float)) or isinstance(decay, bool) or decay < suspect:
            return []
        finding.evidence["weight_decay"] = float(decay)
        variant = ctx.patient.variant(f"weight_decay={decay:g} -> 0", optimizer_kwargs={**kwargs, "weight_decay": 0.0})
        becomes = {"role": "cause", "generic": False, "explains": SQUEEZED,
                   "title": f"weight_decay={decay:g} pulls the weights to zero faster than the loss moves them: "
                            f"{finding.title[0].lower()}{finding.title[1:]}"}
        fix = (f"Lower the weight decay (weight_decay={decay:g} here): 1e-4 to 5e-4 for SGD or Adam, where it is "
               f"added to the gradient, 0.01 to 0.1 for AdamW, where it is decoupled; exclude biases and norm layers.")
        return [Cure(f"trained with weight_decay=0 (was {decay:g})", variant,
                     judge=judges.either(judges.repairs(judges.memorised), REWIRED), fix=fix, becomes=becomes)]

    def gone_with(self, finding, cause_treatment):
        """The cause's cure trained on the same fixed batch (the overfit protocol) and memorised it, where
        the untreated control did not."""
        before, after, protocol = arms_of(cause_treatment)
        if protocol != "overfit" or not arm_memorised(after) or arm_memorised(before):
            return None
        return (f"the cure's run memorised the same batch (loss {after['initial_loss']:.4g} -> "
                f"{after['tail_loss']:.4g}) where the untreated run did not")


class LossNonfinite(Diagnosis):
    code = "loss-nonfinite"
    title = "The loss becomes NaN or Inf during training"
    severity = "critical"
    role = "symptom"
    generic = True
    requires = ("overfit",)
    fix = ("Look at the findings ranked above this one for the cause (data, learning rate, a log of zero, "
           "exploding gradients); `nandoctor explain nonfinite-source` shows how the first NaN is traced.")
    doc = """
    ## What it detects
    The loss of the overfit probe (a fresh model trained on one fixed batch with the user's optimizer
    and learning rate) turned NaN or infinite.

    ## Why it breaks training
    One non-finite loss poisons every weight through the gradients: from then on the model outputs
    NaN and training cannot recover.

    ## Evidence
    The step at which the loss became non-finite, the last finite loss before it, the learning rate,
    and the loss curve (plots/overfit.png).

    ## Fix
    This is a symptom: the specific findings ranked above it name the cause. Common ones are dirty
    data (`data-nonfinite`), a learning rate past the divergence point (`lr-too-high`), a log or a
    division that meets zero (`nonfinite-source`, `probability-loss-on-logits`) and exploding
    gradients (`exploding-gradients`).

    ## Known false positives
    None: the loss really was non-finite. It is ranked below any specific cause.
    """

    def check(self, ev: Evidence):
        r = ev.ok("overfit")
        if r is None or r.metrics.get("nonfinite_step") is None:
            return None
        run = r.data.get("run")
        finite = run.finite if run is not None else []
        evidence = {"nonfinite_step": r.metrics["nonfinite_step"], "final_loss": r.metrics.get("final_loss"),
                    "last_finite_loss": finite[-1] if finite else None, "initial_loss": r.metrics.get("initial_loss"),
                    "lr": r.metrics.get("lr")}
        return self.finding(0.95, evidence, plots=r.plots,
                            title=f"The loss becomes non-finite at step {r.metrics['nonfinite_step']} of the overfit probe")

    def gone_with(self, finding, cause_treatment):
        """The cause's untreated run turned non-finite and its cured run stayed finite to the end."""
        before, after, protocol = arms_of(cause_treatment)
        if protocol is None or before.get("nonfinite_step") is None or not arm_clean(after):
            return None
        return (f"the untreated run turned non-finite at step {before['nonfinite_step']}; the cure's run stayed "
                f"finite for its {after.get('steps')} steps")

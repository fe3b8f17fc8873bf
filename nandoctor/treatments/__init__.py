"""Treatments: the one place that trains a cure.

A diagnosis *describes* its cures (``Diagnosis.cures`` returns ``Cure`` records: a variant of the
patient, what to measure beside the loss, and a pure ``judge(before, after)`` from ``judges``);
it never trains, plots or imports a probe. ``run_cure`` here trains the untreated control and the
variant on the same steps, batch and seed, measures both, judges, and returns the SPEC
``treatment`` record; ``treat`` tries a finding's alternatives in order until one cures.

The control is the overfit probe's own run when it trained the same way (the steps the plan gave
the cures, or it broke before them); otherwise it is trained here beside the variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from nandoctor import watchdog
from nandoctor.probes import ProbeContext
from nandoctor.probes.overfit import batch_accuracy
from nandoctor.probes.training import Run, train
from nandoctor.treatments import judges

MIN_STEPS = 20    # fewest steps a cure is judged on, when the plan gives none
MAX_STEPS = 300
CURVE_POINTS = 400  # the loss curves kept in the record (for the before/after plot and re-rendering)


@dataclass
class Outcome:
    """One arm of a cure: the training run, the batch accuracy after it, what was measured beside the loss."""

    run: Run
    accuracy: float | None = None
    measures: dict = field(default_factory=dict)

    @classmethod
    def reported(cls, numbers: dict, losses=()) -> "Outcome":
        """An arm a probe already trained, as the numbers it reported (and its curve, when it kept one)."""
        return cls(Run(losses=list(losses or [])), measures=dict(numbers))

    def summary(self) -> dict:
        r = self.run
        if not r.losses and self.measures:
            return dict(self.measures)
        out = {"initial_loss": r.initial, "final_loss": r.losses[-1] if r.losses else None, "tail_loss": r.tail(),
               "steps": r.steps, "nonfinite_step": r.nonfinite_step, "accuracy": self.accuracy,
               "error": r.error and r.error.get("message")}
        out.update(self.measures)
        return out


@dataclass
class Cure:
    """A cure, as data: what to change, how to train it, how to judge it.

    ``variant`` is a copy of the patient with the change (``Patient.variant``), or None for the
    patient itself trained another way (``lr``, ``hooks``). ``judge(before, after)`` decides on two
    ``Outcome``s. ``measure`` (a name in ``MEASURES``) is measured on both arms' patients, a cheap
    check beside the loss (gradient accumulation, call-to-call drift). ``train`` (a name in
    ``PROTOCOLS``: the LR check, the precision run) replaces the overfit training for both arms. ``done`` holds both arms when a probe already trained them: the runner
    only judges. ``severity`` and ``fix``, when given, replace the finding's once the cure confirms it, and so do
    the attributes in ``becomes``.
    """

    tried: str
    variant: Any = None
    judge: Callable = judges.beats_control
    lr: float | None = None
    hooks: Callable[[nn.Module, Any], None] | None = None
    control_hooks: Callable[[nn.Module, Any], None] | None = None
    measure: str | Callable[[Any], dict] | None = None   # a name in MEASURES, or a function
    train: str | Callable[..., Outcome] | None = None     # a name in PROTOCOLS, or a function
    steps: int | None = None
    done: tuple[Outcome, Outcome] | None = None
    control: Outcome | None = None              # the untreated arm, when a probe already trained it this way
    severity: str | None = None
    refuted_severity: str | None = None          # the finding's severity when this (its last) cure refutes it
    fix: str | None = None
    becomes: dict = field(default_factory=dict)  # more of the finding replaced once the cure confirms it (its title,
                                                 # role, explains: a catch-all symptom whose cure names the cause)
    extra: dict = field(default_factory=dict)   # more numbers for the record (the probe's reference run ...)
    follows_plan: bool = True   # its steps follow the plan's; False when the evidence fixes them (the step a
                                # schedule broke at): then a failure at those steps refutes at any budget


def overfit_run(ctx: ProbeContext, patient, steps: int, *, lr: float | None = None,
                hooks: Callable[[nn.Module, object], None] | None = None) -> Outcome:
    """The overfit probe's training on ``patient`` (a variant): fresh model, fixed batch."""
    model = patient.new_model()
    optimizer = patient.make_optimizer(model, lr=lr)
    if hooks:
        hooks(model, optimizer)
    batch = patient.fixed_batch()
    run = train(patient, model, optimizer, batch, steps, deadline=ctx.deadline)
    return Outcome(run, batch_accuracy(patient, model, batch) if not run.error else None)


def cure_steps(ctx: ProbeContext) -> int:
    """The steps a cure trains: the plan's (sized like the overfit probe), else what the time allows."""
    if ctx.planned_steps:
        return int(ctx.planned_steps)
    return ctx.steps(lo=MIN_STEPS, hi=MAX_STEPS, per_step=ctx.step_time * 1.1)


def _control(ctx: ProbeContext, cure: Cure, steps: int) -> tuple[Outcome | None, int]:
    """The overfit probe's run as the control when it trained as the cure will, with the steps to use."""
    if cure.train is not None or cure.control_hooks is not None or cure.steps is not None or ctx.evidence is None:
        return None, steps
    over = ctx.evidence.ok("overfit")
    run = over.data.get("run") if over is not None else None
    if not isinstance(run, Run):
        return None, steps
    broke = run.stopped in ("nonfinite", "error")
    planned = over.metrics.get("planned_steps") or run.steps
    if broke:
        return Outcome(run, over.metrics.get("accuracy")), steps
    if run.steps >= min(steps, planned):
        # the treated arm trains exactly as long as the control did (its accuracy is read at its end): shorter
        # when the overfit probe was planned shorter, longer when it was planned longer (one arm of the
        # probe's length costs less than two of the cures')
        return Outcome(run, over.metrics.get("accuracy")), run.steps
    return None, steps


# --- protocols: other ways to train both arms, named by a cure's ``train`` ------------------------
def lr_check_run(patient, steps: int, deadline: float | None, lr: float | None) -> Outcome:
    """The LR sweep's check: a constant-LR run on the data stream from the same fresh init, its drop
    measured against the same run at LR 0 (the untrained model's loss on those batches)."""
    from nandoctor.probes.lr_sweep import CHECK_MIN_STEPS, check_lrs
    from nandoctor.probes.training import error_record
    try:
        check = check_lrs(patient, {"run": lr if lr is not None else patient.lr}, max(CHECK_MIN_STEPS, steps // 3),
                          deadline=deadline)
    except (KeyboardInterrupt, watchdog.Overrun):
        raise
    except Exception as exc:   # the stream itself raised (a sample that cannot be loaded): this arm broke
        return Outcome(Run(stopped="error", error=error_record(exc)), measures={"relative_drop": None})
    return _check_outcome(check.get("run"))


def _check_outcome(summary: dict | None) -> Outcome:
    """One LR check run (``lr_sweep.check_lrs``'s summary) as an arm of a cure."""
    if summary is None:  # cut short by the clock
        return Outcome(Run(stopped="deadline"), measures={"relative_drop": None})
    run = Run(losses=list(summary.get("losses") or []))
    return Outcome(run, measures={k: v for k, v in summary.items() if k != "losses"})


MATCHED_SWEEP_STEPS = 60   # ``lr_matched``: the LR range test each arm runs to find its own LR


def lr_matched_run(patient, steps: int, deadline: float | None, lr: float | None) -> Outcome:
    """The LR check at the arm's own LR: an LR range test on this arm (a fresh model, the user's optimizer and
    stream), then the LR check's constant-LR run at its suggestion (the user's LR when the sweep suggests none).
    For cures that change how large the gradients are (inputs rescaled): at one LR the two arms are not the same
    training, each at its own best they are, and the one that then trains better has the better set-up."""
    from nandoctor import curves
    from nandoctor.probes.lr_sweep import CHECK_MIN_STEPS, check_lrs, sweep, verify_suggestion
    found = sweep(patient, steps=MATCHED_SWEEP_STEPS, deadline=deadline)
    if found.stopped == "deadline":
        return _check_outcome(None)
    reading = curves.read_sweep(found.lrs, found.losses) if len(found.losses) >= 2 else None
    suggested = reading.suggested_lr if reading is not None else None
    n = max(CHECK_MIN_STEPS, steps // 3)
    check = check_lrs(patient, {"suggested": suggested or lr or patient.lr}, n, deadline)
    if suggested:  # as the LR sweep probe does: one that does not train from scratch gives way to the most cautious
        check = verify_suggestion(patient, reading, check, n, deadline)
    out = _check_outcome(check.get("suggested"))
    out.measures["lr_from"] = f"its own LR sweep ({reading.suggested_by})" if suggested else \
        "the configured LR (its sweep suggested none)"
    return out


def precision_run(patient, steps: int, deadline: float | None, lr: float | None) -> Outcome:
    """The precision probe's run: the patient's own step under its autocast on the fixed batch."""
    from nandoctor.probes.precision import precision_run as run_it
    out = run_it(patient, patient.fixed_batch(), steps, deadline=deadline)
    return precision_outcome(out)


def precision_outcome(out) -> Outcome:
    """A precision run (``probes.precision.PrecisionRun``) as an arm of a cure."""
    return Outcome(out.run, measures={"finite": int(out.finite), "relative_drop": out.relative_drop,
                                      "skipped_steps": out.skipped_steps, "precision": out.precision})


def scored_on(batch, key: str = "scored_loss") -> Callable[..., Outcome]:
    """A protocol: the patient's own data stream from a fresh model, then the eval-mode loss of ``batch`` (the
    same samples for both arms, e.g. the ones a cure does not drop) as ``measures[key]``."""
    def protocol(patient, steps: int, deadline: float | None, lr: float | None) -> Outcome:
        from nandoctor.probes.bn_freeze import eval_loss
        model = patient.new_model()
        optimizer = patient.make_optimizer(model, lr=lr)
        loader = patient.loader(drop_last=len(patient.train_data) > patient.batch_size)
        run = train(patient, model, optimizer, loader, steps, deadline=deadline)
        return Outcome(run, measures={key: eval_loss(patient, model, batch) if not run.error else None})
    return protocol


def held_out_run(patient, steps: int, deadline: float | None, lr: float | None) -> Outcome:
    """The patient's own data stream for ``steps`` steps from a fresh model, then the eval-mode loss of a
    held-out random batch (the bn_freeze probe's): what a model trained the user's way does on mixed data."""
    from nandoctor.probes.bn_freeze import EVAL_BATCH, HELD_OUT_OFFSET
    held_out = patient.fixed_batch(size=EVAL_BATCH, offset=HELD_OUT_OFFSET)
    return scored_on(held_out, "held_out_loss")(patient, steps, deadline, lr)


SCORED_PER_CLASS = 64   # ``class_recall``: at most this many samples of each class in the scored batch ...
SCORED_MAX = 256        # ... and at most this many in all
LABEL_WALK = 2048       # samples whose labels are read (a seeded draw) to fill the batch
MIN_RARE_SCORED = 8     # fewer samples of the rarest class scored say nothing about its recall
MAX_CHECKS = 30         # scorings along the run, evenly spaced (every 10 steps of a 300-step run)


def class_labels(targets) -> torch.Tensor | None:
    """One integer class per sample from a batch's targets (``[B]`` labels, ``[B, 1]`` or ``[B]`` 0/1 floats), on
    the CPU; None for anything else (masks, multi-label, regression)."""
    if not isinstance(targets, torch.Tensor) or targets.dim() == 0:
        return None
    t = targets.detach().reshape(targets.shape[0], -1)
    if t.shape[1] != 1:
        return None
    t = t[:, 0].to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()) or bool((t < 0).any()):
        return None
    return t.round().long()


def class_scored_batch(patient) -> tuple[Any, torch.Tensor | None, dict[int, int]]:
    """A stratified batch of training samples: up to ``SCORED_PER_CLASS`` of each class (``SCORED_MAX`` in all)
    from a seeded draw of ``LABEL_WALK`` samples, so that a rare class is scored on more than a handful. The same
    samples for every variant that keeps the training set. ``(batch on the device, its labels, samples per class
    in the draw)``, or ``(None, None, {})`` when the targets are not one class per sample, a class has fewer
    than ``MIN_RARE_SCORED`` samples in the draw, or the samples cannot be drawn (no ``len``, not pairs)."""
    try:
        return _class_scored_batch(patient)
    except Exception:  # the judge abstains on an arm it cannot score: the finding stays inconclusive
        return None, None, {}


def _class_scored_batch(patient) -> tuple[Any, torch.Tensor | None, dict[int, int]]:
    from torch.utils.data import DataLoader, Subset

    from nandoctor.patient import split_batch, to_device
    from nandoctor.watchdog import watched
    n = len(patient.train_data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(patient.seed + 7919 * 131))[:LABEL_WALK]
    labels = []
    for start in range(0, len(order), 256):
        chunk = order[start:start + 256].tolist()
        loader = DataLoader(Subset(watched(patient.train_data), chunk), batch_size=len(chunk), shuffle=False,
                            num_workers=0, collate_fn=patient.collate_fn)
        found = class_labels(split_batch(next(iter(loader)))[1])
        if found is None:
            return None, None, {}
        labels.append(found)
    y = torch.cat(labels)
    counts = {int(c): int((y == c).sum()) for c in y.unique()}
    if len(counts) < 2 or min(counts.values()) < MIN_RARE_SCORED:
        return None, None, {}
    quota = max(MIN_RARE_SCORED, min(SCORED_PER_CLASS, SCORED_MAX // len(counts)))
    keep = [int(i) for c in sorted(counts) for i in torch.nonzero(y == c).flatten()[:quota]]
    idx = [int(order[i]) for i in keep]
    loader = DataLoader(Subset(watched(patient.train_data), idx), batch_size=len(idx), shuffle=False,
                        num_workers=0, collate_fn=patient.collate_fn)
    return to_device(next(iter(loader)), patient.device), y[keep], counts


def class_predictions(patient, model: nn.Module, inputs, n: int):
    """The class the model predicts for each of ``n`` samples (eval mode, no gradient): the arg-max of ``[n, C]``
    scores, or one score per sample thresholded as the loss reads it (0 for logits, 0.5 for probabilities);
    None for outputs of another shape."""
    from nandoctor.probes.overfit import BINARY_THRESHOLDS, scored_output
    out = scored_output(model, inputs, eval_mode=True)
    if not isinstance(out, torch.Tensor) or out.shape[0] != n:
        return None
    if out.dim() == 2 and out.shape[1] >= 2:
        return out.argmax(dim=1).cpu()
    if out.numel() == n and patient.loss_name in BINARY_THRESHOLDS:
        return (out.reshape(n) > BINARY_THRESHOLDS[patient.loss_name]).long().cpu()
    return None


def class_recalls(predicted, labels) -> dict[int, float]:
    """Recall per class present in ``labels``: the share of its samples predicted as it."""
    return {int(c): float((predicted[labels == c] == c).float().mean()) for c in labels.unique()}


def class_recall_run(patient, steps: int, deadline: float | None, lr: float | None) -> Outcome:
    """The patient's own data stream for ``steps`` steps from a fresh model, scored ``MAX_CHECKS`` times along the
    run (evenly, and at its end) on a stratified batch of training samples (``class_scored_batch``): the recall
    of the rarest class of the draw, the mean recall of the others and the balanced accuracy (mean per-class
    recall), with the step and the passes over the data of each scoring. What a model trained the user's way
    makes of a rare class, and how soon."""
    from nandoctor.patient import split_batch
    batch, labels, drawn = class_scored_batch(patient)
    model = patient.new_model()
    optimizer = patient.make_optimizer(model, lr=lr)
    loader = patient.loader(drop_last=len(patient.train_data) > patient.batch_size)
    try:
        per_pass = max(1, len(loader))
    except TypeError:  # an iterable dataset: no passes to count
        per_pass = steps
    every = max(1, math.ceil(steps / MAX_CHECKS))
    rare = min(drawn, key=lambda c: (drawn[c], c)) if drawn else None   # the rarest class in the draw
    scored_rare = int((labels == rare).sum()) if rare is not None else 0
    inputs = split_batch(batch)[0] if batch is not None else None
    curve: dict[str, list] = {"check_steps": [], "passes": [], "rare_recall_curve": [], "others_recall_curve": [],
                              "balanced_accuracy_curve": []}
    last: dict[int, float] = {}
    scorable = [rare is not None]

    def check(i: int, _loss: float) -> None:
        step = i + 1
        if not scorable[0] or (step % every and step != steps):
            return
        predicted = class_predictions(patient, model, inputs, len(labels))
        if predicted is None:
            scorable[0] = False
            return
        recall = class_recalls(predicted, labels)
        others = [r for c, r in recall.items() if c != rare]
        curve["check_steps"].append(step)
        curve["passes"].append(round(step / per_pass, 3))
        curve["rare_recall_curve"].append(round(recall[rare], 4))
        curve["others_recall_curve"].append(round(sum(others) / len(others), 4))
        curve["balanced_accuracy_curve"].append(round(sum(recall.values()) / len(recall), 4))
        last.clear()
        last.update(recall)

    run = train(patient, model, optimizer, loader, steps, deadline=deadline, on_step=check)
    measures = {"rare_class": rare, "scored_batch": len(labels) if labels is not None else 0,
                "scored_rare": scored_rare, "batches_per_pass": per_pass,
                "rare_recall_at_end": curve["rare_recall_curve"][-1] if curve["check_steps"] else None,
                "balanced_accuracy_at_end": curve["balanced_accuracy_curve"][-1] if curve["check_steps"] else None,
                "recall_per_class_at_end": {c: round(r, 4) for c, r in last.items()}, **curve}
    return Outcome(run, measures=measures)


PROTOCOLS: dict[str, Callable[..., Outcome]] = {"lr_check": lr_check_run, "lr_matched": lr_matched_run,
                                                "precision": precision_run,
                                                "held_out": held_out_run, "class_recall": class_recall_run}


# --- measures: numbers beside the loss, named by a cure's ``measure`` ----------------------------
def gradient_ratio(patient) -> dict:
    """How much the gradient grows between two identical calls of the patient's step (1: zeroed)."""
    from nandoctor.probes.structure import accumulation_of
    acc = accumulation_of(patient)
    return {"gradient_ratio": acc.get("ratio") if acc else None}


def call_to_call_change(patient) -> dict:
    """How much the model's output changes between two eval-mode calls on the same batch (0: a function)."""
    from nandoctor.probes.structure import call_drift
    return {"call_to_call_change": call_drift(patient.new_model(), patient.fixed_batch())}


def batch_mixing(patient) -> dict:
    """How much the second half of the fixed batch's outputs move when the first half is beside them (eval mode,
    a fresh model; 0: each sample's output is its own); None when it cannot be measured."""
    from nandoctor.patient import split_batch
    from nandoctor.probes.batch_mixing import batch_mixing as measure
    found = measure(patient.new_model(), split_batch(patient.fixed_batch())[0])
    return {"batch_mixing": found["difference"] if found else None}


MEASURES: dict[str, Callable[[Any], dict]] = {"gradient_ratio": gradient_ratio,
                                               "call_to_call_change": call_to_call_change,
                                               "batch_mixing": batch_mixing}


def _arm(ctx, cure: Cure, patient, steps: int, *, treated: bool) -> Outcome:
    lr = cure.lr if treated else None
    if cure.train is not None:
        protocol = PROTOCOLS[cure.train] if isinstance(cure.train, str) else cure.train
        out = protocol(patient, steps, ctx.deadline, lr)
    else:
        out = overfit_run(ctx, patient, steps, lr=lr, hooks=cure.hooks if treated else cure.control_hooks)
    _measure(cure, patient, out)
    return out


def _measure(cure: Cure, patient, out: Outcome) -> None:
    if cure.measure is not None:
        fn = MEASURES[cure.measure] if isinstance(cure.measure, str) else cure.measure
        out.measures.update(fn(patient))


def protocol_of(cure: Cure) -> str:
    """How both arms were trained: ``overfit`` (a fresh model on the fixed batch), a name in ``PROTOCOLS``,
    ``probe`` (a probe's own comparison), or ``custom``."""
    if cure.done is not None:
        return "probe"
    if cure.train is None:
        return "overfit"
    return cure.train if isinstance(cure.train, str) else "custom"


def run_cure(ctx: ProbeContext, cure: Cure) -> dict:
    """Train (or take) both arms of ``cure``, judge them, and return the SPEC ``treatment`` record."""
    steps = None
    if cure.done is not None:
        before, after = cure.done
    else:
        steps = cure.steps or cure_steps(ctx)
        before, steps = (cure.control, steps) if cure.control is not None else _control(ctx, cure, steps)
        if before is None:
            before = _arm(ctx, cure, ctx.patient, steps, treated=False)
        else:
            _measure(cure, ctx.patient, before)
        after = _arm(ctx, cure, cure.variant if cure.variant is not None else ctx.patient, steps, treated=True)
    # an arm the clock cut short cannot be judged: the finding stays inconclusive, not refuted
    cut = cure.done is None and any(o.run.stopped == "deadline" for o in (before, after))
    verdict = None if cut else cure.judge(before, after)   # a judge may abstain (None): nothing to compare
    cured = bool(verdict)
    record = {"tried": cure.tried, "cured": cured, "before": before.summary(), "after": after.summary(),
              "protocol": protocol_of(cure),
              "judged_by": getattr(cure.judge, "text", getattr(cure.judge, "__name__", "judge")),
              "curves": {"before": _thin(before.run.losses), "after": _thin(after.run.losses)}}
    if cut or verdict is None:
        record["judged"] = False
        record["note"] = "not judged: the clock stopped a run before its planned steps" if cut else \
            "not judged: the untreated run did not show the symptom in these steps"
    elif not cured and cure.judge is judges.beats_control and judges.memorised(before):
        record["nothing_to_cure"] = True
        record["note"] = "the untreated run already memorised the batch: nothing here to cure"
    elif not cured and short_of_refutation(ctx, cure, steps):
        # a cure that did not cure in fewer steps than a refutation is defined at proves nothing yet: the
        # same set-up given the steps may cure, so the verdict would depend on the budget and the machine
        record["judged"] = False
        length = cure_length(ctx, cure, steps)
        record["short_of_refutation"] = {"planned_steps": length, "refutation_steps": int(ctx.refute_steps)}
        record["note"] = (f"not refuted: the cure ran at {length} planned steps and a refutation "
                          f"needs {ctx.refute_steps}; a larger --budget gives it them")
    record.update(cure.extra)
    return record


def cure_length(ctx: ProbeContext, cure: Cure, steps: int | None) -> int | None:
    """A cure's length in the plan's steps: the steps both arms trained, or, for a cure that sets its own from
    the plan's (twice them on the data stream), the plan's."""
    length = ctx.planned_steps if cure.steps is not None else steps
    return int(length) if length is not None else None


def short_of_refutation(ctx: ProbeContext, cure: Cure, steps: int | None) -> bool:
    """Whether a cure that failed ran shorter than a refutation needs: its steps follow the plan and it ran
    fewer than ``ctx.refute_steps`` of them (the overfit probe's steps at the refutation tier)."""
    if cure.done is not None or not cure.follows_plan or ctx.refute_steps is None or ctx.planned_steps is None:
        return False
    length = cure_length(ctx, cure, steps)
    return length is not None and length < ctx.refute_steps


def treat(ctx: ProbeContext, cures: list[Cure]) -> tuple[dict | None, Cure | None]:
    """Try ``cures`` in order (cheapest, most likely first) until one cures; the record of the last one tried.

    When more than one was tried, ``attempts`` lists each (what, cured). Returns (record, the cure that
    worked or None)."""
    record, attempts = None, []
    for cure in cures:
        record = run_cure(ctx, cure)
        attempts.append({"tried": cure.tried, "cured": record["cured"]})
        if record["cured"]:
            if len(attempts) > 1:
                record["attempts"] = attempts
            return record, cure
        if ctx.time_left() <= 0:
            break
    if record is not None and len(attempts) > 1:
        record["attempts"] = attempts
    untried = cures[len(attempts):]
    if record is not None and untried and record.get("judged") is not False:
        # refuted only when every alternative was tried: the one the clock left out may be the cure
        record["judged"] = False
        record["untried"] = [c.tried for c in untried]
        record["note"] = (f"not refuted: {len(untried)} alternative(s) not tried, the budget was spent "
                          f"({untried[0].tried})")
    return record, None


def cured_patient(patient, cure: Cure):
    """The patient with ``cure`` applied, to diagnose again (None when the cure is not a change of the
    set-up that can be trained as the user trains: a probe's own comparison, an optimizer hook)."""
    if cure.hooks is not None or (cure.done is not None and cure.lr is None):
        return None
    base = cure.variant if cure.variant is not None else patient
    if cure.lr is not None:
        base = base.variant(f"learning rate {cure.lr:.3g}", optimizer_kwargs={**base.optimizer_kwargs, "lr": cure.lr})
    return base


def _thin(losses: list[float]) -> list[float]:
    if len(losses) <= CURVE_POINTS:
        return list(losses)
    step = len(losses) / CURVE_POINTS
    return [losses[int(i * step)] for i in range(CURVE_POINTS)] + [losses[-1]]


def plot_treatment(ctx: ProbeContext, code: str, record: dict) -> None:
    """Name the before/after plot of a ``treatment`` record; the report draws it from ``record["curves"]``."""
    path, rel = ctx.plot_path(f"treatment-{code}")
    if record.get("curves") and path is not None:
        record["plot"] = rel

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

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

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
    only judges. ``severity`` and ``fix``, when given, replace the finding's once the cure confirms it.
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
    extra: dict = field(default_factory=dict)   # more numbers for the record (the probe's reference run ...)


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
    if broke or run.steps >= min(steps, planned):
        return Outcome(run, over.metrics.get("accuracy")), (min(steps, planned) if not broke else steps)
    return None, steps


# --- protocols: other ways to train both arms, named by a cure's ``train`` ------------------------
def lr_check_run(patient, steps: int, deadline: float | None, lr: float | None) -> Outcome:
    """The LR sweep's check: a constant-LR run on the data stream from the same fresh init, its drop
    measured against the same run at LR 0 (the untrained model's loss on those batches)."""
    from nandoctor.probes.lr_sweep import CHECK_MIN_STEPS, check_lrs
    check = check_lrs(patient, {"run": lr if lr is not None else patient.lr}, max(CHECK_MIN_STEPS, steps // 3),
                      deadline=deadline)
    summary = check.get("run")
    if summary is None:  # cut short by the clock
        return Outcome(Run(stopped="deadline"), measures={"relative_drop": None})
    run = Run(losses=list(summary.get("losses") or []))
    return Outcome(run, measures={k: v for k, v in summary.items() if k != "losses"})


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


PROTOCOLS: dict[str, Callable[..., Outcome]] = {"lr_check": lr_check_run, "precision": precision_run,
                                                "held_out": held_out_run}


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


MEASURES: dict[str, Callable[[Any], dict]] = {"gradient_ratio": gradient_ratio,
                                               "call_to_call_change": call_to_call_change}


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
    record.update(cure.extra)
    return record


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

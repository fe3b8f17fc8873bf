"""Treatments: counterfactual re-runs that confirm or refute a diagnosis.

A diagnosis that can be cured on a copy implements ``Diagnosis.treat(ctx, finding)``
and usually calls ``try_cure`` here with a *variant* of the patient (another loss,
a wrapped model, a clipped step). ``try_cure`` re-runs the overfit probe's
training on the variant, compares it with the untreated run, plots both curves in
one figure and returns the SPEC ``treatment`` record.
"""

from __future__ import annotations

import math
from typing import Callable

from torch import nn

from nandoctor.probes import ProbeContext
from nandoctor.probes.overfit import batch_accuracy, memorised
from nandoctor.probes.training import Run, train
from nandoctor.report import plots

MIN_STEPS = 20
MAX_STEPS = 300
TRAINS_DROP = 0.25     # a cured run that has not memorised the batch yet must have taken 25% off its loss ...
BEATS_CONTROL = 0.1    # ... and that much more than twice what the untreated run took off (nothing, if it went non-finite)


def healthy_run(run: Run, accuracy: float | None = None) -> bool:
    """The default cure criterion: finite all along, not negative, and the batch memorised."""
    if run.error or run.nonfinite_step is not None or not run.losses:
        return False
    if min(run.losses) < -1e-6:
        return False
    return memorised(run.initial, run.tail(), accuracy)


def _clean(run: Run) -> bool:
    return not run.error and run.nonfinite_step is None and bool(run.losses) and min(run.losses) >= -1e-6


def trains(run: Run, accuracy: float | None = None) -> bool:
    """Memorised the batch, or clean and ``TRAINS_DROP`` off its loss: at any step count, a run that learns."""
    if healthy_run(run, accuracy):
        return True
    start, end = run.initial, run.tail()
    return _clean(run) and start is not None and end is not None and start > 0 and (start - end) / start >= TRAINS_DROP


def beats_control(after: Run, after_accuracy: float | None, before: Run, before_accuracy: float | None) -> bool:
    """The default cure criterion, on the same steps, batch and seed as the untreated control.

    Cured when the treated run is finite all along and never negative (a log-likelihood below zero is
    no cure), the control did not memorise the batch, and the treated run either memorised it or
    trains clearly: ``TRAINS_DROP`` off its loss, and ``BEATS_CONTROL`` more than twice the share the
    control took off. A treated run that is still learning when the steps run out counts, so the
    verdict does not depend on how many steps the budget allowed.
    """
    if not _clean(after) or healthy_run(before, before_accuracy):
        return False
    if healthy_run(after, after_accuracy):
        return True
    after_drop = relative_drop(after)
    before_drop = max(0.0, relative_drop(before) or 0.0) if _clean(before) else 0.0
    return after_drop is not None and after_drop >= TRAINS_DROP and after_drop >= 2 * before_drop + BEATS_CONTROL


def overfit_run(ctx: ProbeContext, patient, steps: int, *, lr: float | None = None,
                hooks: Callable[[nn.Module, object], None] | None = None) -> tuple[Run, float | None]:
    """The overfit probe's training on ``patient`` (a variant): fresh model, fixed batch."""
    model = patient.new_model()
    optimizer = patient.make_optimizer(model, lr=lr)
    if hooks:
        hooks(model, optimizer)
    batch = patient.fixed_batch()
    run = train(patient, model, optimizer, batch, steps, deadline=ctx.deadline)
    return run, (batch_accuracy(patient, model, batch) if not run.error else None)


def summary(run: Run, accuracy: float | None) -> dict:
    return {"initial_loss": run.initial, "final_loss": run.losses[-1] if run.losses else None,
            "tail_loss": run.tail(), "steps": run.steps, "nonfinite_step": run.nonfinite_step,
            "accuracy": accuracy, "error": run.error and run.error.get("message")}


def try_cure(ctx: ProbeContext, variant, tried: str, *, code: str,
             judge: Callable[[Run, float | None], bool] | None = None,
             before: Run | None = None, before_accuracy: float | None = None, lr: float | None = None,
             hooks=None) -> dict:
    """Re-run with ``variant`` and say whether it cured the probe; plot before/after together.

    ``judge(run, accuracy)`` is a diagnosis's own criterion (cured: the treated run passes it and the
    untreated one does not); without one, ``beats_control`` judges.
    """
    # a run cut short by a NaN or an exception says nothing about how long the cure should run
    cut_short = before is not None and before.stopped in ("nonfinite", "error")
    steps = before.steps if before is not None and before.steps >= MIN_STEPS and not cut_short else \
        ctx.steps(lo=MIN_STEPS, hi=MAX_STEPS, per_step=ctx.step_time * 1.1)
    steps = min(steps, ctx.steps(lo=MIN_STEPS, hi=MAX_STEPS, per_step=ctx.step_time * 1.1))
    if before is None:
        before, before_accuracy = overfit_run(ctx, ctx.patient, steps)
    after, after_accuracy = overfit_run(ctx, variant, steps, lr=lr, hooks=hooks)
    if judge is None:
        cured = beats_control(after, after_accuracy, before, before_accuracy)
    else:
        cured = judge(after, after_accuracy) and not judge(before, before_accuracy)
    record = {"tried": tried, "cured": bool(cured), "before": summary(before, before_accuracy),
              "after": summary(after, after_accuracy)}
    # the before/after plot is drawn by ``plot_treatment`` once the diagnosis has its final verdict
    # (some diagnoses judge the cure by more than the loss curve and update ``cured`` afterwards)
    record["_curves"] = {"as configured": before.losses, f"treated: {tried}": after.losses}
    return record


def cure_record(tried: str, cured: bool, before: Run, after: Run, *, before_accuracy: float | None = None,
                after_accuracy: float | None = None, **extra) -> dict:
    """The SPEC ``treatment`` record of a cure a diagnosis judged itself (by comparing the two runs),
    carrying both curves for ``plot_treatment``."""
    record = {"tried": tried, "cured": bool(cured), "before": summary(before, before_accuracy),
              "after": summary(after, after_accuracy), **extra}
    record["_curves"] = {"as configured": before.losses, f"treated: {tried}": after.losses}
    return record


def relative_drop(run: Run, share: float = 0.25) -> float | None:
    """1 - (mean of the last ``share`` of the losses) / first loss; None when the run broke or starts at <= 0."""
    start, end = run.initial, run.tail(share)
    if run.error or run.nonfinite_step is not None or start is None or end is None or start <= 0:
        return None
    return (start - end) / start


def plot_treatment(ctx: ProbeContext, code: str, record: dict) -> None:
    """Draw the before/after curves a ``try_cure`` record carries, titled with its final verdict."""
    curves = record.pop("_curves", None)
    path, rel = ctx.plot_path(f"treatment-{code}")
    if curves is None or path is None:
        return
    with plots.figure(path) as ax:
        plots.compare_curves(ax, curves, title=f"{code}: {'cured' if record.get('cured') else 'not cured'}")
    record["plot"] = rel


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)

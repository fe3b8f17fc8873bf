"""The ``schedule`` probe: the learning rate the configured scheduler sets, step by step, without training.

A copy of the user's scheduler is built over a throwaway optimizer (the user's optimizer class
and settings over one dummy parameter) and advanced exactly as the patient's own step advances
it: after every optimizer step (``interval: step``) or once per epoch of
``ceil(len(train) / batch_size)`` batches (``interval: epoch``), with gradient accumulation
counted. The LR of the first parameter group is recorded for every optimizer step of the
horizon: the first ``HORIZON_STEPS`` optimizer steps, or ``HORIZON_EPOCHS`` epochs when that is
longer. Nothing is trained; it takes milliseconds.

A scheduler that raises on a step (OneCycleLR stepped past its ``total_steps``) ends the trace,
and the step and message are recorded: the user's run would crash there. ReduceLROnPlateau
follows the loss and cannot be traced without training: skipped. When the LR sweep ran, its
divergence LR is copied beside the trace (the ``lr-schedule-collapse`` diagnosis reads both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nandoctor.patient import training_state
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.training import error_record
from nandoctor.records import Metrics, ProbeResult

HORIZON_STEPS = 1000      # optimizer steps traced ...
HORIZON_EPOCHS = 3        # ... or this many epochs, when that is longer ...
MAX_HORIZON_STEPS = 20000  # ... but never more than this
KEPT_POINTS = 200         # trajectory points kept in report.json (the full trace stays in memory)
EPOCH_MARKS = (1, 2, 5, 10, 30, 100)  # the LR at the end of these epochs is reported


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


def trace_schedule(patient, horizon: int) -> tuple[list[float], dict | None]:
    """The LR each of the first ``horizon`` optimizer steps would use, and the error that ended the trace early."""
    optimizer = patient.make_optimizer([nn.Parameter(torch.zeros(1))])
    state = training_state(optimizer)
    lrs, ended = [lr_of(optimizer)], None
    while len(lrs) < horizon:
        try:
            for k in range(patient.accumulate):  # the batches of one optimizer step, as Patient.step counts them
                state.batches += 1
                stepped = k == patient.accumulate - 1
                state.optimizer_steps += stepped
                patient.advance_schedule(state, 0.0, stepped=stepped)
        except Exception as exc:  # the user's scheduler (a lambda, say) raised
            ended = {**error_record(exc), "step": len(lrs)}
            break
        if state.schedule_ended is not None:  # OneCycleLR past its total_steps: the user's run crashes here
            ended = {"type": "ValueError", "message": state.schedule_ended["message"], "step": len(lrs)}
            break
        lrs.append(lr_of(optimizer))
    return lrs, ended


def thin(lrs: list[float], points: int = KEPT_POINTS) -> list[list[float]]:
    """``[step, lr]`` pairs: every step when few, else evenly spaced ones (first and last kept)."""
    if len(lrs) <= points:
        return [[i, v] for i, v in enumerate(lrs)]
    picks = sorted({round(i * (len(lrs) - 1) / (points - 1)) for i in range(points)})
    return [[i, lrs[i]] for i in picks]


@dataclass
class ScheduleMetrics(Metrics):
    scheduler: str | None = None
    interval: str | None = None             # step | epoch
    accumulate: int | None = None
    batches_per_epoch: int | None = None
    steps_per_epoch: int | None = None      # optimizer steps
    horizon: int | None = None              # optimizer steps traced
    traced_steps: int | None = None
    configured_lr: float | None = None
    initial_lr: float | None = None
    peak_lr: float | None = None
    peak_step: int | None = None
    min_lr_after_peak: float | None = None
    min_step_after_peak: int | None = None
    final_lr: float | None = None
    lr_at_epoch_end: dict | None = None
    ended: dict | None = None               # the error that ended the trace early (OneCycleLR past total_steps)
    divergence_lr: float | None = None      # the LR sweep's, when it ran
    trajectory: list | None = None          # [step, lr] pairs


class Schedule(Probe):
    metrics_type = ScheduleMetrics
    name = "schedule"
    title = "Trace the LR schedule"
    order = 42            # after the LR sweep, whose divergence point it copies
    # it trains nothing (a copy of the scheduler stepped on a throwaway optimizer): not planned in steps

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        # 1. only a configured scheduler that does not depend on the loss can be traced
        if patient.scheduler is None:
            return self.result(status="skipped", reason="no scheduler is configured")
        optimizer_steps_per_epoch = math.ceil(patient.epoch_batches / patient.accumulate)
        horizon = min(MAX_HORIZON_STEPS, max(HORIZON_STEPS, HORIZON_EPOCHS * optimizer_steps_per_epoch))
        probe_opt = patient.make_optimizer([nn.Parameter(torch.zeros(1))])
        if isinstance(training_state(probe_opt).scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return self.result(status="skipped", reason="ReduceLROnPlateau follows the loss: it cannot be traced "
                                                        "without training")
        # 2. the trace
        lrs, ended = trace_schedule(patient, horizon)
        peak = max(range(len(lrs)), key=lambda i: lrs[i])
        low = min(range(peak, len(lrs)), key=lambda i: lrs[i])
        sweep = ctx.evidence.ok("lr_sweep")
        metrics = {"scheduler": patient.scheduler_name, "interval": patient.scheduler_interval,
                   "accumulate": patient.accumulate, "batches_per_epoch": patient.epoch_batches,
                   "steps_per_epoch": optimizer_steps_per_epoch, "horizon": horizon, "traced_steps": len(lrs),
                   "configured_lr": patient.lr, "initial_lr": lrs[0], "peak_lr": lrs[peak], "peak_step": peak,
                   "min_lr_after_peak": lrs[low], "min_step_after_peak": low, "final_lr": lrs[-1],
                   "lr_at_epoch_end": {str(e): lrs[e * optimizer_steps_per_epoch] for e in EPOCH_MARKS
                                       if e * optimizer_steps_per_epoch < len(lrs)},
                   "ended": ended, "divergence_lr": sweep.metrics.get("divergence_lr") if sweep is not None else None,
                   "trajectory": thin(lrs)}
        # the plot (the LR per optimizer step) is named here, drawn by the report (report.figures)
        path, rel = ctx.plot_path("schedule")
        return self.result(metrics=metrics, plots=[rel] if path is not None else [], data={"lrs": lrs})

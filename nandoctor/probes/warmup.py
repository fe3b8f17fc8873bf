"""The warm-up: a few real steps to measure the step time the budget planner needs.

It is also the first place the user's code runs end to end, so a crash in the
forward pass, the loss or the step is caught here with the user's message and line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.training import error_record, train
from nandoctor.records import Metrics, ProbeResult

WARMUP_STEPS = 2   # untimed: first-call overheads (allocator, lazy init)
TIMED_STEPS = 5    # timed: the step time is the second fastest of them


@dataclass
class WarmupMetrics(Metrics):
    step_seconds: float | None = None       # the step time the planner sizes every probe with
    forward_seconds: float | None = None    # one forward pass and loss, no gradient
    batch_load_seconds: float | None = None
    losses: list | None = None


class Warmup(Probe):
    metrics_type = WarmupMetrics
    name = "warmup"
    title = "Measure the step time"
    order = 0

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        # 1. a batch and a fresh model
        t0 = time.perf_counter()
        try:
            batch = patient.fixed_batch()
        except Exception as exc:
            return self.result(status="failed", error={**error_record(exc), "phase": "loading a batch"})
        load_time = time.perf_counter() - t0
        model = patient.new_model()
        optimizer = patient.make_optimizer(model)
        # 2. untimed steps, then timed ones
        first = train(patient, model, optimizer, batch, WARMUP_STEPS, stop_on_nonfinite=False)
        if first.error:
            first.error["phase"] = "training step"
            return self.result(status="failed", error=first.error,
                               metrics=WarmupMetrics(batch_load_seconds=load_time))
        durations: list[float] = [time.perf_counter()]
        timed = train(patient, model, optimizer, batch, TIMED_STEPS, stop_on_nonfinite=False,
                      on_step=lambda i, v: durations.append(time.perf_counter()))
        # the second fastest step, not the mean: a step slowed by another process must not resize the battery
        # (a machine that stays slow is seen by the planner as the probes run, and the rest is re-planned)
        gaps = sorted(b - a for a, b in zip(durations, durations[1:]))
        step_time = gaps[min(1, len(gaps) - 1)] if gaps else timed.seconds / max(1, timed.steps)
        # 3. forward-only time (for probes that only evaluate)
        t1 = time.perf_counter()
        fwd_time = None
        if patient.train_step is None:
            try:
                with torch.no_grad():
                    patient.compute_loss(model, batch)
                fwd_time = time.perf_counter() - t1
            except Exception:
                fwd_time = None
        return self.result(metrics=WarmupMetrics(step_seconds=step_time, forward_seconds=fwd_time,
                                                 batch_load_seconds=load_time, losses=first.losses + timed.losses))

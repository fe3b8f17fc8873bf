"""The warm-up: a few real steps to measure the step time the budget planner needs.

It is also the first place the user's code runs end to end, so a crash in the
forward pass, the loss or the step is caught here with the user's message and line.
"""

from __future__ import annotations

import time

import torch

from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.training import error_record, train
from nandoctor.records import ProbeResult

WARMUP_STEPS = 2   # untimed: first-call overheads (allocator, lazy init)
TIMED_STEPS = 3    # timed: the step time is their mean


class Warmup(Probe):
    name = "warmup"
    title = "Measure the step time"
    order = 0
    weight = 0.0

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
                               metrics={"batch_load_seconds": load_time})
        timed = train(patient, model, optimizer, batch, TIMED_STEPS, stop_on_nonfinite=False)
        step_time = timed.seconds / max(1, timed.steps)
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
        return self.result(metrics={"step_seconds": step_time, "forward_seconds": fwd_time,
                                    "batch_load_seconds": load_time,
                                    "losses": first.losses + timed.losses})

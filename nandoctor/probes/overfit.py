"""Overfit one batch: train a fresh model on one fixed batch and watch it memorise.

A healthy set-up drives the loss on a single batch far down within a few hundred
steps. Failing to do so (or going negative, or non-finite) is the strongest single
signal that something in the model/loss/optimizer wiring is broken. The probe
records the loss each step, per-layer gradient norms, activation statistics and
where the first non-finite value was born.
"""

from __future__ import annotations

import torch

from nandoctor.patient import split_batch
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.instrument import Recorder
from nandoctor.probes.training import train
from nandoctor.records import ProbeResult
from nandoctor.report import plots

MIN_STEPS = 30    # below this the verdict is too noisy to trust
MAX_STEPS = 300   # a healthy small model memorises a batch well before this
MEMORISED_DROP = 0.9      # loss fell by 90% of its initial value ...
MEMORISED_ACCURACY = 0.95  # ... or (classification) the batch is classified right


def batch_accuracy(patient, model, batch) -> float | None:
    """Share of the batch classified right, for ``[N, C]`` outputs with ``[N]`` integer targets; else None."""
    if patient.train_step is not None:
        try:
            inputs, targets = split_batch(batch)
        except Exception:
            return None
    else:
        inputs, targets = split_batch(batch)
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.dim() != 1:
        return None
    was_training = model.training
    try:
        with torch.no_grad():
            out = model(inputs)
    except Exception:
        return None
    finally:
        model.train(was_training)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]  # (logits, extras...): the first output is the one scored
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != targets.shape[0] or out.shape[1] < 2:
        return None
    return float((out.argmax(dim=1) == targets).float().mean())


def memorised(initial: float | None, tail: float | None, accuracy: float | None) -> bool:
    if accuracy is not None and accuracy >= MEMORISED_ACCURACY:
        return True
    if initial is None or tail is None:
        return False
    if initial > 0:
        return tail <= (1 - MEMORISED_DROP) * initial
    return False


class Overfit(Probe):
    name = "overfit"
    title = "Overfit one batch"
    order = 20
    weight = 2.0

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        # 1. a fresh model, the user's optimizer and LR, one fixed batch
        model = patient.new_model()
        optimizer = patient.make_optimizer(model)
        batch = patient.fixed_batch()
        steps = ctx.steps(lo=MIN_STEPS, hi=MAX_STEPS, per_step=ctx.step_time * 1.15)
        ctx.progress(0, steps)
        # 2. train with the recorder attached
        rec = Recorder(model)
        rec.attach_optimizer(optimizer)
        try:
            run = train(patient, model, optimizer, batch, steps, deadline=ctx.deadline,
                        progress=lambda n: ctx.progress(n, None))
        finally:
            rec.detach()
        # 3. did it memorise?
        acc = batch_accuracy(patient, model, batch)
        metrics = {**run.to_metrics(), "accuracy": acc, "batch_size": patient.batch_size,
                   "lr": patient.lr, "memorised": memorised(run.initial, run.tail(), acc),
                   **{k: v for k, v in rec.summary().items() if k in ("nonfinite_forward", "nonfinite_grad",
                                                                      "layers_without_grad")}}
        # 4. plot loss and gradient norms side by side
        path, rel = ctx.plot_path("overfit")
        if path is not None and run.losses:
            with plots.figure(path, ncols=2) as (ax1, ax2):
                plots.loss_curve(ax1, run.losses, title=f"overfit one batch (lr={patient.lr:g})"
                                 if patient.lr else "overfit one batch")
                plots.grad_norm_lines(ax2, rec.grad_norms)
        result = self.result(status="failed" if run.error else "ok", metrics=metrics,
                             data={"run": run, "recorder": rec}, plots=[rel] if path is not None and run.losses else [],
                             error=run.error)
        return result

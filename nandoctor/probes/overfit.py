"""Overfit one batch: train a fresh model on one fixed batch and watch it memorise.

A healthy set-up drives the loss on a single batch far down within a few hundred
steps. Failing to do so (or going negative, or non-finite) is the strongest single
signal that something in the model/loss/optimizer wiring is broken. The probe
records the loss and the per-layer gradient norms each step, activation statistics on
about 40 of its steps (``activation_every``: the cost of an instrumented step falls with
it), and where the first non-finite value was born.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nandoctor.patient import split_batch
from nandoctor.planning import StepNeed
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.instrument import Recorder
from nandoctor.probes.training import train
from nandoctor.records import Metrics, ProbeResult

MIN_STEPS = 30    # below this the verdict is too noisy to trust
MAX_STEPS = 300   # a healthy small model memorises a batch well before this
INSTRUMENT_COST = 1.15  # an instrumented step against a bare one (benchmarks/bench_instrument.py)
ACTIVATION_SAMPLES = 40   # steps whose activations are measured: enough for the dead/saturated windows (20%)
MEMORISED_DROP = 0.9      # loss fell by 90% of its initial value ...
MEMORISED_ACCURACY = 0.95  # ... or (classification) the batch is classified right


def probe_recorder(model, steps: int) -> Recorder:
    """The Recorder as this probe attaches it to a run of ``steps``: activations on about ``ACTIVATION_SAMPLES``
    of the steps, without their mean and std (no diagnosis reads them here; the dead and pinned shares, the
    forward order and the non-finite check are what they read)."""
    return Recorder(model, every=activation_every(steps), moments=False)


def activation_every(steps: int) -> int:
    """The recorder's ``every`` for a run of ``steps``: activations on about ``ACTIVATION_SAMPLES`` of its
    steps (all of them in a short run); gradients and the non-finite check stay on every step."""
    return max(1, steps // ACTIVATION_SAMPLES)


BINARY_THRESHOLDS = {"BCEWithLogitsLoss": 0.0,   # scores: positive above 0
                     "BCELoss": 0.5, "MSELoss": 0.5, "L1Loss": 0.5, "SmoothL1Loss": 0.5, "HuberLoss": 0.5}


def _binary(targets: torch.Tensor) -> bool:
    return targets.numel() > 0 and bool(((targets == 0) | (targets == 1)).all())


def balanced_accuracy(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    """The mean of the share of positives and of negatives classified right: a mask that is 92% background
    scores 0.5 when all of it is called background, not 0.92."""
    shares = [float((predicted[cls] == cls_value).float().mean())
              for cls, cls_value in ((actual, True), (~actual, False)) if bool(cls.any())]
    return sum(shares) / len(shares)


def scored_output(model, inputs, eval_mode: bool = False):
    """The model's output on ``inputs`` without a gradient (in eval mode when asked; the mode put back after),
    its first element for ``(logits, extras...)``; None when the forward pass raises."""
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        with torch.no_grad():
            out = model(inputs)
    except Exception:
        return None
    finally:
        model.train(was_training)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]  # (logits, extras...): the first output is the one scored
    return out


def batch_accuracy(patient, model, batch) -> float | None:
    """Share of the batch classified right, for ``[N, C]`` outputs with ``[N]`` integer targets (and their
    ``[N, T, V]`` / ``[N, C, H, W]`` kin); for 0/1 float targets of the output's shape (masks, multi-label)
    under a binary loss, the balanced accuracy of its elements (``balanced_accuracy``); else None."""
    if patient.train_step is not None:
        try:
            inputs, targets = split_batch(batch)
        except Exception:
            return None
    else:
        inputs, targets = split_batch(batch)
    if not isinstance(targets, torch.Tensor) or targets.dim() < 1:
        return None
    threshold = BINARY_THRESHOLDS.get(patient.loss_name) if targets.is_floating_point() else None
    if targets.is_floating_point() and (threshold is None or not _binary(targets)):
        return None
    out = scored_output(model, inputs)
    if threshold is not None:   # 0/1 masks or multi-label targets: every element is a binary decision
        if not isinstance(out, torch.Tensor) or out.shape != targets.shape:
            return None
        return balanced_accuracy(out > threshold, targets > 0.5)
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        return None
    if out.dim() == targets.dim() + 1 and out.shape[:-1] == targets.shape and out.shape[-1] >= 2 and out.dim() == 3:
        predicted = out.argmax(dim=-1)      # [N, T, V] tokens against [N, T] labels (language models, taggers)
    elif out.dim() == targets.dim() + 1 and out.shape[0] == targets.shape[0] and out.shape[2:] == targets.shape[1:] \
            and out.shape[1] >= 2:
        predicted = out.argmax(dim=1)       # [N, C, ...] scores against [N, ...] labels (CrossEntropyLoss's layout)
    elif out.dim() == 2 and targets.dim() == 1 and out.shape[0] == targets.numel() and out.shape[1] >= 2:
        predicted = out.argmax(dim=1)
    else:
        return None
    scored = targets >= 0  # ignore_index labels (-100, padding) are not scored
    if not bool(scored.any()):
        return None
    return float((predicted == targets)[scored].float().mean())


def late_drop(losses: list[float]) -> float | None:
    """How far the loss still fell over the second half of a run, as a share of its start: a run that is still
    learning when it stops (a large model, a careful LR) is slow, not broken."""
    finite = [x for x in losses if math.isfinite(x)]
    if len(finite) < 8 or not finite[0]:
        return None
    half, k = len(finite) // 2, max(2, len(finite) // 10)
    mid = sum(finite[half - k // 2: half - k // 2 + k]) / k
    end = sum(finite[-k:]) / k
    return (mid - end) / abs(finite[0])


def memorised(initial: float | None, tail: float | None, accuracy: float | None) -> bool:
    if accuracy is not None and accuracy >= MEMORISED_ACCURACY:
        return True
    if initial is None or tail is None:
        return False
    if initial > 0:
        return tail <= (1 - MEMORISED_DROP) * initial
    return False


@dataclass
class OverfitMetrics(Metrics):
    steps: int | None = None              # steps run (the planned ones unless a NaN or an error stopped it)
    planned_steps: int | None = None
    initial_loss: float | None = None
    final_loss: float | None = None
    min_loss: float | None = None
    tail_loss: float | None = None        # mean of the last tenth of the finite losses
    late_drop: float | None = None        # how far the loss still fell over the second half, as a share of its start
    stopped: str | None = None            # done | nonfinite | deadline | error
    nonfinite_step: int | None = None
    accuracy: float | None = None         # share of the batch classified right at the end (classification)
    memorised: bool | None = None
    batch_size: int | None = None
    lr: float | None = None
    nonfinite_forward: dict | None = None  # the first module whose output turned non-finite
    nonfinite_grad: dict | None = None     # the first parameter whose gradient did
    layers_without_grad: list | None = None
    summary: str | None = None             # one line for the console and the letter


def overfit_summary(m: OverfitMetrics) -> str | None:
    """Whether the batch was memorised, in numbers (the judging is cannot-overfit-batch's); a run the plan held
    below the probe's ideal says what would give it more."""
    if m.initial_loss is None or m.tail_loss is None or m.nonfinite_step is not None:
        return None
    loss = f"loss {m.initial_loss:.4g} -> {m.tail_loss:.4g} in {m.steps} steps"
    if m.memorised:
        return f"memorised the batch: {loss}"
    late = f", {m.late_drop:.0%} of it off in the second half" if m.late_drop is not None and m.late_drop > 0 else ""
    short = (f"; the plan gave it {m.planned_steps} of its {MAX_STEPS} steps at this machine's speed (a larger "
             f"--budget gives it more)" if m.planned_steps and m.planned_steps < MAX_STEPS else "")
    return f"not memorised: {loss}{late}{short}"


class Overfit(Probe):
    metrics_type = OverfitMetrics
    name = "overfit"
    title = "Overfit one batch"
    order = 20
    steps = StepNeed(min=MIN_STEPS, ideal=MAX_STEPS, cost=INSTRUMENT_COST)

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        # 1. a fresh model, the user's optimizer and LR, one fixed batch
        model = patient.new_model()
        optimizer = patient.make_optimizer(model)
        batch = patient.fixed_batch()
        steps = ctx.steps(lo=MIN_STEPS, hi=MAX_STEPS, per_step=ctx.step_time * INSTRUMENT_COST)
        ctx.progress(0, steps)
        # 2. train with the recorder attached
        rec = probe_recorder(model, steps)
        rec.attach_optimizer(optimizer)
        try:
            run = train(patient, model, optimizer, batch, steps, deadline=ctx.deadline,
                        progress=lambda n: ctx.progress(n, None))
        finally:
            rec.detach()
        ctx.require(run)
        # 3. did it memorise?
        acc = batch_accuracy(patient, model, batch)
        summary = rec.summary()
        metrics = OverfitMetrics(**run.to_metrics(), accuracy=acc, batch_size=patient.batch_size, lr=patient.lr,
                                 memorised=memorised(run.initial, run.tail(), acc), planned_steps=steps,
                                 late_drop=late_drop(run.losses), nonfinite_forward=summary.get("nonfinite_forward"),
                                 nonfinite_grad=summary.get("nonfinite_grad"),
                                 layers_without_grad=summary.get("layers_without_grad"))
        metrics.summary = overfit_summary(metrics)
        # 4. the plot (loss and gradient norms), named here and drawn by the report from ``data`` (report.figures)
        path, rel = ctx.plot_path("overfit")
        result = self.result(status="failed" if run.error else "ok", metrics=metrics,
                             data={"run": run, "recorder": rec}, plots=[rel] if path is not None and run.losses else [],
                             error=run.error)
        return result

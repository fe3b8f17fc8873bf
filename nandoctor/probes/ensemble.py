"""Train several models of one architecture at once: a batched ensemble (``torch.func``), or one by one.

``train_many`` stacks the models' parameters (``stack_module_state``), runs them as one
``vmap`` over ``functional_call`` and steps one optimizer over the stacked tensors. For
element-wise optimizers (SGD, Adam, ...) that is exactly K independent trainings, in
one pass instead of K. It falls back to training the models one after another when the
patient has its own ``train_step``, an optimizer that is not element-wise, BatchNorm
(its running statistics are updated in place), a training set-up that ``Patient.step``
applies (precision, scheduler, clipping, accumulation), or when ``vmap`` refuses the model.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import torch
from torch import nn

from nandoctor.patient import clone_module, split_batch
from nandoctor.probes.training import Run, train

# optimizers whose update of each element depends only on that element's history
ELEMENTWISE_OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta")


def can_batch(patient, model: nn.Module) -> str | None:
    """None when the models can train as one batched ensemble, else the reason they cannot."""
    if patient.train_step is not None:
        return "the set-up has its own train_step"
    if patient.optimizer_cls.__name__ not in ELEMENTWISE_OPTIMIZERS:
        return f"{patient.optimizer_cls.__name__} is not an element-wise optimizer"
    if any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules()):
        return "BatchNorm updates its running statistics in place"
    if patient.precision != "fp32" or patient.scheduler is not None or patient.grad_clip is not None \
            or patient.accumulate > 1:
        # autocast, the scheduler, clipping (a norm over each model's own gradients) and accumulation are
        # applied by Patient.step, model by model
        return "the training set-up (precision, scheduler, clipping or accumulation) is applied per model"
    return None


def train_many(patient, models: list[nn.Module], batches: list[Any], steps: int, *,
               deadline: float | None = None, batched: bool = True) -> tuple[list[Run], str]:
    """Train each model for ``steps`` steps cycling over ``batches``; returns (runs, "ensemble"|"sequential")."""
    reason = can_batch(patient, models[0]) if batched else "not asked to batch"
    if reason is None:
        try:
            return train_ensemble(patient, models, batches, steps, deadline=deadline), "ensemble"
        except Exception:  # vmap refused the model (data-dependent control flow, in-place ops, ...)
            pass
    runs = []
    for model in models:  # the same steps for each: the deadline is a stop, not a share
        optimizer = patient.make_optimizer(model)
        runs.append(train(patient, model, optimizer, BatchList(batches), steps, deadline=deadline))
    return runs, "sequential"


class BatchList:
    """A few prepared batches as a stream for ``train`` (a bare list would be taken for one batch)."""

    def __init__(self, batches: list[Any]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _cycled(batches: list[Any], steps: int) -> list[Any]:
    return [b for b, _ in zip(itertools.cycle(batches), range(steps))]


def train_ensemble(patient, models: list[nn.Module], batches: list[Any], steps: int, *,
                   deadline: float | None = None) -> list[Run]:
    """The batched path: one forward/backward per step for all K models; they end trained, like the one-by-one path."""
    from torch.func import functional_call, stack_module_state

    # 1. stacked parameters [K, ...] as fresh leaf tensors, a stateless copy of the architecture
    params, buffers = stack_module_state(models)
    base = clone_module(models[0]).to("meta")

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    forward = torch.vmap(one, in_dims=(0, 0, None), randomness="different")
    optimizer = patient.make_optimizer(list(params.values()))
    runs = [Run() for _ in models]
    alive = [True] * len(models)
    start = time.perf_counter()
    # 2. K trainings in lockstep: the summed loss gives each model its own gradient
    for i, batch in enumerate(_cycled(batches, steps)):
        inputs, targets = split_batch(batch)
        optimizer.zero_grad(set_to_none=True)
        outputs = forward(params, buffers, inputs)                         # [K, N, ...]
        losses = torch.stack([patient.loss_fn(outputs[k], targets) for k in range(len(models))])  # [K]
        losses.sum().backward()
        optimizer.step()
        for k, value in enumerate(losses.detach().tolist()):
            if alive[k]:
                runs[k].losses.append(value)
                if not math.isfinite(value):  # like the sequential loop: stop recording at the first non-finite loss
                    alive[k], runs[k].stopped = False, "nonfinite"
        if not any(alive):
            break
        if deadline is not None and time.perf_counter() > deadline and i >= 2:
            for k in range(len(models)):
                runs[k].stopped = "deadline" if alive[k] else runs[k].stopped
            break
    elapsed = time.perf_counter() - start
    # 3. hand the trained weights back to the models, as the one-by-one path leaves them
    with torch.no_grad():
        for k, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][k])
    for run in runs:
        run.seconds = elapsed
    return runs

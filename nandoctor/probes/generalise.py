"""Memorise or generalise: fit a small pool of training samples, then score samples it never saw.

A set-up whose model fits the pool while the loss on unseen samples does not move has learnt
nothing that carries over: its labels do not depend on its inputs (targets shuffled apart from
the inputs, a misaligned join), or the unseen samples come from another distribution. The
overfit probe cannot see this (any model memorises one batch, random labels or not).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import torch
from torch.utils.data import DataLoader, Subset

from nandoctor.patient import split_batch, to_device
from nandoctor.planning import StepNeed
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.ensemble import BatchList
from nandoctor.probes.training import train
from nandoctor.records import Metrics, ProbeResult

POOL = 256           # training samples the model is fitted on (half the set when it is smaller)
HELD_OUT = 256       # unseen samples it is scored on (the val set when the config has one)
MIN_SAMPLES = 64     # below this many training samples the split says nothing
MIN_STEPS, MAX_STEPS = 60, 240   # a pool of 256 needs a few epochs before its fall says anything
TRAIN_SHARE = 0.8    # without a plan: share of the probe's time for the training; the rest scores before and after
SCORE_PASSES = 8     # the four scoring passes (pool and held-out, before and after), in training-step equivalents


def score(patient, model: torch.nn.Module, dataset) -> float:
    """Mean loss over ``dataset`` in eval mode (batches of the user's size, weighted by their length)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=patient.batch_size, shuffle=False,
                                    collate_fn=patient.collate_fn):
                batch = to_device(batch, patient.device)
                _, loss = patient.compute_loss(model, batch)
                size = len(split_batch(batch)[1])
                total, count = total + float(loss) * size, count + size
    finally:
        model.train(was_training)
    return total / max(1, count)


@dataclass
class GeneraliseMetrics(Metrics):
    pool_samples: int | None = None
    held_out_samples: int | None = None
    held_out_from: str | None = None
    steps: int | None = None
    epochs_over_pool: float | None = None
    pool_loss_before: float | None = None
    pool_loss_after: float | None = None
    held_out_loss_before: float | None = None
    held_out_loss_after: float | None = None
    finite: bool | None = None


class Generalise(Probe):
    metrics_type = GeneraliseMetrics
    name = "generalise"
    title = "Fit a pool of samples, score unseen ones"
    order = 58
    needs_pairs = True
    priority = 60
    steps = StepNeed(min=MIN_STEPS, ideal=MAX_STEPS, cost=1.1, fixed=SCORE_PASSES)

    def run(self, ctx: ProbeContext) -> ProbeResult:
        p = ctx.patient
        if p.train_step is not None:
            return self.result(status="skipped", reason="a custom train_step: scoring needs the default loss call")
        # 1. the pool and the unseen samples, drawn with the patient's seed
        n = len(p.train_data)
        gen = torch.Generator().manual_seed(p.seed + 17)
        perm = torch.randperm(n, generator=gen).tolist()
        if p.val_data is not None and len(p.val_data) >= MIN_SAMPLES // 2:
            pool_idx = perm[:POOL]
            held = Subset(p.val_data, torch.randperm(len(p.val_data), generator=gen)[:HELD_OUT].tolist())
            source = "the val set"
        elif n >= MIN_SAMPLES:
            k = min(POOL, n // 2)
            pool_idx, held = perm[:k], Subset(p.train_data, perm[k:k + min(HELD_OUT, n - k)])
            source = "training samples left out of the pool"
        else:
            return self.result(status="skipped", reason=f"only {n} training samples (needs {MIN_SAMPLES})")
        pool = Subset(p.train_data, pool_idx)
        # 2. scores before, training on the pool, scores after
        model = p.new_model()
        optimizer = p.make_optimizer(model)
        try:
            before_pool, before_held = score(p, model, pool), score(p, model, held)
        except Exception as exc:  # dirty samples or labels: the data scan and the crash findings say which
            return self.result(status="skipped", reason=f"scoring the samples raised {type(exc).__name__}")
        batches = [to_device(b, p.device) for b in
                   DataLoader(pool, batch_size=p.batch_size, shuffle=True, generator=gen, drop_last=len(pool) > p.batch_size,
                              collate_fn=p.collate_fn)]
        steps = ctx.steps(share=TRAIN_SHARE, lo=MIN_STEPS, hi=MAX_STEPS)
        ctx.progress(0, steps)
        run = train(p, model, optimizer, BatchList(batches), steps, deadline=ctx.deadline,
                    progress=lambda k: ctx.progress(k, None))
        ctx.require(run)
        if run.error:
            return self.result(status="failed", error=run.error)
        try:
            after_pool, after_held = score(p, model, pool), score(p, model, held)
        except Exception as exc:
            return self.result(status="skipped", reason=f"scoring the samples raised {type(exc).__name__}")
        metrics = {"pool_samples": len(pool), "held_out_samples": len(held), "held_out_from": source,
                   "steps": run.steps, "epochs_over_pool": run.steps * p.batch_size / max(1, len(pool)),
                   "pool_loss_before": before_pool, "pool_loss_after": after_pool,
                   "held_out_loss_before": before_held, "held_out_loss_after": after_held,
                   "finite": all(math.isfinite(v) for v in (before_pool, after_pool, before_held, after_held))}
        return self.result(metrics=metrics)

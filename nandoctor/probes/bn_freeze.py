"""The ``bn_freeze`` probe: BatchNorm at the user's batch size, against frozen BatchNorm and a larger batch.

Variants, each a fresh model trained for the same steps on the user's data stream:
- ``as configured``: the user's batch size, BatchNorm in training mode;
- ``frozen BN``: the same batch size, every BatchNorm layer in eval mode for good (running
  statistics used, not updated) and its affine weights frozen;
- ``batch N``: a larger batch (only when the user's is small), BatchNorm training.
Each is then scored in eval mode on the same held-out batch. The probe also measures how
many values each BatchNorm layer averages per channel at the user's batch size, and, for class
labels, how mixed the batches of the user's stream are against a random batch of the same size
(class-sorted rows loaded with ``shuffle: false`` give batches of one class, whose statistics
BatchNorm normalises the class away with). It is skipped when the model has no BatchNorm.
"""

from __future__ import annotations

from dataclasses import dataclass
import types

import torch
from torch import nn

from nandoctor import numeric
from nandoctor.patient import clone_module, split_batch
from nandoctor.planning import StepNeed
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.training import Run, train
from nandoctor.records import Metrics, ProbeResult

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
LARGER_BATCH = 32      # the comparison batch size, tried when the user's is below it
EVAL_BATCH = 128       # held-out samples scored in eval mode after training
HELD_OUT_OFFSET = 97   # the held-out batch's draw (``Patient.fixed_batch``), the same for every variant
MIN_STEPS = 15         # per variant
MAX_STEPS = 100        # per variant
WATCHED_BATCHES = 16   # stream batches whose class labels are counted


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, BN_TYPES) for m in model.modules())


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen BatchNorm: it stays in eval mode whatever the training loop asks."""
    self.training = False
    return self


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm in eval mode for good (running statistics, not updated) with frozen affine weights."""
    for m in model.modules():
        if isinstance(m, BN_TYPES):
            m.train = types.MethodType(_stay_eval, m)
            m.training = False
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    return model


def frozen_factory(patient):
    factory = patient.model_factory

    def build() -> nn.Module:
        return freeze_batchnorm(factory())
    return build


def values_per_channel(patient, model: nn.Module, batch) -> dict[str, int]:
    """BatchNorm layer -> values its statistics average per channel for one batch (N x spatial size)."""
    seen: dict[str, int] = {}
    throwaway = clone_module(model)  # a train-mode forward updates running statistics
    for name, m in throwaway.named_modules():
        if isinstance(m, BN_TYPES):
            def hook(mod, inputs, name=name):
                x = inputs[0]
                seen[name] = int(x.numel() // max(1, x.shape[1])) if x.dim() >= 2 else int(x.numel())
            m.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            patient.compute_loss(throwaway, batch)
    except Exception:  # a batch of one in BatchNorm1d raises; the pre-hook ran before
        pass
    return seen


def class_mix(batch) -> tuple[float, int] | None:
    """(the share of the batch's most common class, the classes it holds) for a batch of class labels
    (integer targets of shape [N]); None for any other target."""
    try:
        _, targets = split_batch(batch)
    except Exception:
        return None
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.numel() < 2 \
            or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        return None
    _, counts = torch.unique(targets.detach().cpu(), return_counts=True)
    return float(counts.max()) / targets.numel(), int(counts.numel())


class Watched:
    """The user's loader, re-iterable, counting the classes of the first ``WATCHED_BATCHES`` batches."""

    def __init__(self, loader):
        self.loader = loader
        self.mixes: list[tuple[float, int]] = []
        self.seen = 0

    def __iter__(self):
        for batch in self.loader:
            if self.seen < WATCHED_BATCHES:
                self.seen += 1
                mix = class_mix(batch)
                if mix is not None:
                    self.mixes.append(mix)
            yield batch


def composition(watched: Watched | None, random_batch) -> dict:
    """How mixed the stream's batches are against a random batch of the same size (class labels only)."""
    mine = class_mix(random_batch)
    if watched is None or not watched.mixes or mine is None:
        return {"stream_batches_watched": watched.seen if watched else 0, "stream_majority_share": None,
                "stream_classes_per_batch": None, "random_majority_share": mine[0] if mine else None,
                "random_classes_per_batch": mine[1] if mine else None}
    return {"stream_batches_watched": len(watched.mixes),
            "stream_majority_share": round(numeric.median([m[0] for m in watched.mixes]), 4),
            "stream_classes_per_batch": numeric.median([m[1] for m in watched.mixes]),
            "random_majority_share": round(mine[0], 4), "random_classes_per_batch": mine[1]}


def eval_loss(patient, model: nn.Module, batch, train_mode: bool = False) -> float | None:
    """The loss of ``batch`` in eval (or train) mode, on a copy: scoring never changes the model."""
    scored = clone_module(model)
    scored.train(train_mode)
    try:
        with torch.no_grad():
            _, loss = patient.compute_loss(scored, batch)
        return float(loss)
    except Exception:
        return None


@dataclass
class BatchNormMetrics(Metrics):
    batch_size: int | None = None
    larger_batch: int | None = None
    values_per_channel: dict | None = None   # per BatchNorm layer: values each channel's statistics average over
    min_values_per_channel: int | None = None
    bn_layers: int | None = None
    steps: int | None = None
    eval_batch: int | None = None
    variants: dict | None = None             # as configured / frozen BN / a larger batch: run summary, eval loss
    initial_eval_loss: float | None = None
    stream_batches_watched: int | None = None  # the user's stream batches whose class labels were counted
    stream_majority_share: float | None = None  # their median share of the most common class
    stream_classes_per_batch: float | None = None
    random_majority_share: float | None = None  # the same in a random batch of the user's size
    random_classes_per_batch: int | None = None


class BatchNormFreeze(Probe):
    metrics_type = BatchNormMetrics
    name = "bn_freeze"
    title = "BatchNorm: as configured vs frozen vs a larger batch"
    order = 45
    needs_pairs = True
    priority = 50
    stream_cost = 1.2   # a streamed batch against the fixed one the warm-up timed

    def need(self, ctx: ProbeContext) -> StepNeed | None:
        """Three short trainings (as configured, frozen BN, a larger batch); nothing without BatchNorm."""
        try:
            if not has_batchnorm(ctx.patient.new_model()):
                return None
        except Exception:
            return None
        # the larger batch costs up to its size ratio a step (less for small models, whose steps are overhead)
        bigger = min(4.0, LARGER_BATCH / max(1, ctx.patient.batch_size)) if ctx.patient.batch_size < LARGER_BATCH else 0.0
        return StepNeed(min=MIN_STEPS, ideal=MAX_STEPS, cost=self.stream_cost * (2 + bigger), fixed=4.0)

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        # 1. skip without BatchNorm; measure the values per channel at the user's batch size
        probe_model = patient.new_model()
        if not has_batchnorm(probe_model):
            return self.result(status="skipped", reason="the model has no BatchNorm layer")
        bs = patient.batch_size
        random_batch = patient.fixed_batch(size=bs)
        per_channel = values_per_channel(patient, probe_model, random_batch)
        # 2. the variants
        variants = {"as configured": (patient, bs), "frozen BN": (
            patient.variant("frozen BatchNorm", model_factory=frozen_factory(patient)), bs)}
        larger = LARGER_BATCH if bs < LARGER_BATCH and len(patient.train_data) >= 2 * LARGER_BATCH else None
        if larger:
            variants[f"batch {larger}"] = (patient, larger)
        steps = ctx.steps(share=0.85 / len(variants), lo=MIN_STEPS, hi=MAX_STEPS, per_step=ctx.step_time * 1.2)
        ctx.progress(0, steps * len(variants))
        held_out = patient.fixed_batch(size=EVAL_BATCH, offset=HELD_OUT_OFFSET)
        # 3. train each, score each in eval mode on the same held-out batch
        runs, models, scores = {}, {}, {}
        watched = None
        for label, (variant, size) in variants.items():
            if label == "as configured":
                runs[label], models[label], watched = self._train(variant, size, steps, ctx.deadline, watch=True)
            else:
                runs[label], models[label], _ = self._train(variant, size, steps, ctx.deadline)
            ctx.require(runs[label])
            ctx.progress(steps, None)
            scores[label] = eval_loss(patient, models[label], held_out) if not runs[label].error else None
        metrics = {"batch_size": bs, "larger_batch": larger, "values_per_channel": per_channel,
                   "min_values_per_channel": min(per_channel.values()) if per_channel else None,
                   "bn_layers": len(per_channel), "steps": steps, "eval_batch": len(held_out[1]),
                   "variants": {k: {**runs[k].to_metrics(), "eval_loss": scores[k],
                                    "error": (runs[k].error or {}).get("message")} for k in variants},
                   "initial_eval_loss": eval_loss(patient, probe_model, held_out),
                   **composition(watched, random_batch)}
        # the plot (each variant's loss, their eval-mode scores) is named here, drawn by the report (report.figures)
        path, rel = ctx.plot_path("bn_freeze")
        return self.result(metrics=metrics, data={"models": models, "runs": runs},
                           plots=[rel] if path is not None else [])

    def _train(self, patient, batch_size: int, steps: int, deadline: float,
               watch: bool = False) -> tuple[Run, nn.Module, Watched | None]:
        model = patient.new_model()
        optimizer = patient.make_optimizer(model)
        loader = patient.loader(batch_size=batch_size, drop_last=len(patient.train_data) > batch_size)
        watched = Watched(loader) if watch else None
        return train(patient, model, optimizer, watched or loader, steps, deadline=deadline), model, watched

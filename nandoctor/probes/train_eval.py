"""The ``train_eval`` probe: the same batch scored in ``train()`` and in ``eval()`` mode after a short training.

Models whose layers behave differently in the two modes (BatchNorm, Dropout, custom
``self.training`` branches) are trained briefly on the user's data stream (or the
``bn_freeze`` probe's trained copy is reused), then one batch of the user's size is
scored in train mode several times (Dropout is random: that spread is the noise) and
in eval mode once. Scoring happens on copies; the trained model is never changed.
Skipped when a fresh model gives the same outputs in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nandoctor import numeric
from nandoctor.patient import clone_module, preserved_rng, split_batch, to_device
from nandoctor.planning import StepNeed
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.bn_freeze import eval_loss
from nandoctor.probes.training import train
from nandoctor.records import Metrics, ProbeResult

TRAIN_MODE_REPEATS = 3   # train-mode scores of the batch (their spread is the noise)
MIN_STEPS = 10
MAX_STEPS = 100
MODE_LAYERS = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)  # named in the evidence
RECALIBRATION_BATCHES = 8   # stream batches BatchNorm statistics are re-estimated on
SAME_OUTPUT_TOL = 1e-6   # a fresh model whose train/eval outputs agree this closely has no mode-dependent layer


def mode_dependent(patient, model: nn.Module, batch) -> bool:
    """Do train() and eval() give different outputs on ``batch`` (on copies)?"""
    inputs, _ = split_batch(batch)
    outs = []
    for mode in (True, False):
        m = clone_module(model).train(mode)
        with torch.no_grad():
            outs.append(m(inputs))
    a, b = outs
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
        return True
    return not torch.allclose(a.float(), b.float(), atol=SAME_OUTPUT_TOL, rtol=SAME_OUTPUT_TOL, equal_nan=True)


def running_stats_memory(model: nn.Module, steps) -> dict:
    """The smallest momentum of the model's BatchNorm layers that track running statistics, and how much of
    their initial values (mean 0, variance 1) the statistics still hold after ``steps`` steps at it."""
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and m.track_running_stats and m.momentum is not None]
    if not momenta or not isinstance(steps, int):
        return {}
    low = float(min(momenta))
    return {"bn_momentum": low, "stats_memory": (1.0 - low) ** steps}


def recalibrated_eval_loss(patient, model: nn.Module, batch) -> tuple[float | None, int | None]:
    """The eval-mode loss of a copy of ``model`` whose BatchNorm running statistics were reset and re-estimated
    over ``RECALIBRATION_BATCHES`` batches of the data stream (train-mode forwards, no gradient, cumulative
    average); (None, None) when the model has no BatchNorm with running statistics."""
    copy = clone_module(model)
    norms = [m for m in copy.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return None, None
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    copy.train()
    seen = 0
    try:
        with torch.no_grad(), preserved_rng():
            for b in patient.loader(drop_last=len(patient.train_data) > patient.batch_size):
                inputs, _ = split_batch(to_device(b, patient.device))
                copy(inputs)
                seen += 1
                if seen >= RECALIBRATION_BATCHES:
                    break
    except Exception:  # the user's data or forward: not this measurement's business
        return None, None
    return eval_loss(patient, copy, batch), seen


@dataclass
class TrainEvalMetrics(Metrics):
    source: str | None = None
    trained_steps: int | None = None
    batch_size: int | None = None
    initial_loss: float | None = None
    train_mode_loss: float | None = None
    train_mode_std: float | None = None
    train_mode_losses: list | None = None
    train_mode_nonfinite: int | None = None   # train-mode scores that were NaN/Inf (left out of the spread)
    eval_mode_loss: float | None = None
    eval_mode_loss_recalibrated: float | None = None  # eval mode after BatchNorm statistics are re-estimated
    recalibration_batches: int | None = None
    mode_layers: list | None = None
    bn_momentum: float | None = None     # the smallest BatchNorm momentum (None: a cumulative average, or no BN)
    stats_memory: float | None = None    # (1 - momentum) ** trained_steps: the share of their initial values the
                                         # running statistics still carry (a low momentum lags for many steps)


class TrainEval(Probe):
    metrics_type = TrainEvalMetrics
    name = "train_eval"
    title = "Score one batch in train() and eval() mode"
    order = 46
    needs_pairs = True
    priority = 70
    steps = StepNeed(min=MIN_STEPS, ideal=MAX_STEPS, cost=1.1, fixed=TRAIN_MODE_REPEATS + 2)

    def need(self, ctx: ProbeContext) -> StepNeed | None:
        """Nothing to plan when the bn_freeze probe trains a model this one can reuse."""
        if "bn_freeze" in ctx.selected and "bn_freeze" not in ctx.evidence:
            try:
                from nandoctor.probes.bn_freeze import has_batchnorm
                if has_batchnorm(ctx.patient.new_model()):
                    return None
            except Exception:
                return None
        bn = ctx.evidence.ok("bn_freeze")
        if bn is not None and (bn.data.get("models") or {}).get("as configured") is not None:
            return None
        return self.steps

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        batch = patient.fixed_batch(offset=3)
        fresh = patient.new_model()
        # 1. nothing to compare when both modes compute the same function
        if not mode_dependent(patient, fresh, batch):
            return self.result(status="skipped", reason="the model computes the same in train() and eval() mode")
        initial = eval_loss(patient, fresh, batch, train_mode=True)
        # 2. a trained model: the bn_freeze probe's, or a short training of our own
        bn = ctx.evidence.ok("bn_freeze")
        model = (bn.data.get("models") or {}).get("as configured") if bn is not None else None
        source, steps = "bn_freeze", (bn.metrics.get("variants", {}).get("as configured", {}).get("steps")
                                      if bn is not None else None)
        if model is None:
            model, source = fresh, "own run"
            optimizer = patient.make_optimizer(model)
            steps = ctx.steps(share=0.8, lo=MIN_STEPS, hi=MAX_STEPS, per_step=ctx.step_time * 1.1)
            loader = patient.loader(drop_last=len(patient.train_data) > patient.batch_size)
            run = train(patient, model, optimizer, loader, steps, deadline=ctx.deadline)
            ctx.require(run)
            if run.error:
                return self.result(status="failed", error=run.error)
            steps = run.steps
        # 3. the same batch, both modes
        train_scores = [eval_loss(patient, model, batch, train_mode=True) for _ in range(TRAIN_MODE_REPEATS)]
        train_scores = [s for s in train_scores if s is not None]
        eval_score = eval_loss(patient, model, batch)
        mean = numeric.mean(train_scores)  # over the finite scores: a NaN score is counted, not averaged
        # 4. BatchNorm's running statistics lag behind the weights early in training: re-estimate them on
        #    the data stream (a cumulative average, on a copy) and score eval mode again
        recal, recal_batches = recalibrated_eval_loss(patient, model, batch)
        metrics = {"source": source, "trained_steps": steps, "batch_size": len(batch[1]), "initial_loss": initial,
                   "train_mode_loss": mean, "train_mode_std": numeric.pstdev(train_scores),
                   "train_mode_nonfinite": numeric.count_nonfinite(train_scores),
                   "train_mode_losses": train_scores, "eval_mode_loss": eval_score,
                   "eval_mode_loss_recalibrated": recal, "recalibration_batches": recal_batches,
                   "mode_layers": sorted({type(m).__name__ for m in model.modules() if isinstance(m, MODE_LAYERS)}),
                   **running_stats_memory(model, steps)}
        # the plot (the same batch scored in both modes) is named here, drawn by the report from the metrics
        path, rel = ctx.plot_path("train_eval")
        return self.result(metrics=metrics, plots=[rel] if path is not None and mean is not None else [])

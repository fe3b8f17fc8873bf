"""Gradient health: per-layer gradient norms by step (heatmap) and by depth (profile).

The overfit probe already trains a fresh model with the ``Recorder`` attached; when it
ran, this probe reads that recording and trains nothing. Otherwise it runs the same
short training itself (fresh model, the user's optimizer and LR, one fixed batch).

Measured: the global gradient norm per step and how far it grew over its early value,
the first step whose gradient turned non-finite, and the depth profile (median RMS
gradient per weight layer over the early steps, input side first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from nandoctor import numeric
from nandoctor.planning import StepNeed
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.instrument import Recorder
from nandoctor.probes.training import train
from nandoctor.records import Metrics, ProbeResult

MIN_STEPS = 20            # own run: fewer steps say little about growth
MAX_STEPS = 150           # own run: growth shows long before this
BASELINE_STEPS = 3        # the growth ratio is measured against the median of the first steps
PROFILE_STEPS = 20        # the depth profile is the median over this many early steps
NO_DEPTH_TYPES = (nn.Embedding, nn.EmbeddingBag)  # sparse row gradients: their RMS is not comparable


def weight_layers(model: nn.Module, names: list[str]) -> list[str]:
    """Layers (by recorder key) with a weight matrix/kernel (dim >= 2): the ones a depth profile compares."""
    modules = {name or "(model)": m for name, m in model.named_modules()}
    keep = []
    for key in names:
        m = modules.get(key)
        w = getattr(m, "weight", None) if m is not None else None
        if isinstance(w, nn.Parameter) and w.dim() >= 2 and w.requires_grad and not isinstance(m, NO_DEPTH_TYPES):
            keep.append(key)
    return keep


def param_counts(model: nn.Module) -> dict[str, int]:
    return {name or "(model)": sum(p.numel() for p in m.parameters(recurse=False))
            for name, m in model.named_modules()}


def growth(norms: list[float]) -> tuple[float | None, float | None, float | None]:
    """(baseline, peak, peak/baseline) of a gradient-norm series over its finite points; None when too short."""
    finite = numeric.finite(norms)
    if len(finite) < BASELINE_STEPS + 1:
        return None, None, None
    base = numeric.median(finite[:BASELINE_STEPS])
    peak = max(finite[BASELINE_STEPS:])
    return base, peak, (peak / base if base > 0 else None)


def first_nonfinite(norms: list[float]) -> int | None:
    return next((i for i, v in enumerate(norms) if not math.isfinite(v)), None)


def depth_profile(rec: Recorder, layers: list[str], counts: dict[str, int]) -> list[float | None]:
    """Median RMS gradient (norm / sqrt(parameter count)) per layer over the early finite steps."""
    out = []
    for key in layers:
        early = numeric.median(rec.grad_norms.get(key, [])[:PROFILE_STEPS])  # over the finite steps
        out.append(early / math.sqrt(max(1, counts.get(key, 1))) if early is not None else None)
    return out


def depth_ratio(profile: list[float | None]) -> float | None:
    """RMS gradient of the first weight layer over the largest hidden one after it (vanishing: far below 1).

    The output layer is left out: it touches the loss directly and its gradient is the largest in
    healthy networks too (BatchNorm nets most of all).
    """
    if len(profile) < 3 or profile[0] is None:
        return None
    later = numeric.fmax(profile[1:-1])
    if later is None or not math.isfinite(profile[0]):
        return None
    return profile[0] / later if later > 0 else None


@dataclass
class GradientsMetrics(Metrics):
    source: str | None = None               # "overfit" (its recording reused) or "own run"
    steps: int | None = None
    grad_norm_initial: float | None = None  # median total gradient norm over the first steps
    grad_norm_peak: float | None = None
    grad_norm_final: float | None = None
    growth: float | None = None             # peak / initial
    nonfinite_grad_step: int | None = None
    nonfinite_grad: dict | None = None
    nonfinite_loss_step: int | None = None
    initial_loss: float | None = None
    final_loss: float | None = None
    layers: list | None = None              # weight layers, input side first
    depth_profile: list | None = None       # RMS gradient per weight layer over the early steps
    depth_ratio: float | None = None        # first layer over the largest hidden one
    total_grad_norms: list | None = None
    first_update_ratio: float | None = None  # SGD: lr x the first gradient norm / the weights' norm (the first step's size)


def first_update_ratio(rec: Recorder, patient) -> float | None:
    """How large the first plain-SGD step is against the weights: lr x |g_0| / |w_0|. Above 1, one step moves
    the weights further than their own size. None for adaptive optimizers (their step is not lr x g)."""
    name = getattr(patient.optimizer_cls, "__name__", "")
    if name != "SGD" or not rec.total_grad_norms or not rec.weight_norms:
        return None
    g0 = rec.total_grad_norms[0]
    w0 = math.sqrt(sum(v[0] ** 2 for v in rec.weight_norms.values() if v and math.isfinite(v[0])))
    lr = patient.lr
    if not (isinstance(lr, (int, float)) and math.isfinite(g0) and w0 > 0):
        return None
    return float(lr) * g0 / w0


class Gradients(Probe):
    metrics_type = GradientsMetrics
    name = "gradients"
    title = "Gradient health by layer and step"
    order = 25
    steps = StepNeed(min=MIN_STEPS, ideal=MAX_STEPS, cost=1.15)
    priority = 30

    def need(self, ctx: ProbeContext) -> StepNeed | None:
        """Nothing to plan when the overfit probe runs: its recording is reused."""
        reused = ctx.evidence.ok("overfit")
        if reused is not None and isinstance(reused.data.get("recorder"), Recorder):
            return None
        return None if "overfit" in ctx.selected and "overfit" not in ctx.evidence else self.steps

    def run(self, ctx: ProbeContext) -> ProbeResult:
        # 1. the overfit probe's recording when it exists, else a short run of our own
        reused = ctx.evidence.ok("overfit")
        if reused is not None and isinstance(reused.data.get("recorder"), Recorder):
            rec, run, source = reused.data["recorder"], reused.data.get("run"), "overfit"
        else:
            rec, run, source = self._own_run(ctx)
            if run.error:
                return self.result(status="failed", error=run.error)
        model = rec.model
        # 2. growth over steps, non-finite step, depth profile
        order = rec.depth_order()
        layers = weight_layers(model, order)
        base, peak, ratio = growth(rec.total_grad_norms)
        profile = depth_profile(rec, layers, param_counts(model))
        losses = run.losses if run is not None else []
        metrics = {"source": source, "steps": len(rec.total_grad_norms), "grad_norm_initial": base,
                   "grad_norm_peak": peak, "growth": ratio,
                   "grad_norm_final": rec.total_grad_norms[-1] if rec.total_grad_norms else None,
                   "nonfinite_grad_step": first_nonfinite(rec.total_grad_norms),
                   "nonfinite_grad": rec.nonfinite_grad, "nonfinite_loss_step": run.nonfinite_step if run else None,
                   "initial_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
                   "layers": layers, "depth_profile": profile, "depth_ratio": depth_ratio(profile),
                   "total_grad_norms": rec.total_grad_norms,
                   "first_update_ratio": first_update_ratio(rec, ctx.patient)}
        # 3. heatmap (layer x step) and depth profile
        rels = self._plot(ctx, rec, order, layers, profile)
        return self.result(metrics=metrics, data={"recorder": rec, "run": run}, plots=rels)

    def _own_run(self, ctx: ProbeContext):
        patient = ctx.patient
        model = patient.new_model()
        optimizer = patient.make_optimizer(model)
        steps = ctx.steps(lo=MIN_STEPS, hi=MAX_STEPS, per_step=ctx.step_time * 1.15)
        rec = Recorder(model, activations=False)   # gradient norms and the forward order are all this probe reads
        rec.attach_optimizer(optimizer)
        try:
            run = train(patient, model, optimizer, patient.fixed_batch(), steps, deadline=ctx.deadline,
                        progress=lambda n: ctx.progress(n, steps))
        finally:
            rec.detach()
        ctx.require(run)
        return rec, run, "own run"

    def _plot(self, ctx: ProbeContext, rec: Recorder, order: list[str], layers: list[str], profile) -> list[str]:
        """The plot's id; the report draws it from the recorder kept in ``data`` (report.figures)."""
        path, rel = ctx.plot_path("gradients")
        return [rel] if path is not None and rec.total_grad_norms else []

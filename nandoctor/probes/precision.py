"""The ``precision`` probe: the same short training at the user's precision and in fp32.

Only meaningful when the config trains under autocast (``precision: fp16`` or ``bf16``); in
fp32 it returns at once, skipped. A fresh model (the patient's seed) is trained on one fixed
batch twice, everything else equal: *as configured* (autocast, the GradScaler when there is
one, the scheduler, clipping, accumulation) and *in fp32* (no autocast, no scaler). Each run
records the loss per step and its first non-finite step, the first step whose gradients were
non-finite, the largest activation magnitude any leaf module produced (and which one, against
the fp16 maximum 65504), the first module whose output turned non-finite while its input was
finite, and under a GradScaler its scale after every step and the steps it skipped.

Autocast on the CPU: torch autocasts ``Linear``, ``Conv*`` and ``matmul`` to fp16 on the CPU
as on CUDA, so an activation past 65504 overflows on both the same way and the probe needs
no explicit casts. The lists of ops autocast *to fp32* differ between the two devices (CUDA
runs ``pow``, ``exp``, ``sum``, ``softmax`` and most losses in fp32; the CPU runs some of them
in fp16): an overflow born in such an op can show on one device and not the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from nandoctor.patient import FP16_MAX, preserved_rng, training_state
from nandoctor.planning import StepNeed
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.training import Run, train
from nandoctor.records import Metrics, ProbeResult

MIN_STEPS = 10      # fewer steps cannot tell "overflows at once" from "overflows after some growth"
CALIBRATION = 17    # a GradScaler starts at 2**16 and halves on every step it skips: 17 skips take it below 1,
                    # so a run with one is planned this much longer and its leading skips are not counted
IDEAL_STEPS = 60    # growth-driven overflows show within this many steps of a fixed batch
STEP_COST = 2.3     # two runs per planned step, plus the activation hooks
TAIL_SHARE = 0.25   # a run's end loss is the mean of its last quarter of steps
MAX_SCALES_KEPT = 100  # scale trajectory points kept in report.json


def bf16_available(device: torch.device) -> bool:
    """bf16 autocast works on every CPU and on CUDA devices that support it."""
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


class ActivationWatch:
    """Forward hooks on the leaf modules: the largest finite |activation| and the first overflow.

    ``overflow`` is the first module whose output held inf/NaN while its input was finite: where the
    value left the dtype's range. It never changes the model; ``detach()`` removes the hooks.
    """

    def __init__(self, model: nn.Module):
        self.step = 0
        self.max_abs = 0.0
        self.max_module: str | None = None
        self.max_step: int | None = None
        self.per_step: list[float] = []   # largest finite |activation| of each step
        self.overflow: dict | None = None
        self._handles = [m.register_forward_hook(self._hook(name or "(model)"))
                         for name, m in model.named_modules() if not list(m.children())]

    def _hook(self, name: str):
        def hook(mod, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.numel() == 0:
                return
            with torch.no_grad():
                o = out.detach()
                finite = torch.isfinite(o)
                all_finite = bool(finite.all())
                peak = float(o.abs().amax()) if all_finite else \
                    (float(o[finite].abs().amax()) if bool(finite.any()) else 0.0)
                if not all_finite and self.overflow is None:
                    inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                    if inp is None or not inp.is_floating_point() or bool(torch.isfinite(inp).all()):
                        self.overflow = {"module": name, "type": type(mod).__name__, "step": self.step,
                                         "output_dtype": str(o.dtype).replace("torch.", ""),
                                         "input_max_abs": float(inp.detach().abs().amax().float())
                                         if inp is not None and inp.numel() else None}
            while len(self.per_step) <= self.step:
                self.per_step.append(0.0)
            self.per_step[self.step] = max(self.per_step[self.step], peak)
            if peak > self.max_abs:
                self.max_abs, self.max_module, self.max_step = peak, name, self.step
        return hook

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@dataclass
class PrecisionRun:
    """One run of the probe: the loss curve and what the hooks and the scaler saw."""

    precision: str
    run: Run
    watch: ActivationWatch
    grad_nonfinite_step: int | None = None
    scaler: bool = False
    scales: list[float] = field(default_factory=list)   # the GradScaler's scale after each step
    skipped: list[bool] = field(default_factory=list)   # per step: the scaler skipped it (inf/NaN gradients)

    @property
    def skipped_steps(self) -> int:
        return sum(self.skipped)

    @property
    def calibration_steps(self) -> int:
        """The leading skipped steps: the scaler halving its scale down to one the gradients fit in (what every
        GradScaler does at the start of a run), not a failure of the run."""
        n = 0
        while n < len(self.skipped) and self.skipped[n]:
            n += 1
        return n

    @property
    def relative_drop(self) -> float | None:
        """1 - end loss / start loss (None when it went non-finite or the start is not positive)."""
        start, end = self.run.initial, self.run.tail(TAIL_SHARE)
        if self.run.nonfinite_step is not None or self.run.error or start is None or end is None or start <= 0:
            return None
        return (start - end) / start

    @property
    def finite(self) -> bool:
        """Finite loss and gradients all along (a GradScaler's skipped steps aside) and no error."""
        if self.run.error or self.run.nonfinite_step is not None or not self.run.losses:
            return False
        return self.scaler or self.grad_nonfinite_step is None

    def metrics(self) -> dict:
        scales = self.scales
        if len(scales) > MAX_SCALES_KEPT:
            k = math.ceil(len(scales) / MAX_SCALES_KEPT)
            scales = scales[::k]
        return {"precision": self.precision, "steps": self.run.steps, "stopped": self.run.stopped,
                "initial_loss": self.run.initial, "final_loss": self.run.losses[-1] if self.run.losses else None,
                "tail_loss": self.run.tail(TAIL_SHARE), "relative_drop": self.relative_drop,
                "nonfinite_step": self.run.nonfinite_step, "grad_nonfinite_step": self.grad_nonfinite_step,
                "error": self.run.error and self.run.error.get("message"),
                "act_max": self.watch.max_abs, "act_max_module": self.watch.max_module,
                "act_max_step": self.watch.max_step, "act_max_over_fp16_max": self.watch.max_abs / FP16_MAX,
                "overflow": self.watch.overflow, "grad_scaler": self.scaler,
                "scale_initial": self.scales[0] if self.scales else None,
                "scale_final": self.scales[-1] if self.scales else None,
                "scale_min": min(self.scales) if self.scales else None,
                "skipped_steps": self.skipped_steps, "calibration_steps": self.calibration_steps,
                "skipped_after_calibration": sum(self.skipped[self.calibration_steps:]), "scales": scales}


def _grads_finite(model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm([g.float() if g.dtype not in (torch.float32, torch.float64) else g for g in grads])
    return bool(torch.isfinite(torch.stack(norms)).all())


def precision_run(patient, batch, steps: int, deadline: float | None = None) -> PrecisionRun:
    """Train a fresh model (the patient's seed) ``steps`` steps on ``batch`` with the patient's own step,
    watching activations, gradients and the GradScaler. Leaves the RNG state as it found it."""
    with preserved_rng():
        torch.manual_seed(patient.seed)
        model = patient.new_model()
        optimizer = patient.make_optimizer(model)
        state = training_state(optimizer)
        scaler = state.scaler if state is not None else None
        watch = ActivationWatch(model)
        out = PrecisionRun(precision=patient.precision, run=Run(), watch=watch, scaler=scaler is not None)
        initial_scale = float(scaler.get_scale()) if scaler is not None else 0.0   # its init_scale, before a step

        def on_step(i: int, value: float) -> None:
            # 1. gradients as the step left them (unscaled by scaler.step, or inf where it skipped)
            if out.grad_nonfinite_step is None and not _grads_finite(model):
                out.grad_nonfinite_step = i
            # 2. the scaler halves its scale on every step it skips
            if scaler is not None:
                scale = float(scaler.get_scale())
                skipped = scale < (out.scales[-1] if out.scales else initial_scale)
                out.skipped.append(skipped)
                out.scales.append(scale)
            watch.step = i + 1

        try:
            out.run = train(patient, model, optimizer, batch, steps, deadline=deadline, on_step=on_step)
        finally:
            watch.detach()
    return out


def scaled_need() -> StepNeed:
    """The probe's steps under a GradScaler: its calibration on top of the minimum and the ideal."""
    return StepNeed(min=MIN_STEPS + CALIBRATION, ideal=IDEAL_STEPS + CALIBRATION, cost=STEP_COST)


@dataclass
class PrecisionMetrics(Metrics):
    precision: str | None = None          # the user's: bf16 | fp16
    grad_scaler: bool | None = None       # a GradScaler in use
    fp16_max: float | None = None
    steps_planned: int | None = None
    as_configured: dict | None = None     # the run at the user's precision: first non-finite step, largest activation
    fp32: dict | None = None              # the same run in fp32, same seed and batch


class Precision(Probe):
    metrics_type = PrecisionMetrics
    name = "precision"
    title = "Train at your precision and in fp32"
    order = 22
    priority = 35
    steps = StepNeed(min=MIN_STEPS, ideal=IDEAL_STEPS, cost=STEP_COST)

    def need(self, ctx: ProbeContext) -> StepNeed | None:
        """Two short trainings (the user's precision, fp32); nothing to plan in fp32. Under a GradScaler the
        minimum holds its calibration too: the verdict is read on the steps after it."""
        if ctx.patient.precision == "fp32":
            return None
        return scaled_need() if ctx.patient.uses_grad_scaler else self.steps

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        # 1. nothing to compare when the user trains in fp32
        if patient.precision == "fp32":
            return self.result(status="skipped", reason="the config trains in fp32 (no autocast): nothing to compare")
        need = self.need(ctx)
        steps = ctx.steps(lo=need.min, hi=need.ideal, per_step=ctx.step_time * STEP_COST)
        ctx.progress(0, 2 * steps)
        batch = patient.fixed_batch()
        # 2. as configured, then fp32 (same seed, same batch); each may use what the other left
        configured = precision_run(patient, batch, steps, deadline=ctx.deadline)
        ctx.require(configured.run)
        ctx.progress(steps, 2 * steps)
        fp32 = precision_run(patient.variant("fp32 without autocast", precision="fp32"), batch, steps,
                             deadline=ctx.deadline)
        ctx.require(fp32.run)
        ctx.progress(2 * steps, 2 * steps)
        metrics = {"precision": patient.precision, "grad_scaler": patient.uses_grad_scaler, "fp16_max": FP16_MAX,
                   "steps_planned": steps, "as_configured": configured.metrics(), "fp32": fp32.metrics()}
        # the plot (both runs' loss and activation range) is named here, drawn by the report (report.figures)
        path, rel = ctx.plot_path("precision")
        rels = [rel] if path is not None and (configured.run.losses or fp32.run.losses) else []
        return self.result(metrics=metrics, plots=rels, data={"runs": {"as_configured": configured, "fp32": fp32},
                                                               "batch": batch})

"""The ``init`` probe: the user's initialisation against standard ones, each a short training on the same data.

Schemes (all start from the user's architecture, built by the user's factory):
- ``as configured``: the model exactly as the factory returns it (its custom init, if any);
- ``pytorch default``: ``reset_parameters()`` on every module that has it;
- ``kaiming``, ``xavier``, ``orthogonal``: the default, then that init on the weight of every
  Linear/Conv/recurrent layer (biases zero) — "where it applies".
Every scheme trains for the same steps on the same few batches, as one batched
ensemble when the model allows it (``probes.ensemble``). A single recorded step per
scheme gives the activation and gradient profiles by depth.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable

import torch
from torch import nn

from nandoctor.planning import StepNeed
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.bn_freeze import eval_loss
from nandoctor.probes.ensemble import train_many
from nandoctor.probes.gradients import param_counts, weight_layers
from nandoctor.probes.instrument import Recorder
from nandoctor.records import Metrics, ProbeResult

MIN_STEPS = 15          # fewer steps cannot separate a slow start from a bad one
MAX_STEPS = 120         # enough for a clearly better init to pull away
N_BATCHES = 4           # the same few batches for every scheme (cycled)
HELD_OUT = 128          # samples scored in eval mode after training, per scheme
DEFAULT_STD_TOLERANCE = 0.15  # per-layer weight std within 15% of the default's: "the user's init is the default"
SAMPLING_SIGMAS = 3.0         # ... or within this many sampling standard errors, for small layers
INIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d, nn.Bilinear)
ENSEMBLE_CPU_MAX_STEP = 0.002  # on CPU, batch the schemes only for steps this fast (overhead-bound; bench_ensemble)
RECURRENT = (nn.RNNBase,)
STANDARD = ("pytorch default", "kaiming", "xavier", "orthogonal")


def reset_default(model: nn.Module) -> nn.Module:
    """PyTorch's own init: ``reset_parameters()`` on every module that has it."""
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return model


def _weights(model: nn.Module):
    """(module, weight) pairs an init scheme applies to, and the biases to zero."""
    for m in model.modules():
        if isinstance(m, INIT_LAYERS) and isinstance(getattr(m, "weight", None), nn.Parameter):
            yield m.weight, [getattr(m, "bias", None)]
        elif isinstance(m, RECURRENT):
            for name, p in m.named_parameters(recurse=False):
                if name.startswith("weight"):
                    yield p, []
                elif name.startswith("bias"):
                    yield None, [p]


SCHEMES: dict[str, Callable[[torch.Tensor], None]] = {
    "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "xavier": lambda w: nn.init.xavier_uniform_(w),
    "orthogonal": lambda w: nn.init.orthogonal_(w),
}


def apply_scheme(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise ``model`` in place with ``scheme`` (see the module doc); returns it."""
    if scheme == "as configured":
        return model
    with torch.no_grad():
        reset_default(model)
        init = SCHEMES.get(scheme)
        if init is None:
            return model
        for weight, biases in _weights(model):
            if weight is not None and weight.dim() >= 2:
                init(weight)
            for b in biases:
                if isinstance(b, nn.Parameter):
                    b.zero_()
    return model


def scheme_factory(patient, scheme: str) -> Callable[[], nn.Module]:
    """A model factory for a patient variant: the user's factory, then ``scheme``."""
    factory = patient.model_factory

    def build() -> nn.Module:
        return apply_scheme(factory(), scheme)
    return build


def applies(model: nn.Module) -> bool:
    return any(True for _ in _weights(model))


def std_ratios(user: nn.Module, default: nn.Module) -> dict[str, tuple[float, int]]:
    """Per init-layer (weight std of the user's model / the PyTorch default's, number of weights)."""
    out = {}
    named = dict(default.named_modules())
    for name, m in user.named_modules():
        w, d = getattr(m, "weight", None), getattr(named.get(name), "weight", None)
        if isinstance(m, INIT_LAYERS + RECURRENT) and isinstance(w, torch.Tensor) and isinstance(d, torch.Tensor) \
                and w.numel() > 1:
            ds = float(d.detach().float().std())
            out[name or "(model)"] = (float(w.detach().float().std()) / ds if ds > 0 else float("inf"), w.numel())
    return out


def biases_off_default(user: nn.Module) -> dict[str, float]:
    """Per weight layer whose bias leaves the range PyTorch's default draws it from (U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) for Linear and convolutions): its largest |bias|. Zero biases are in range."""
    out = {}
    for name, m in user.named_modules():
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(m, INIT_LAYERS) and isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) \
                and b.numel() and w.dim() >= 2:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(w)   # as reset_parameters() bounds the bias
            largest = float(b.detach().abs().max())
            if fan_in and largest > 1.0001 / math.sqrt(fan_in):
                out[name or "(model)"] = largest
    return out


def is_default(ratios: dict[str, tuple[float, int]]) -> bool:
    """Every layer's std matches the default's within sampling noise (two samples of n weights: ~1/sqrt(n))."""
    return all(abs(r - 1.0) <= max(DEFAULT_STD_TOLERANCE, SAMPLING_SIGMAS / math.sqrt(n)) for r, n in ratios.values())


def profile(patient, model: nn.Module, batch) -> dict:
    """One recorded forward/backward (no update): activation std and RMS gradient per weight layer, by depth."""
    rec = Recorder(model)
    try:
        model.zero_grad(set_to_none=True)
        _, loss = patient.compute_loss(model, batch)
        if torch.isfinite(loss):
            loss.backward()
        rec.before_step()
    except Exception:  # the user's code raised: the training below reports it
        return {"layers": [], "activation_std": [], "grad_rms": [], "initial_loss": None}
    finally:
        rec.detach()
    layers = weight_layers(model, rec.depth_order())
    counts = param_counts(model)
    grads = [rec.grad_norms.get(k, [float("nan")])[0] / math.sqrt(max(1, counts.get(k, 1))) for k in layers]
    acts = [rec.act_std.get(k, [float("nan")])[0] for k in layers]
    model.zero_grad(set_to_none=True)
    return {"layers": layers, "activation_std": acts, "grad_rms": grads, "initial_loss": float(loss.detach())}


@dataclass
class InitMetrics(Metrics):
    schemes: dict | None = None          # per init scheme: the run's losses summary and the held-out loss
    best_standard: str | None = None
    mode: str | None = None              # ensemble | sequential
    steps: int | None = None
    user_is_default: bool | None = None
    user_std_over_default: dict | None = None
    user_bias_off_default: dict | None = None  # layers whose bias leaves the default's range: its largest |bias|
    user_weights_default: bool | None = None   # the weights' scale is the default's (only biases may differ)
    profiles: dict | None = None         # activation std and RMS gradient by depth at init, per scheme
    errors: dict | None = None


class InitCompare(Probe):
    metrics_type = InitMetrics
    name = "init"
    title = "Compare the initialisation with standard ones"
    order = 40
    needs_pairs = True
    priority = 40

    def need(self, ctx: ProbeContext) -> StepNeed | None:
        """One short training per init scheme (five, trained one after another on CPU), plus the profiles."""
        try:
            if not applies(ctx.patient.new_model()):
                return None  # nothing to plan: the probe says so at once
        except Exception:
            return None
        k = 1 + len(STANDARD)
        return StepNeed(min=MIN_STEPS, ideal=MAX_STEPS, cost=float(k), fixed=2.0 * k)

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        # 1. one fresh model per scheme, from the same seed
        models = {"as configured": patient.new_model()}
        if not applies(models["as configured"]):
            return self.result(status="skipped", reason="the model has no Linear/Conv/recurrent layer to initialise")
        for s in STANDARD:
            try:
                models[s] = patient.variant(f"init: {s}", model_factory=scheme_factory(patient, s)).new_model()
            except Exception:  # e.g. lazy modules whose weights do not exist yet: compare the schemes that apply
                continue
        if len(models) < 2:
            return self.result(status="skipped", reason="no standard init applies to this model")
        ratios = std_ratios(models["as configured"], models["pytorch default"]) \
            if "pytorch default" in models else {}  # unknown: treated as the default, never blamed
        off_bias = biases_off_default(models["as configured"]) if "pytorch default" in models else {}
        batches = [patient.fixed_batch(offset=i) for i in range(N_BATCHES)]
        # 2. profiles by depth at initialisation (one step each, on copies: the weights stay as they are)
        profiles = {s: profile(patient, m, batches[0]) for s, m in models.items()}
        # 3. the same short training for every scheme, batched when possible
        k = len(models)
        steps = ctx.steps(share=0.85, lo=MIN_STEPS, hi=MAX_STEPS, per_step=ctx.step_time * k * 0.8)
        ctx.progress(0, steps)
        batched = patient.device.type != "cpu" or ctx.step_time <= ENSEMBLE_CPU_MAX_STEP
        runs, mode = train_many(patient, list(models.values()), batches, steps, deadline=ctx.deadline,
                                batched=batched)
        runs = dict(zip(models, runs))
        for r in runs.values():
            ctx.require(r)
        errors = {s: r.error for s, r in runs.items() if r.error}
        if "as configured" in errors:
            return self.result(status="failed", error=errors["as configured"])
        # 4. every trained model scored in eval mode on held-out samples (validation data when given)
        held_out = self._held_out(patient)
        summary = {s: {**r.to_metrics(), "held_out_loss": eval_loss(patient, models[s], held_out)
                       if held_out is not None and r.nonfinite_step is None else None}
                   for s, r in runs.items()}
        trained = [s for s in STANDARD if s in summary and summary[s]["tail_loss"] is not None
                   and runs[s].nonfinite_step is None]
        best = min(trained,
                   key=lambda s: summary[s]["tail_loss"], default=None)
        metrics = {"schemes": summary, "best_standard": best, "mode": mode, "steps": steps,
                   "user_is_default": is_default(ratios) and not off_bias,
                   "user_weights_default": is_default(ratios),
                   "user_std_over_default": {k: r for k, (r, _) in ratios.items()},
                   "user_bias_off_default": off_bias or None,
                   "profiles": profiles, "errors": errors or None}
        rels = self._plot(ctx, runs, profiles)
        return self.result(metrics=metrics, data={"runs": runs}, plots=rels)

    def _held_out(self, patient):
        """Samples none of the training batches drew when possible: the validation set, else later draws."""
        try:
            if patient.val_data is not None and len(patient.val_data) > 1:
                return patient.variant("validation data", train_data=patient.val_data).fixed_batch(size=HELD_OUT)
            return patient.fixed_batch(size=HELD_OUT, offset=N_BATCHES + 90)
        except Exception:  # an odd validation set: compare on training losses only
            return None

    def _plot(self, ctx: ProbeContext, runs: dict, profiles: dict) -> list[str]:
        """The plot's id; the report draws it from the runs kept in ``data`` and the profiles (report.figures)."""
        path, rel = ctx.plot_path("init")
        return [rel] if path is not None and profiles else []


"""Instrumentation shared by the probes: what happens inside the model during a probe.

``Recorder`` attaches forward hooks to the leaf modules and a step pre-hook to the
optimizer (so it works with the user's own ``train_step`` too) and records, per
step:
- per-layer gradient norm and weight norm (layers = modules that own parameters);
- per-layer activation mean/std, and for activation layers the share of units that
  were ever active (ReLU family) or pinned at their bounds (sigmoid/tanh);
- the first module whose output turned non-finite while its inputs were finite,
  and the first parameter whose gradient did, with the step.
It never changes the model; ``detach()`` removes every hook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.PReLU)
BOUNDED = (nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Softmax)
SATURATION_MARGIN = 0.01   # within 1% of a bound counts as saturated (sigmoid < 0.01 or > 0.99)
INACTIVE_BELOW = 0.01      # a ReLU unit active on fewer than 1% of the positions of a call counts as dead (SageMaker)


def _finite(t) -> bool:
    return not isinstance(t, torch.Tensor) or not t.is_floating_point() or bool(torch.isfinite(t).all())


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for o in obj.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def tensor_stats(t: torch.Tensor) -> dict:
    """min/max/mean/std and non-finite counts of a tensor, as plain floats."""
    t = t.detach().float()
    finite = t[torch.isfinite(t)]
    out = {"shape": list(t.shape), "nan": int(torch.isnan(t).sum()), "inf": int(torch.isinf(t).sum())}
    if finite.numel():
        out.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()),
                   std=float(finite.std()) if finite.numel() > 1 else 0.0)
    return out


def _norms(tensors: list[torch.Tensor]) -> list[float]:
    """L2 norm of each tensor (in float32 or wider), in one batched call and one host transfer."""
    if not tensors:
        return []
    ts = [t if t.dtype in (torch.float32, torch.float64) else t.float() for t in tensors]
    try:
        return torch.stack([n.float() for n in torch._foreach_norm(ts)]).tolist()
    except (AttributeError, RuntimeError):  # no foreach kernel, or tensors on several devices
        return [float(torch.linalg.vector_norm(t)) for t in ts]


def fast_mean_std(t: torch.Tensor) -> tuple[float, float]:
    """Mean and (population) std of a tensor from one sum and one norm: ~40x cheaper than ``std_mean`` on CPU.

    A non-finite element makes both non-finite, which is how the forward hook spots one.
    """
    n = t.numel()
    if n == 0:  # an empty output (a layer fed an empty batch): nothing to average
        return float("nan"), float("nan")
    flat = t.reshape(-1).float()
    mean = float(flat.sum()) / n
    sq = float(torch.linalg.vector_norm(flat)) ** 2 / n
    if not (math.isfinite(mean) and math.isfinite(sq)):
        return mean if not math.isfinite(mean) else float("nan"), float("nan")
    return mean, math.sqrt(max(0.0, sq - mean * mean))


@dataclass
class Recorder:
    model: nn.Module
    activations: bool = True
    updates: bool = False   # update/weight ratio needs a copy of the weights each step
    step: int = 0
    grad_norms: dict[str, list[float]] = field(default_factory=dict)
    weight_norms: dict[str, list[float]] = field(default_factory=dict)
    update_ratios: dict[str, list[float]] = field(default_factory=dict)
    act_mean: dict[str, list[float]] = field(default_factory=dict)
    act_std: dict[str, list[float]] = field(default_factory=dict)
    ever_active: dict[str, torch.Tensor] = field(default_factory=dict)   # ReLU family: unit ever > 0
    saturated: dict[str, list[float]] = field(default_factory=dict)      # bounded: share pinned per step
    layer_types: dict[str, str] = field(default_factory=dict)
    nonfinite_forward: dict | None = None
    nonfinite_grad: dict | None = None
    grads_none: set[str] = field(default_factory=set)
    grads_seen: set[str] = field(default_factory=set)
    dead_per_call: dict[str, list[float]] = field(default_factory=dict)  # ReLU family: share of dead units, per call
    total_grad_norms: list[float] = field(default_factory=list)  # global gradient norm per step

    def __post_init__(self):
        self._handles = []
        self._before: dict[str, torch.Tensor] = {}
        self._seen: set[str] = set()
        self.forward_order: list[str] = []   # leaf modules in the order the forward pass ran them
        self.layers = {name: m for name, m in self.model.named_modules()
                       if any(True for _ in m.parameters(recurse=False))}
        for name, m in self.model.named_modules():
            self.layer_types[name or "(model)"] = type(m).__name__
            if self.activations and not list(m.children()):
                self._handles.append(m.register_forward_hook(self._forward_hook(name or "(model)", m)))

    # --- hooks --------------------------------------------------------------------------
    def _forward_hook(self, name: str, module: nn.Module):
        def hook(mod, inputs, output):
            out = _first_tensor(output)
            if out is None or not out.is_floating_point():
                return
            with torch.no_grad():
                o = out.detach()
                if o.numel() == 0:
                    return
                if name not in self._seen:  # execution order = depth order, for depth profiles
                    self._seen.add(name)
                    self.forward_order.append(name)
                # 1. one pass for mean and std; a non-finite element makes the mean non-finite
                mean, std = fast_mean_std(o)
                finite = (math.isfinite(mean) and math.isfinite(std)) or _finite(o)  # huge finite values overflow
                if self.nonfinite_forward is None and not finite:
                    inp = _first_tensor(inputs)
                    if inp is None or _finite(inp):
                        self.nonfinite_forward = {"module": name, "type": type(mod).__name__, "step": self.step,
                                                  "input": tensor_stats(inp) if inp is not None else None,
                                                  "output": tensor_stats(o)}
                self.act_mean.setdefault(name, []).append(mean)
                self.act_std.setdefault(name, []).append(std)
                # 2. per-unit shares for activation layers
                if isinstance(mod, RELU_LIKE) and o.dim() >= 2:
                    positive = (o > 0).transpose(0, 1).reshape(o.shape[1], -1)  # [units, positions]
                    units = positive.any(dim=1)
                    prev = self.ever_active.get(name)
                    self.ever_active[name] = units if prev is None or prev.shape != units.shape else prev | units
                    if finite:
                        share = positive.float().mean(dim=1)
                        self.dead_per_call.setdefault(name, []).append(float((share < INACTIVE_BELOW).float().mean()))
                elif isinstance(mod, BOUNDED):
                    lo, hi = (-1.0, 1.0) if isinstance(mod, (nn.Tanh, nn.Hardtanh)) else (0.0, 1.0)
                    margin = SATURATION_MARGIN * (hi - lo)
                    pinned = ((o <= lo + margin) | (o >= hi - margin)).float().mean()
                    self.saturated.setdefault(name, []).append(float(pinned))
        return hook

    def before_step(self, optimizer=None, *args, **kwargs) -> None:
        """Call between backward and optimizer.step (or let ``attach_optimizer`` do it)."""
        with torch.no_grad():
            # 1. every parameter's weight and gradient norm, batched: one host transfer per step
            owners, weights, grads, grad_owner = [], [], [], []
            for name, layer in self.layers.items():
                key = name or "(model)"
                for p in layer.parameters(recurse=False):
                    owners.append(key)
                    weights.append(p.detach())
                    if p.grad is not None:
                        grads.append(p.grad.detach())
                        grad_owner.append(key)
                if self.updates:
                    self._before[key] = torch.cat([q.detach().flatten().float()
                                                   for q in layer.parameters(recurse=False)])
            w_norms = _norms(weights)
            g_norms = _norms(grads)
            # 2. per layer: sqrt of the summed squares; a non-finite norm means a non-finite gradient
            wsq: dict[str, float] = {}
            gsq: dict[str, float] = {}
            for key, v in zip(owners, w_norms):
                wsq[key] = wsq.get(key, 0.0) + v * v
            for key, v, g in zip(grad_owner, g_norms, grads):
                gsq[key] = gsq.get(key, 0.0) + v * v
                if self.nonfinite_grad is None and not math.isfinite(v) and not _finite(g):
                    self.nonfinite_grad = {"module": key, "type": self.layer_types.get(key, "?"), "step": self.step}
            total = 0.0
            for name in self.layers:
                key = name or "(model)"
                (self.grads_seen if key in gsq else self.grads_none).add(key)
                self.grad_norms.setdefault(key, []).append(math.sqrt(gsq[key]) if key in gsq else float("nan"))
                self.weight_norms.setdefault(key, []).append(math.sqrt(wsq.get(key, 0.0)))
                total += gsq.get(key, 0.0)
            self.total_grad_norms.append(math.sqrt(total) if gsq else float("nan"))

    def after_step(self, optimizer=None, *args, **kwargs) -> None:
        if self.updates:
            with torch.no_grad():
                for name, layer in self.layers.items():
                    key = name or "(model)"
                    before = self._before.get(key)
                    if before is None:
                        continue
                    now = torch.cat([q.detach().flatten().float() for q in layer.parameters(recurse=False)])
                    denom = float(before.norm()) or 1e-12
                    self.update_ratios.setdefault(key, []).append(float((now - before).norm()) / denom)
        self.step += 1

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._handles.append(optimizer.register_step_pre_hook(self.before_step))
        self._handles.append(optimizer.register_step_post_hook(self.after_step))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # --- summaries ------------------------------------------------------------------------
    def dead_share(self) -> dict[str, float]:
        """ReLU-family layer -> share of its units that never activated during the recording."""
        return {k: 1.0 - float(v.float().mean()) for k, v in self.ever_active.items()}

    def depth_order(self) -> list[str]:
        """Layers that own parameters, in the order the forward pass reached them (then the rest)."""
        keys = [name or "(model)" for name in self.layers]
        ordered = [k for k in self.forward_order if k in keys]
        return ordered + [k for k in keys if k not in ordered]

    def summary(self) -> dict:
        def last(d):
            return {k: v[-1] for k, v in d.items() if v}
        return {"grad_norm_first": {k: v[0] for k, v in self.grad_norms.items() if v},
                "grad_norm_last": last(self.grad_norms), "weight_norm_last": last(self.weight_norms),
                "dead_share": self.dead_share(),
                "saturated_share": {k: sum(v) / len(v) for k, v in self.saturated.items() if v},
                "nonfinite_forward": self.nonfinite_forward, "nonfinite_grad": self.nonfinite_grad,
                "layers_without_grad": sorted(self.grads_none - self.grads_seen)}

"""Structure: a cheap look at the module tree, the optimizer and the autograd graph.

Two training steps at learning rate zero on one fixed batch, on a fresh model, with
everything traced:
- which parameters take part in the loss's autograd graph (``AccumulateGrad`` leaves,
  walked from the tensor ``backward()`` was called on) and which of them are not the
  model's registered parameters (layers built inside ``forward()``, layers kept in plain
  Python lists, tensors that are not ``nn.Parameter``), and whether they are new on
  every call;
- which trainable parameters the optimizer's param groups leave out, and which get no
  gradient at ``optimizer.step()`` time (never called, detached, all frozen);
- pooling and convolution calls whose stride is larger than their (dilated) kernel;
- with the user's own ``train_step``: whether the gradient at the second step is the
  sum of two (``zero_grad`` missing), both steps seeded alike so dropout agrees.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.nn.modules import module as module_hooks

from nandoctor.patient import preserved_rng, split_batch
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.training import error_record
from nandoctor.records import Metrics, ProbeResult

TRACED_STEPS = 2          # two identical steps: enough to see fresh weights and accumulated gradients
ZERO_GRAD_ATOL = 0.0      # a gradient tensor whose largest |value| is at most this counts as zero
MAX_LISTED = 20           # at most this many parameters/modules named in the metrics

POOL_OP = re.compile(r"^_?(max|avg)_pool([123])d(_with_indices)?$")
CONV_OP = re.compile(r"^conv([123])d$")


# --- what one traced call sees ----------------------------------------------------------------
class Tracer(TorchFunctionMode):
    """Records module calls (global forward hooks), strided pooling/conv calls and ``backward()`` roots."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[nn.Module] = []
        self.called: dict[int, nn.Module] = {}
        self.strided: list[dict] = []
        self.roots: list[torch.Tensor] = []
        self._handles: list = []

    def __enter__(self):
        self._handles = [module_hooks.register_module_forward_pre_hook(self._pre),
                         module_hooks.register_module_forward_hook(self._post, always_call=True)]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return super().__exit__(*exc)

    def _pre(self, module, inputs):
        self.stack.append(module)
        self.called.setdefault(id(module), module)

    def _post(self, module, inputs, output):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "backward" and args and isinstance(args[0], torch.Tensor):
            self.roots.append(args[0])
        else:
            info = stride_info(name, args, kwargs)
            if info is not None:
                info["module_id"] = id(self.stack[-1]) if self.stack else None
                self.strided.append(info)
        return func(*args, **kwargs)


def _tuple(value, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(int(v) for v in value)
    return value * dims if len(value) == 1 else value


def stride_info(name: str, args: tuple, kwargs: dict) -> dict | None:
    """kernel/stride/dilation of a pooling or convolution call, or None for other ops."""
    def arg(i: int, key: str, default=None):
        return args[i] if len(args) > i else kwargs.get(key, default)
    try:
        pool, conv = POOL_OP.match(name), CONV_OP.match(name)
        if pool:
            dims = int(pool.group(2))
            kernel = _tuple(arg(1, "kernel_size"), dims)
            stride = arg(2, "stride")
            stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else _tuple(stride, dims)
            dilation = _tuple(arg(4, "dilation", 1), dims) if pool.group(1) == "max" else (1,) * dims
            op = f"{pool.group(1)}_pool{dims}d"
        elif conv:
            dims = int(conv.group(1))
            weight = arg(1, "weight")
            kernel = tuple(int(k) for k in weight.shape[2:])
            stride, dilation = _tuple(arg(3, "stride", 1), dims), _tuple(arg(5, "dilation", 1), dims)
            op = f"conv{dims}d"
        else:
            return None
    except (TypeError, ValueError, AttributeError, IndexError):
        return None
    return {"op": op, "kernel": list(kernel), "stride": list(stride), "dilation": list(dilation)}


def skips_inputs(info: dict) -> bool:
    """True when the stride jumps over inputs no window covers (1x1 convolutions are exempt: ResNet shortcuts)."""
    if info["op"].startswith("conv") and all(k == 1 for k in info["kernel"]):
        return False
    return any(s > d * (k - 1) + 1 for s, k, d in zip(info["stride"], info["kernel"], info["dilation"]))


# --- the autograd graph and the module tree ----------------------------------------------------
def graph_leaves(root: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every tensor that accumulates a gradient from ``root`` (the graph's AccumulateGrad leaves). A root that is
    a leaf itself (a loss rebuilt from its value: ``torch.tensor(loss.item(), requires_grad=True)``) reaches
    nothing: it is the loss, not a weight."""
    leaves: dict[int, torch.Tensor] = {}
    if root.grad_fn is None:
        return leaves
    seen, stack = set(), [root.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if isinstance(var, torch.Tensor):
            leaves[id(var)] = var
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return leaves


def plain_paths(model: nn.Module) -> dict[int, str]:
    """id -> path of modules and tensors the model holds outside its registered tree (lists, dicts, attributes)."""
    out: dict[int, str] = {}
    for mname, mod in model.named_modules():
        for attr, value in vars(mod).items():
            if not attr.startswith("_"):
                _collect(value, f"{mname}.{attr}" if mname else attr, out, 0)
    return out


def _collect(value: Any, path: str, out: dict[int, str], depth: int) -> None:
    if isinstance(value, nn.Module):
        out.setdefault(id(value), path)
        for n, p in value.named_parameters():
            out.setdefault(id(p), f"{path}.{n}")
    elif isinstance(value, torch.Tensor):
        out.setdefault(id(value), path)
    elif isinstance(value, (list, tuple)) and depth < 3:
        for i, v in enumerate(value):
            _collect(v, f"{path}[{i}]", out, depth + 1)
    elif isinstance(value, dict) and depth < 3:
        for k, v in value.items():
            _collect(v, f"{path}[{k!r}]", out, depth + 1)


def short_module(m: nn.Module) -> str:
    text = repr(m) if not list(m.children()) else type(m).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else "(model)"


@dataclass
class StepTrace:
    """What one traced step saw."""
    leaves: dict[int, torch.Tensor] = field(default_factory=dict)
    called: dict[int, nn.Module] = field(default_factory=dict)
    strided: list[dict] = field(default_factory=list)
    grads: dict[int, torch.Tensor | None] = field(default_factory=dict)  # registered param id -> grad at step()
    module_names: dict[int, str] = field(default_factory=dict)  # the model's module tree right after the step
    loss_requires_grad: bool | None = None
    loss_rebuilt: bool | None = None   # backward() ran on leaf tensors only: a loss made anew from a value
    graph_walked: bool = False
    stepped: bool = False   # the call ran optimizer.step()
    error: dict | None = None


def traced_step(patient, model: nn.Module, optimizer, batch, params: dict[int, nn.Parameter]) -> StepTrace:
    """One step of the patient's own step function with everything traced, seeded so repeats agree."""
    trace = StepTrace()

    def snapshot(*_a, **_k):
        if not trace.grads:
            trace.grads = {i: (p.grad.detach().clone() if p.grad is not None else None) for i, p in params.items()}
    def stepping(*a, **k):
        trace.stepped = True
        snapshot()
    handle = optimizer.register_step_pre_hook(stepping)
    tracer = Tracer()
    try:
        with preserved_rng():
            torch.manual_seed(patient.seed)
            with tracer:
                patient.step(model, optimizer, batch)
    except Exception as exc:  # the user's code raised: keep what was seen before
        trace.error = error_record(exc)
    finally:
        handle.remove()
    snapshot()  # a step function that never calls optimizer.step(): read the grads now
    for root in tracer.roots:
        trace.leaves.update(graph_leaves(root))
    trace.graph_walked = bool(tracer.roots)  # False when the step never called tensor.backward()
    trace.loss_requires_grad = any(r.requires_grad for r in tracer.roots) if tracer.roots else None
    trace.loss_rebuilt = all(r.grad_fn is None and r.requires_grad for r in tracer.roots) if tracer.roots else None
    trace.called, trace.strided = tracer.called, tracer.strided
    trace.module_names = {id(m): n for n, m in model.named_modules()}
    return trace


# --- the probe --------------------------------------------------------------------------------
@dataclass
class StructureMetrics(Metrics):
    parameter_tensors: int | None = None
    parameters: int | None = None
    trainable_parameters: int | None = None
    trainable_tensors: int | None = None
    optimizer_error: dict | None = None
    not_in_optimizer: list | None = None       # trainable parameters no param group holds
    not_in_optimizer_count: int | None = None
    not_in_optimizer_numel: int | None = None
    step_error: dict | None = None
    loss_requires_grad: bool | None = None
    loss_rebuilt: bool | None = None           # backward() ran on a leaf: a loss rebuilt from its value, cut off
    unregistered: dict | None = None           # modules/parameters that took part but are not registered
    no_grad_path: list | None = None           # trainable parameters the loss does not reach
    no_grad_path_numel: int | None = None
    grads_at_step: dict | None = None
    grads_all_zero: bool | None = None    # every gradient there at the step and exactly zero (not missing)
    zero_grad_at_step: list | None = None
    strided: list | None = None                # pool/conv strides larger than their kernels
    accumulation: dict | None = None           # gradients that grow step over step (user train_step)
    custom_train_step: bool | None = None
    call_to_call_change: float | None = None   # the same input twice, eval mode: fresh layers differ
    last_batch: dict | None = None             # the step on the epoch's last, smaller batch: its size, any error


class Structure(Probe):
    metrics_type = StructureMetrics
    name = "structure"
    title = "Inspect the module tree, the optimizer and the autograd graph"
    order = 5
    share = 0.03

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        # 1. a fresh model, its registered parameters and modules before any forward
        model = patient.new_model()
        named = dict(model.named_parameters())
        params = {id(p): p for p in named.values()}
        names = {id(p): n for n, p in named.items()}
        modules_before = {id(m) for m in model.modules()}
        trainable = {i for i, p in params.items() if p.requires_grad}
        metrics: dict = {"parameter_tensors": len(params), "parameters": sum(p.numel() for p in params.values()),
                         "trainable_parameters": sum(params[i].numel() for i in trainable),
                         "trainable_tensors": len(trainable)}
        # 2. the optimizer's param groups (learning rate zero, so the steps change nothing)
        try:
            optimizer = make_still_optimizer(patient, model)
        except Exception as exc:
            metrics["optimizer_error"] = error_record(exc)
            return self.result(metrics=metrics, data={})
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        metrics.update(not_in_optimizer(trainable - in_opt, params, names))
        # 3. two traced steps on one batch
        try:
            batch = patient.fixed_batch()
        except Exception as exc:  # the user's dataset raised: evidence (the warm-up reports it too)
            return self.result(status="failed", metrics=metrics, error={**error_record(exc), "phase": "loading a batch"})
        traces = []
        for _ in range(TRACED_STEPS):  # always both: what they show must not depend on the clock
            traces.append(traced_step(patient, model, optimizer, batch, {i: params[i] for i in trainable}))
        first = traces[0]
        metrics["step_error"] = first.error
        metrics["loss_requires_grad"] = first.loss_requires_grad
        metrics["loss_rebuilt"] = first.loss_rebuilt
        # 4. what took part that is not registered; what is registered but got no gradient
        metrics["unregistered"] = unregistered(model, traces, params, modules_before)
        metrics.update(gradient_reach(first, trainable, params, names, model))
        # 5. strides that skip inputs
        metrics["strided"] = strided_gaps(first, model)
        # 6. accumulated gradients (the user's own step only: the default one zeroes them)
        metrics["accumulation"] = accumulation(traces, trainable) if patient.train_step is not None else None
        metrics["custom_train_step"] = patient.train_step is not None
        # 7. does the same input give the same output twice (eval mode)? fresh layers say no
        metrics["call_to_call_change"] = call_drift(model, batch)
        # 8. the last batch of an epoch, smaller than the rest (a DataLoader keeps it unless drop_last=True)
        metrics["last_batch"] = last_batch_step(patient, model, optimizer)
        return self.result(metrics=metrics)  # the traces hold gradient copies: not kept


def last_batch_step(patient, model: nn.Module, optimizer) -> dict | None:
    """One step (learning rate zero) on the last batch of an epoch: the ``len(data) % batch_size`` samples that
    end it, which the user's DataLoader keeps by default. A model that hard-codes the batch size (``x.view(64,
    -1)``) or a BatchNorm handed a single sample trains every batch but that one, and dies at the end of the
    first epoch. None when every batch is full, or the user's loader drops the last one (``data.drop_last``)."""
    n, size = len(patient.train_data), patient.batch_size
    rest = n % size if n and size else 0
    if not rest or n < size or patient.drop_last:
        return None
    out = {"samples": rest, "dataset": n, "batch_size": size}
    try:
        batch = patient.batch_of(range(n - rest, n))
    except Exception:   # loading is the data scan's to judge
        return None
    try:
        with preserved_rng():
            patient.step(model, optimizer, batch)
    except Exception as exc:
        out["error"] = error_record(exc)
    finally:
        optimizer.zero_grad(set_to_none=True)
    return out


def accumulation_of(patient) -> dict | None:
    """The gradient ratio of two identical calls of ``patient``'s step on a fresh model (for cures)."""
    model = patient.new_model()
    params = {id(p): p for p in model.parameters() if p.requires_grad}
    optimizer = make_still_optimizer(patient, model)
    batch = patient.fixed_batch()
    traces = [traced_step(patient, model, optimizer, batch, params) for _ in range(TRACED_STEPS)]
    return accumulation(traces, set(params))


def call_drift(model: nn.Module, batch) -> float | None:
    """Relative change of the model's output between two eval-mode calls on the same inputs (0 when deterministic)."""
    try:
        inputs, _ = split_batch(batch)
        was_training = model.training
        model.eval()
        with torch.no_grad(), preserved_rng():
            a, b = model(inputs), model(inputs)
        model.train(was_training)
    except Exception:  # custom batches or outputs: not measurable, not an error
        return None
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape \
            or not a.is_floating_point() or not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        return None
    return float((a - b).double().norm() / max(float(a.double().norm()), 1e-12))


def make_still_optimizer(patient, model: nn.Module) -> torch.optim.Optimizer:
    """The user's optimizer over ``model`` at learning rate zero (their own LR when the class refuses zero)."""
    try:
        return patient.make_optimizer(model, lr=0.0)
    except (TypeError, ValueError):
        return patient.make_optimizer(model)


def not_in_optimizer(missing: set[int], params: dict, names: dict) -> dict:
    listed = sorted(missing, key=lambda i: names[i])
    return {"not_in_optimizer": [{"name": names[i], "shape": list(params[i].shape), "numel": params[i].numel()}
                                 for i in listed[:MAX_LISTED]],
            "not_in_optimizer_count": len(missing),
            "not_in_optimizer_numel": sum(params[i].numel() for i in missing)}


def unregistered(model: nn.Module, traces: list[StepTrace], params: dict, modules_before: set[int]) -> list[dict]:
    """Graph leaves that are not the model's registered parameters, grouped by the module that owns them.

    When the step raised before ``backward()`` (no graph to walk: a layer built in forward() on the
    CPU while the model is on a GPU, say), the new modules that forward() called stand in for the leaves.
    """
    first = traces[0]
    stray = {i: m for i, m in first.called.items()
             if i not in modules_before and any(True for _ in m.parameters(recurse=False))}
    owner_of = {id(p): (i, pn) for i, m in stray.items() for pn, p in m.named_parameters(recurse=False)}
    naming = _Naming(model, first.module_names, plain_paths(model))
    leaves = dict(first.leaves) if first.graph_walked else \
        {id(p): p for m in stray.values() for p in m.parameters(recurse=False)}
    later = [t for t in traces[1:] if not t.error]
    seen_later = set().union(*(t.leaves.keys() | {id(p) for m in t.called.values() for p in m.parameters()}
                               for t in later)) if later else set()
    groups: dict[Any, dict] = {}
    for lid, leaf in leaves.items():
        if lid in params:
            continue
        mid, pname = owner_of.get(lid, (None, None))
        module = stray.get(mid)
        g = groups.setdefault(mid if mid is not None else lid,
                              {**naming(mid, lid), "module": short_module(module) if module is not None else None,
                               "shapes": [], "numel": 0, "fresh_each_call": True if later else None})
        g["shapes"].append([pname, list(leaf.shape)] if pname else list(leaf.shape))
        g["numel"] += leaf.numel()
        if later and lid in seen_later:
            g["fresh_each_call"] = False
    return list(groups.values())[:MAX_LISTED]


@dataclass
class _Naming:
    """The name and kind of an unregistered module (by id) or tensor (by id)."""
    model: nn.Module
    module_names: dict[int, str]   # the module tree right after the first call
    paths: dict[int, str]          # plain containers and attributes

    def __call__(self, mid: int | None, lid: int) -> dict:
        if mid is not None:
            if mid in self.module_names:
                return {"name": self.module_names[mid], "kind": "created in forward() and assigned to the model"}
            if mid in self.paths:
                return {"name": self.paths[mid], "kind": "held in a plain Python container"}
            return {"name": None, "kind": "created in forward()"}
        if lid in self.paths:
            return {"name": self.paths[lid], "kind": "a plain tensor attribute, not an nn.Parameter"}
        return {"name": None, "kind": "a tensor that is not an nn.Parameter of the model"}


def gradient_reach(trace: StepTrace, trainable: set[int], params: dict, names: dict, model: nn.Module) -> dict:
    """Trainable registered parameters the loss does not reach: per owning module, called in forward or not."""
    called_names = {n for n, m in model.named_modules() if id(m) in trace.called}
    no_path, zero = {}, []
    for i in sorted(trainable, key=lambda i: names[i]):
        grad = trace.grads.get(i)
        if i not in trace.leaves and trace.graph_walked and not trace.error:
            mod = owner(names[i])
            entry = no_path.setdefault(mod, {"module": mod, "called": mod in called_names or mod == "(model)",
                                             "numel": 0, "parameters": []})
            entry["numel"] += params[i].numel()
            entry["parameters"].append(names[i])
        elif not trace.error and (grad is None or (grad.numel() and float(grad.abs().max()) <= ZERO_GRAD_ATOL)):
            zero.append(names[i])  # in the graph, yet None or all zeros when optimizer.step() runs
    seen = [g for g in trace.grads.values()  # a non-finite gradient is a gradient too
            if g is not None and g.numel() and not bool((g.abs() <= ZERO_GRAD_ATOL).all())]
    present = [g for g in trace.grads.values() if g is not None and g.numel()]
    return {"no_grad_path": list(no_path.values())[:MAX_LISTED],
            "no_grad_path_numel": sum(e["numel"] for e in no_path.values()),
            "zero_grad_at_step": zero[:MAX_LISTED],
            "grads_at_step": bool(seen) if trace.grads and not trace.error else None,
            # gradients there at the step, every one exactly zero (not missing): zeroed in place between backward()
            # and step(), or a loss that does not move with the weights here (an output ReLU 0 on every sample)
            "grads_all_zero": bool(present) and not seen if trace.grads and not trace.error else None}


def strided_gaps(trace: StepTrace, model: nn.Module) -> list[dict]:
    """Pooling/conv calls whose stride skips inputs, named by their module, each reported once."""
    names = {id(m): n for n, m in model.named_modules()}
    out, seen = [], set()
    for info in trace.strided:
        if not skips_inputs(info):
            continue
        mid = info.get("module_id")
        module = trace.called.get(mid) if mid is not None else None
        where = names.get(mid) if mid is not None else None
        item = {"module": where if where else (type(module).__name__ if module is not None else "forward() code"),
                "type": type(module).__name__ if module is not None else None,
                "op": info["op"], "kernel": info["kernel"], "stride": info["stride"], "dilation": info["dilation"]}
        key = (item["module"], item["op"], tuple(item["kernel"]), tuple(item["stride"]))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out[:MAX_LISTED]


def accumulation(traces: list[StepTrace], trainable: set[int]) -> dict | None:
    """Compare the gradients at two identical steps: ratio ~1 when zeroed, ~2 when they accumulate."""
    if len(traces) < 2 or any(t.error for t in traces):
        return None
    g1, g2 = traces[0].grads, traces[1].grads
    dot11 = dot12 = dot22 = 0.0
    for i in trainable:
        a, b = g1.get(i), g2.get(i)
        if a is None or b is None or a.shape != b.shape:
            continue
        a, b = a.double().flatten(), b.double().flatten()
        dot11 += float(a @ a)
        dot12 += float(a @ b)
        dot22 += float(b @ b)
    if not all(math.isfinite(d) for d in (dot11, dot12, dot22)):  # a NaN/Inf gradient: no ratio to read
        return {"ratio": None, "cosine": None, "first_norm": dot11 ** 0.5 if dot11 >= 0 else dot11,
                "second_norm": dot22 ** 0.5 if dot22 >= 0 else dot22, "nonfinite": True}
    if dot11 <= 0.0:
        return {"ratio": None, "cosine": None, "first_norm": 0.0, "second_norm": dot22 ** 0.5}
    return {"ratio": dot12 / dot11, "cosine": dot12 / max((dot11 * dot22) ** 0.5, 1e-300),
            "first_norm": dot11 ** 0.5, "second_norm": dot22 ** 0.5,
            # optimizer.step() ran in every call: the summed gradient was applied, not accumulated on purpose
            "stepped_every_call": all(t.stepped for t in traces)}

"""Read the model's outputs and the loss at initialisation: do they fit together?

A cheap, static probe (three forward passes, no training). On a fresh model and
the fixed batch it measures:

- what the outputs *are*, judged by their values, not by the layer names:
  log-probabilities (all <= 0, ``exp`` sums to 1 per row), probabilities (in
  [0, 1], sum to 1), values in [0, 1], non-negative (ReLU-like: exact zeros), or
  unbounded scores; plus the op and the module that produced them (supporting
  evidence only: a custom ``forward`` is judged by what it outputs);
- what the loss *does* with them, traced op by op with a ``TorchFunctionMode``:
  the first loss op applied to the raw outputs (``nll_loss``, ``cross_entropy``,
  ``binary_cross_entropy``, ``log`` ...), the smallest value a ``log`` receives,
  and any broadcast between outputs and targets that grows the tensor;
- the loss at init and its expected value for a correct pairing (ln C, ln 2);
- the loss on nested batches of about B/2, B and 2B samples (a summed loss doubles);
- whether a sample's output depends on the other samples in its batch (``batch_mixing``);
- the user's exception, when the loss raises, with the phase it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nandoctor.patient import split_batch
from nandoctor.probes.batch_mixing import batch_mixing, rows as _rows
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.training import error_record
from nandoctor.records import Metrics, ProbeResult

ROW_SUM_TOL = 1e-3      # |sum_c p - 1| (or |logsumexp - 0|) below this: rows are normalised
LOGPROB_MAX = 1e-4      # log-probabilities are <= 0 (up to rounding)
SCALE_MIN_SAMPLES = 2   # the batch-size comparison needs at least this many samples in its smallest batch

# ops after which a tensor derived from the outputs is no longer "raw" (made positive or normalised)
NORMALISERS = {"softmax", "log_softmax", "sigmoid", "logsigmoid", "exp", "softplus", "_softmax", "_log_softmax"}
# ops that only reshape or move a tensor: the producer of the output is looked up through them
VIEW_OPS = {"view", "reshape", "squeeze", "unsqueeze", "flatten", "contiguous", "float", "to", "double",
            "__getitem__", "permute", "transpose", "clone", "detach", "view_as", "reshape_as", "type"}
# loss ops whose first argument is the model's prediction
LOSS_OPS = {"nll_loss", "cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits",
            "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "soft_margin_loss",
            "multilabel_soft_margin_loss", "poisson_nll_loss", "gaussian_nll_loss", "multi_margin_loss"}
LOG_OPS = {"log", "log2", "log10", "log_"}
# elementwise ops where outputs and targets meet and may broadcast to a bigger tensor
BROADCAST_OPS = {"sub", "__sub__", "__rsub__", "rsub", "add", "__add__", "__radd__", "mul", "__mul__", "__rmul__",
                 "div", "__truediv__", "__rtruediv__", "true_divide", "maximum", "minimum", "pow", "__pow__",
                 "where", "sub_", "mul_"}
DIVIDE_OPS = {"div", "__truediv__", "true_divide"}
ELEMENTWISE_LOSSES = {"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
                      "binary_cross_entropy_with_logits", "soft_margin_loss", "poisson_nll_loss"}


def _name(func) -> str:
    return getattr(func, "__name__", None) or str(func)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _first_tensor(obj) -> torch.Tensor | None:
    ts = _tensors(obj)
    return ts[0] if ts else None


class ProducerTrace(TorchFunctionMode):
    """Remembers, for each tensor a forward pass creates, the op that produced it (through views)."""

    def __init__(self):
        super().__init__()
        self.producer: dict[int, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = _name(func)
        if isinstance(result, torch.Tensor):
            src = _first_tensor(args)
            if name in VIEW_OPS and src is not None and id(src) in self.producer:
                self.producer[id(result)] = self.producer[id(src)]
            else:
                self.producer[id(result)] = name
        return result


class LossTrace(TorchFunctionMode):
    """Follows the outputs and the targets through the loss: which ops see them, raw or normalised."""

    def __init__(self, outputs: torch.Tensor, targets: Any):
        super().__init__()
        self.keep: list[torch.Tensor] = []          # keeps traced tensors alive so their ids stay unique
        self.tags: dict[int, tuple[str, bool]] = {}  # id -> (source "outputs"/"targets", raw)
        self.events: list[dict] = []
        self._tag(outputs, "outputs", True)
        for t in _tensors(targets):
            self._tag(t, "targets", False)

    def _tag(self, t: torch.Tensor, source: str, raw: bool) -> None:
        self.keep.append(t)
        self.tags[id(t)] = (source, raw)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not isinstance(result, torch.Tensor):
            return result
        name = _name(func)
        ins = _tensors(args) + _tensors(kwargs)
        tagged = [(t, self.tags[id(t)]) for t in ins if id(t) in self.tags]
        if not tagged:
            return result
        from_outputs = [(t, raw) for t, (s, raw) in tagged if s == "outputs"]
        sources = sorted({s for _, (s, _) in tagged})
        raw = any(r for _, r in from_outputs) and name not in NORMALISERS
        event = {"op": name, "sources": sources, "raw": any(r for _, r in from_outputs),
                 "in_shapes": [list(t.shape) for t in ins], "out_shape": list(result.shape)}
        if from_outputs and (name in LOG_OPS or name in LOSS_OPS):
            first = from_outputs[0][0]
            f = first.detach().float() if first.is_floating_point() else None
            if f is not None and f.numel():
                fin = f[torch.isfinite(f)]
                event["in_nan"] = int(f.numel() - fin.numel())
                if fin.numel():
                    event["in_min"], event["in_max"] = float(fin.min()), float(fin.max())
        if len(sources) == 2 and len(ins) >= 2 and name in BROADCAST_OPS:
            biggest = max(t.numel() for t in ins)
            event["expanded"] = result.numel() > biggest
        self.events.append(event)
        self._tag(result, "outputs" if from_outputs else "targets", raw)
        return result


def output_kind(out: torch.Tensor) -> dict:
    """What the outputs are, judged by their values. Class dim is 1 for ``[N, C, ...]`` outputs."""
    o = out.detach().float()
    finite = o[torch.isfinite(o)]
    info = {"shape": list(o.shape), "nonfinite": int(o.numel() - finite.numel())}
    if not finite.numel():
        return {**info, "kind": "nonfinite"}
    lo, hi = float(finite.min()), float(finite.max())
    info.update(min=lo, max=hi, mean=float(finite.mean()), std=float(finite.std()) if finite.numel() > 1 else 0.0,
                zero_share=float((o == 0).float().mean()))
    rows = o.dim() >= 2 and o.shape[1] >= 2
    if rows:
        # the class dim is 1 ([N, C, ...]); sequence models often put it last ([N, T, C])
        dims = [1] + ([o.dim() - 1] if o.dim() > 2 and o.shape[-1] >= 2 else [])
        sum_dev = min(_finite_max((o.sum(d) - 1).abs()) for d in dims)   # rows holding NaN are left out
        lse_dev = min(_finite_max(torch.logsumexp(o, d).abs()) for d in dims)
        info.update(classes=int(o.shape[1]), row_sum_dev=sum_dev, logsumexp_dev=lse_dev,
                    all_zero_rows=float((o == 0).all(dim=1).float().mean()))
        if o.shape[0] >= 2:  # normalised over the batch instead of the classes: softmax(dim=0)
            if hi <= LOGPROB_MAX and _finite_max(torch.logsumexp(o, 0).abs()) <= ROW_SUM_TOL:
                info["normalised_over_batch"] = "log-probabilities"
            elif lo >= 0 and hi <= 1 and _finite_max((o.sum(0) - 1).abs()) <= ROW_SUM_TOL:
                info["normalised_over_batch"] = "probabilities"
    if rows and hi <= LOGPROB_MAX and info["logsumexp_dev"] <= ROW_SUM_TOL:
        kind = "log-probabilities"
    elif rows and lo >= 0 and hi <= 1 and info["row_sum_dev"] <= ROW_SUM_TOL:
        kind = "probabilities"
    elif lo >= 0 and hi <= 1:
        kind = "unit-interval"
    elif lo >= 0:
        kind = "non-negative"
    else:
        kind = "unbounded"
    return {**info, "kind": kind}


def _finite_max(t: torch.Tensor) -> float:
    """The largest finite value of ``t`` (a row's deviation from a normalised one); inf when none is finite."""
    fin = t[torch.isfinite(t)]
    return float(fin.max()) if fin.numel() else math.inf


def target_info(targets: Any) -> dict | None:
    t = targets if isinstance(targets, torch.Tensor) else None
    if t is None:
        return None
    info = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "float": t.is_floating_point()}
    if t.numel():
        tf = t.detach().float()
        fin = tf[torch.isfinite(tf)]
        if fin.numel():
            info.update(min=float(fin.min()), max=float(fin.max()))
    return info


def traced_forward(model: nn.Module, inputs: Any) -> tuple[Any, str | None, dict]:
    """Forward pass (no grad) that also returns the op that produced the output and the last leaf module.

    The trace is only supporting evidence: if the user's model does not run under a
    ``TorchFunctionMode`` (compiled or scripted code), it runs again untraced.
    """
    order: list[tuple[str, str, int]] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append((n, type(mod).__name__, id(o))))
               for n, m in model.named_modules() if not list(m.children())]
    trace = ProducerTrace()
    try:
        try:
            with torch.no_grad(), trace:
                out = model(inputs)
        except Exception:
            order.clear()
            trace = None
            with torch.no_grad():
                out = model(inputs)  # the user's error, if any, is raised from here
    finally:
        for h in handles:
            h.remove()
    first = _first_tensor(out)
    producer = trace.producer.get(id(first)) if trace is not None and first is not None else None
    last = {}
    if order:
        name, kind, oid = order[-1]
        last = {"name": name, "type": kind, "is_output": first is not None and id(first) == oid}
    return out, producer, last


def loss_call_in_step(patient, batch) -> tuple[Any, Any] | None:
    """(outputs, targets) as the user's ``train_step`` passes them to the loss, from one step at lr=0.

    A custom step often reshapes the outputs before the loss; judging ``model(inputs)``
    instead would blame the pairing for shapes the user already fixed.
    """
    calls: list[tuple[Any, Any]] = []

    def recording_loss(outputs, targets, *args, **kwargs):
        calls.append((outputs.detach() if isinstance(outputs, torch.Tensor) else outputs, targets))
        return patient.loss_fn(outputs, targets, *args, **kwargs)

    model = patient.new_model()
    try:
        optimizer = patient.make_optimizer(model, lr=0.0)
        patient.variant("record the loss inputs", loss_fn=recording_loss).step(model, optimizer, batch)
    except Exception:
        pass  # a crash of the user's step is the warm-up's evidence; the calls seen so far still count
    return calls[0] if calls else None


def summarise_loss(events: list[dict]) -> dict:
    """The loss as seen from the outputs: first loss op on them, log inputs, broadcasts."""
    raw_ops = [e["op"] for e in events if "outputs" in e["sources"] and e["raw"]]
    applies = next((op for op in raw_ops if op in LOSS_OPS | LOG_OPS | NORMALISERS), None)
    logs = [e for e in events if e["op"] in LOG_OPS and "outputs" in e["sources"]]
    log_of_raw = [e for e in logs if e["raw"]]
    expanded = [e for e in events if e.get("expanded")]
    elementwise = [e for e in events if e["op"] in ELEMENTWISE_LOSSES and len(e["in_shapes"]) >= 2
                   and e["sources"] == ["outputs", "targets"]]
    return {"ops": [e["op"] for e in events][:40], "applies_to_raw": applies, "raw_ops": raw_ops[:20],
            "normalises_by_sum": "sum" in raw_ops and any(op in raw_ops for op in DIVIDE_OPS),
            "log_of_raw": bool(log_of_raw),
            "log_input_min": min((e["in_min"] for e in log_of_raw if "in_min" in e), default=None),
            "log_input_nonfinite": sum(e.get("in_nan", 0) for e in log_of_raw),
            "loss_input_min": next((e.get("in_min") for e in events if e["op"] in LOSS_OPS), None),
            "loss_input_max": next((e.get("in_max") for e in events if e["op"] in LOSS_OPS), None),
            "broadcast": [{"op": e["op"], "shapes": e["in_shapes"][:2], "result": e["out_shape"]}
                          for e in expanded][:3],
            "elementwise_shapes": [{"op": e["op"], "shapes": e["in_shapes"][:2]} for e in elementwise][:3]}


def loss_module_info(loss_fn) -> dict:
    """Class/function name of the loss and its reduction, when it is a torch loss module."""
    fn = getattr(loss_fn, "func", loss_fn)  # functools.partial
    info = {"name": type(fn).__name__ if isinstance(fn, nn.Module) else getattr(fn, "__name__", type(fn).__name__),
            "module": isinstance(fn, nn.Module)}
    if isinstance(fn, nn.Module):
        info["reduction"] = getattr(fn, "reduction", None)
    elif getattr(loss_fn, "keywords", None) and "reduction" in loss_fn.keywords:
        info["reduction"] = loss_fn.keywords["reduction"]
    return info


def expected_initial_loss(applies: str | None, kind: str, out_shape: list[int]) -> float | None:
    """The loss of a model that predicts uniformly, for pairings where it is known."""
    classes = out_shape[1] if len(out_shape) >= 2 else 1
    if applies == "cross_entropy" and classes >= 2:
        return math.log(classes)
    if applies == "nll_loss" and kind == "log-probabilities":
        return math.log(classes)
    if applies == "binary_cross_entropy_with_logits":
        return math.log(2)
    if applies == "binary_cross_entropy" and kind in ("unit-interval", "probabilities"):
        return math.log(2)
    return None


def uniform_loss(patient, applies: str | None, kind: str, out, targets) -> float | None:
    """The user's own loss of outputs that predict uniformly (zero logits, p = 0.5, log(1/C)) on this batch's
    targets: the expected loss at init with the loss's own weights (``pos_weight``, class weights, label
    smoothing) counted. None where no uniform output is defined for the pairing or the loss refuses it."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() < 1:
        return None
    classes = out.shape[1] if out.dim() >= 2 else 1
    if applies in ("cross_entropy", "binary_cross_entropy_with_logits"):
        uniform = torch.zeros_like(out)
    elif applies == "binary_cross_entropy" and kind in ("unit-interval", "probabilities"):
        uniform = torch.full_like(out, 0.5)
    elif applies == "nll_loss" and kind == "log-probabilities" and classes >= 2:
        uniform = torch.full_like(out, -math.log(classes))
    else:
        return None
    try:
        with torch.no_grad():
            value = patient.loss_fn(uniform.detach(), targets)
    except Exception:  # a loss that wants more than (outputs, targets): the formula stands in
        return None
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def _loss_value(patient, model, batch) -> float | None:
    if patient.train_step is not None:
        return _step_loss(patient, model, batch)
    _, loss = patient.compute_loss(model, batch)
    return float(loss) if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


def _step_loss(patient, model, batch) -> float | None:
    """The loss the user's own ``train_step`` returns for ``batch``, from a copy of ``model`` stepped at LR 0: a
    sum over the samples written inside the step (``reduction="sum"`` in the step's own loss call) shows here,
    where ``loss_fn`` alone would say mean."""
    import copy
    twin = copy.deepcopy(model)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.0)
    with torch.enable_grad():
        loss = patient.train_step(twin, batch, patient.loss_fn, optimizer)
    if isinstance(loss, torch.Tensor):
        return float(loss.detach()) if loss.numel() == 1 else None
    return float(loss) if isinstance(loss, (int, float)) else None


def batch_scaling(patient, model) -> dict:
    """Loss on nested batches of about B/2, B and 2B samples (eval mode: no dropout, no BN noise); with the
    user's ``train_step``, the loss that step returns (``_step_loss``).

    ``fixed_batch`` draws the same permutation for every size, so each batch contains the
    smaller ones: a mean loss stays about level, a summed loss doubles at each step.
    """
    half = min(patient.batch_size, len(patient.train_data) // 2)
    quarter = half // 2
    if quarter < SCALE_MIN_SAMPLES:
        return {}
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses = [_loss_value(patient, model, patient.fixed_batch(n)) for n in (quarter, 2 * quarter, 4 * quarter)]
    except Exception:
        return {}
    finally:
        model.train(was)
    ratios = [b / a if a is not None and b is not None and a > 0 and b > 0 and math.isfinite(a / b) else None
              for a, b in zip(losses, losses[1:])]
    out = {"scale_batches": [quarter, 2 * quarter, 4 * quarter], "scale_losses": losses, "scale_ratios": ratios}
    out["scale_additivity"] = additivity(patient, model, quarter, losses)
    return out


def additivity(patient, model, quarter: int, losses: list) -> list | None:
    """For each doubling (q -> 2q -> 4q), the loss of the doubled batch over the sum of the losses of its two
    disjoint halves: 1 for a loss summed over the samples, 1/2 for a mean, whatever the samples' own losses
    (the doubling ratio alone also moves with how hard the added samples happen to be)."""
    was = model.training
    model.eval()
    try:
        out = []
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k, n in enumerate((quarter, 2 * quarter)):
                second = _rows(patient.fixed_batch(2 * n), n, 2 * n)
                whole, first = losses[k + 1], losses[k]
                other = _loss_value(patient, model, second) if second is not None else None
                parts = (first or 0.0) + (other or 0.0)
                out.append(whole / parts if None not in (whole, first, other) and parts > 0 and
                           math.isfinite(whole / parts) else None)
        return out
    except Exception:
        return None
    finally:
        model.train(was)


@dataclass
class OutputsMetrics(Metrics):
    outputs: dict | None = None              # shape, kind (logits, probabilities, log-probabilities, ...)
    output_op: str | None = None             # the op that produced them
    last_module: dict | None = None
    targets: dict | None = None
    loss: dict | None = None                 # the loss callable's name and settings
    loss_inputs_from: str | None = None      # model(inputs) or the user's train_step
    initial_loss: float | None = None
    loss_trace: dict | None = None           # the ops between the outputs and the loss
    loss_warnings: list | None = None
    loss_error: dict | None = None
    trace_error: str | None = None
    expected_initial_loss: float | None = None
    scale_batches: list | None = None        # the batch-size scaling of the loss (sum vs mean)
    scale_losses: list | None = None
    scale_ratios: list | None = None
    scale_additivity: list | None = None     # loss(2n) / (loss(first n) + loss(other n)): 1 summed, 1/2 mean
    forward_error: dict | None = None
    unsupported_output: str | None = None
    batch_mixing: dict | None = None         # the second half's outputs with and without the first half beside it
    mode_dependent: bool | None = None       # BatchNorm or dropout: train() and eval() compute different things


class Outputs(Probe):
    metrics_type = OutputsMetrics
    name = "outputs"
    title = "Read the outputs and the loss at initialisation"
    order = 10
    share = 0.03
    needs_pairs = True

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        # 1. a fresh model and the fixed batch
        model = patient.new_model()
        batch = patient.fixed_batch()
        inputs, targets = split_batch(batch)
        # 2. the forward pass: what the outputs are, and (supporting) who produced them
        try:
            out, producer, last = traced_forward(model, inputs)
        except Exception as exc:
            return self.result(metrics={"forward_error": {**error_record(exc), "phase": "forward"}})
        # 2b. with the user's own train_step, judge what its loss call actually receives
        seen = loss_call_in_step(patient, batch) if patient.train_step is not None else None
        if seen is not None:
            out, targets = seen
        first = _first_tensor(out)
        if first is None or not first.is_floating_point():
            return self.result(metrics={"unsupported_output": type(out).__name__})
        metrics: dict = {"outputs": output_kind(first), "output_op": producer, "last_module": last,
                         "targets": target_info(targets), "loss": loss_module_info(patient.loss_fn),
                         "loss_inputs_from": "train_step" if seen is not None else "model(inputs)"}
        # 3. the loss, traced from the outputs and the targets
        metrics.update(self._trace_loss(patient, out, first, targets))
        metrics["batch_mixing"] = batch_mixing(model, inputs)
        metrics["mode_dependent"] = any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))
                                        for m in model.modules())
        ctx.progress(1, 3)
        # 4. the expected loss at init for this pairing, and the batch-size scaling
        pairing = metrics.get("loss_trace") or {}
        kind, shape = metrics["outputs"]["kind"], metrics["outputs"]["shape"]
        metrics["expected_initial_loss"] = uniform_loss(patient, pairing.get("applies_to_raw"), kind, out, targets) \
            or expected_initial_loss(pairing.get("applies_to_raw"), kind, shape)
        if "loss_error" not in metrics:  # three forward passes: always, so the verdict never depends on the clock
            metrics.update(batch_scaling(patient, model))
        ctx.progress(3, 3)
        return self.result(metrics=metrics)

    def _trace_loss(self, patient, out, first: torch.Tensor, targets) -> dict:
        trace = LossTrace(first, targets)
        try:
            with torch.no_grad(), warnings.catch_warnings(record=True) as caught, trace:
                warnings.simplefilter("always")
                loss = patient.loss_fn(out, targets)
        except Exception as exc:
            try:  # is it the user's loss, or our trace? run it untraced to tell
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    loss = patient.loss_fn(out, targets)
            except Exception as exc2:
                return {"loss_error": {**error_record(exc2), "phase": "loss"},
                        "loss_trace": summarise_loss(trace.events)}
            return {"initial_loss": _scalar(loss), "trace_error": f"{type(exc).__name__}: {exc}"[:200]}
        return {"initial_loss": _scalar(loss), "loss_trace": summarise_loss(trace.events),
                "loss_warnings": [str(w.message)[:200] for w in caught][:3]}


def _scalar(loss) -> float | None:
    return float(loss) if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None

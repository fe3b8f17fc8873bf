"""Instrumentation shared by the probes: what happens inside the model during a probe.

``Recorder`` attaches forward hooks to the leaf modules and step hooks to the optimizer (so it
works with the user's own ``train_step`` too) and records, per step:
- per-layer gradient norm and weight norm (layers = modules that own parameters);
- per-layer activation mean/std, and for activation layers the share of units that were
  dead in each call and ever active (ReLU family) or pinned at their bounds (sigmoid/tanh);
- the first module whose output turned non-finite while its input was finite, and the
  first parameter whose gradient did, with the step;
- the wall time of each optimizer step (``step_seconds``).

Cost. The hooks leave every statistic on the model's device, written into one preallocated
buffer; the host reads it in one transfer per step, at the optimizer step (``flush``; ``detach``
and ``summary`` flush too). A statistic is therefore readable once its step is over. Each
activation costs a sum and a sum of squares (a ReLU also one indicator pass and one reduction
per unit); a training-mode BatchNorm's come from the batch statistics it saved for backward.
``every=k`` computes the activation statistics (and the weight norms) on every k-th step only and
``sub_batch=k`` on the first k samples (rows of dim 0) of each output: they change the cost, not
how a statistic is computed; gradient norms are recorded on every step. ``moments=False`` leaves out
the activation mean and std (a sum of squares per output; what remains is what the overfit probe's
diagnoses read: the dead and pinned shares, the forward order, the non-finite check). Without them, every
measured step after the first is *lean*: only the activation leaves (ReLU and bounded families) are hooked,
for their shares, on the units axes the full first step found; the other leaves would only sum their outputs
for the non-finite check, which the gradients and the replay do there as on an unmeasured step; the weight
norms come from the full step only, and a lean step whose gradients are not finite adds no shares. Between measured steps the
leaf hooks are off (a hooked module takes torch's slower call path) and the model's calls are
only remembered; when a step's gradients come out non-finite, its forward calls are run again
with the hooks on before the optimizer steps (``_replay``), so the module where the non-finite
value was born is still named at its step (not for a batch that holds NaN itself: no module is where
that was born, and the data scan names the samples). (Without ``grads`` there is nothing to tell, so the
hooks stay on and check every step.) The non-finite check covers the whole output, whatever
``sub_batch`` says: a module's output is non-finite when its sum is (so an output whose float32 sum overflows, values of
order 1e38 / numel, counts as non-finite too), and its input was finite when the output of
the leaf that produced it was (else its own sum says). On an unmeasured step an activation
without parameters is not summed: finite in, finite out, so a NaN is never born there. Update
ratios need ``grads``.

Units (what a dead share counts), by the layer that produced the activation:
- convolution, BatchNorm/InstanceNorm/GroupNorm, pooling, padding, upsampling, channel
  dropout: the channels (dim 1);
- Linear, Embedding, LayerNorm/RMSNorm, recurrent layers, attention: the features, the last
  dim (``[N, C]`` or ``[N, T, C]``);
- activation, dropout and identity modules follow the layer that feeds them: the module whose
  output is their input, else the leaf called just before them. When the shape changed on
  the way (a flatten or transpose between), the dim that holds the feeder's unit count;
- anything else, and a feeder that tells nothing: dim 1 for ``[N, C]`` and 4-5D outputs, the
  last dim for ``[N, T, C]``.
The recorder never changes the model; ``detach()`` removes every hook.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.PReLU)
NON_NEGATIVE = (nn.ReLU, nn.ReLU6)   # outputs >= 0: a unit is active where its output is non-zero
BOUNDED = (nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Softmax)
SATURATION_MARGIN = 0.01   # within 1% of a bound counts as saturated (sigmoid < 0.01 or > 0.99)
INACTIVE_BELOW = 0.01      # a ReLU unit active on fewer than 1% of the positions of a call counts as dead (SageMaker)
_TINY32 = 2.0 ** -126      # the smallest normal float32
_TINY32_INV = 2.0 ** 126
MAX_PENDING = 1 << 16      # device scalars held before a flush is forced (forward passes without optimizer steps)
MAX_REPLAYED = 8           # model calls of an unmeasured step kept for a replay (a custom train_step may call it more)


def _classes(module, *names: str) -> tuple[type, ...]:
    return tuple(getattr(module, n) for n in names if isinstance(getattr(module, n, None), type))


# the layers that decide the units axis of their output; see the module docstring
CHANNEL_LAYERS = (
    _classes(nn.modules.conv, "_ConvNd")
    + _classes(nn.modules.batchnorm, "_BatchNorm") + _classes(nn.modules.instancenorm, "_InstanceNorm")
    + _classes(nn, "GroupNorm", "LocalResponseNorm", "CrossMapLRN2d", "FractionalMaxPool2d", "FractionalMaxPool3d",
               "Dropout1d", "Dropout2d", "Dropout3d", "FeatureAlphaDropout", "Upsample", "PixelShuffle",
               "PixelUnshuffle", "ChannelShuffle")
    + _classes(nn.modules.pooling, "_MaxPoolNd", "_AvgPoolNd", "_AdaptiveAvgPoolNd", "_AdaptiveMaxPoolNd",
               "_LPPoolNd", "_MaxUnpoolNd")
    + _classes(nn.modules.padding, "_ConstantPadNd", "_ReflectionPadNd", "_ReplicationPadNd", "_CircularPadNd"))
FEATURE_LAYERS = _classes(nn, "Linear", "Bilinear", "Embedding", "EmbeddingBag", "LayerNorm", "RMSNorm", "RNNBase",
                          "RNNCellBase", "MultiheadAttention")
ELEMENTWISE = RELU_LIKE + BOUNDED + (nn.Dropout, nn.AlphaDropout, nn.Identity)
CHANNELS, FEATURES, FOLLOW, OTHER = "channels", "features", "follow", "other"


def layer_kind(module: nn.Module) -> str:
    """How a leaf module's output axes are laid out: channels | features | follow (its feeder) | other."""
    if isinstance(module, FEATURE_LAYERS):
        return FEATURES
    if isinstance(module, CHANNEL_LAYERS):
        return CHANNELS
    if isinstance(module, ELEMENTWISE) or type(module).__module__ == "torch.nn.modules.activation":
        return FOLLOW
    return OTHER


def units_axis(kind: str, shape: tuple[int, ...], feeder: tuple[int | None, tuple[int, ...]] | None) -> int | None:
    """The dim of an output of ``shape`` that indexes its units; None below 2 dims.

    ``feeder`` is ``(axis, shape)`` of the output that fed a ``follow`` module.
    """
    nd = len(shape)
    if nd < 2:
        return None
    if kind == CHANNELS:
        return 1
    if kind == FEATURES:
        return nd - 1
    if kind == FOLLOW and feeder is not None and feeder[0] is not None:
        axis, fshape = feeder
        if tuple(fshape) == tuple(shape):
            return axis
        dims = [d for d in range(1, nd) if shape[d] == fshape[axis]]
        if len(dims) == 1:  # reshaped on the way: the dim that still holds the feeder's units
            return dims[0]
    return nd - 1 if nd == 3 else 1


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


def _flat(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of a dense tensor's memory (contiguous or channels-last), else None."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)   # a view: no copy
    return None


class _Slots:
    """The pending statistics of a step: 0-d values written in place into one preallocated float32
    buffer per device, read onto the host in one transfer.

    Keeping each call's 0-d result tensor alive until the step's end scatters small long-lived
    blocks between the activations, and the CPU allocator then maps fresh pages for them (page
    faults: +10% on a CNN step); the slots stay in one block allocated once.
    """

    def __init__(self):
        self.n = 0
        self.buffers: dict[torch.device, torch.Tensor] = {}
        self.views: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        self.primary: torch.device | None = None
        self.elsewhere: dict[int, torch.device] = {}   # a model split across devices

    def slot(self, device: torch.device) -> tuple[int, torch.Tensor]:
        """The next index and the 0-d slot to write it into."""
        i = self.reserve(device, 1)
        return i, self.views[device][i]

    def reserve(self, device: torch.device, k: int) -> int:
        """The next ``k`` consecutive indices (the first is returned), held in ``buffers[device]``."""
        i = self.n
        self.n = i + k
        buf = self.buffers.get(device)
        if buf is None or buf.numel() < i + k:
            grown = torch.zeros(max(1024, 2 * (i + k)), dtype=torch.float32, device=device)
            if buf is not None:
                grown[:buf.numel()].copy_(buf)
            self.buffers[device] = grown
            self.views[device] = grown.unbind(0)   # the 0-d slots, made once
        if self.primary is None:
            self.primary = device
        elif device != self.primary:
            for j in range(i, i + k):
                self.elsewhere[j] = device
        return i

    def put(self, t: torch.Tensor) -> int:
        i, slot = self.slot(t.device)
        slot.copy_(t)
        return i

    def sum(self, t: torch.Tensor) -> int:
        """Sum in float32, on the device: non-finite exactly when an element is (or the sum overflows)."""
        if t.dim() == 0:
            return self.put(t)
        i, slot = self.slot(t.device)
        torch.sum(t, tuple(range(t.dim())), dtype=None if t.dtype in (torch.float32, torch.float64) else torch.float32,
                  out=slot)
        return i

    def sumsq(self, t: torch.Tensor) -> int:
        """Sum of squares: a BLAS dot over the dense memory (on CPU ~10x faster than vector_norm)."""
        flat = _flat(t) if t.dtype == torch.float32 else None
        if flat is None:
            return self.put(torch.linalg.vector_norm(t, dtype=torch.float32 if t.dtype != torch.float64 else None)
                            .square())
        i, slot = self.slot(t.device)
        torch.dot(flat, flat, out=slot)
        return i

    def sumsq_each(self, tensors: list[torch.Tensor]) -> int:
        """The sum of squares of each tensor in consecutive slots; returns the first index: one batched
        norm over them all (on CPU too it beats a dot per tensor, most on many small parameters)."""
        start = self.n
        if not tensors:
            return start
        ts = [t if t.dtype == torch.float32 else t.float() for t in tensors]
        device = ts[0].device
        if all(t.device == device for t in ts) and hasattr(torch, "_foreach_norm"):
            self.reserve(device, len(ts))
            into = self.buffers[device][start:start + len(ts)]
            torch.stack(torch._foreach_norm(ts), out=into)
            into.square_()
            return start
        for t in ts:
            self.sumsq(t)
        return start

    def read(self) -> list[float]:
        """Every pending value as a float (one transfer per device), and start over."""
        n, self.n = self.n, 0
        if n == 0:
            return []
        values = self.buffers[self.primary][:n].tolist()
        if self.elsewhere:
            for device, buf in self.buffers.items():
                if device != self.primary:
                    theirs = buf[:n].tolist()
                    for i, d in self.elsewhere.items():
                        if d == device:
                            values[i] = theirs[i]
            self.elsewhere.clear()
        return values


def _unit_counts(o: torch.Tensor, axis: int, non_negative: bool, scratch: torch.Tensor) -> torch.Tensor:
    """Per unit (along ``axis``), on how many positions the output is > 0, as float32 ``[units]``.

    ``scratch`` is a contiguous tensor of ``o``'s shape and dtype to write into. One elementwise
    pass writes the indicator (1 where > 0) and one reduction counts it.
    """
    if non_negative:        # ReLU: sign is the indicator
        h = torch.sign(o, out=scratch)
    elif o.dtype == torch.float32:  # min(max(x, 0), 2^-126) is 2^-126 where x > 0 (but for denormals), else 0
        h = torch.clamp(o, min=0.0, max=_TINY32, out=scratch)
    else:
        h = torch.sign(o, out=scratch).clamp_(min=0)
    if axis == o.dim() - 1:
        counts = h.reshape(-1, h.shape[-1]).sum(0, dtype=torch.float32)
    elif axis == 1 and h.is_contiguous():
        counts = h.view(h.shape[0], h.shape[1], -1).sum(2, dtype=torch.float32).sum(0)
    else:
        counts = h.sum(tuple(d for d in range(h.dim()) if d != axis), dtype=torch.float32)
    return counts if non_negative or o.dtype != torch.float32 else counts.mul_(_TINY32_INV)   # exact: a power of 2


def _batchnorm_sums(module: nn.Module, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Sum and sum of squares of a training-mode BatchNorm output, from the batch statistics it saved
    for its backward: no pass over the output. None when they are not there (eval mode, no graph).

    Per channel y = (x - mean) * invstd * w + b over the batch, so E[y] = b and
    E[y^2] = w^2 var invstd^2 + b^2 = w^2 (1 - eps invstd^2) + b^2. The batch mean, invstd and w enter
    the sum multiplied by 0, so a non-finite input or weight makes it non-finite, as it makes the output.
    """
    g = out.grad_fn
    if g is None or type(g).__name__ != "NativeBatchNormBackward0" or out.dim() < 2:
        return None
    try:
        mean, invstd, eps, training = g._saved_result1, g._saved_result2, g._saved_eps, g._saved_training
    except (AttributeError, RuntimeError):
        return None
    channels = out.shape[1]
    if not training or mean.numel() != channels or invstd.numel() != channels:
        return None
    w = module.weight.detach() if module.weight is not None else torch.ones_like(mean)
    b = module.bias.detach() if module.bias is not None else torch.zeros_like(mean)
    per = out.numel() // channels
    b = b + 0 * (mean + invstd + w)
    sq = w * w * (1 - eps * invstd * invstd) + b * b
    return (b.sum(dtype=torch.float32) * per, sq.sum(dtype=torch.float32) * per)


def _finite_inputs(calls: list[tuple]) -> bool:
    """Every floating-point tensor the model calls were given is finite (one reduction each; only on a step
    whose gradients came out non-finite)."""
    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                yield from tensors(o)
        elif isinstance(obj, dict):
            for o in obj.values():
                yield from tensors(o)
    return all(bool(torch.isfinite(t).all()) for args, kwargs in calls for t in tensors((args, kwargs))
               if t.is_floating_point())


def _same_values(out: torch.Tensor, inp: torch.Tensor) -> bool:
    """``out`` is a dense view of ``inp`` with the same first dim (flatten, reshape): the same values."""
    return out.dtype == inp.dtype and out.numel() == inp.numel() and out.data_ptr() == inp.data_ptr() and \
        out.dim() > 0 and inp.dim() > 0 and out.shape[0] == inp.shape[0] and out.is_contiguous() and inp.is_contiguous()


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


def _to_host(scalars: list[torch.Tensor]) -> list[float]:
    """Every pending 0-d tensor as a float: one transfer (one per device, for a model split across devices)."""
    try:
        return torch.stack(scalars).tolist()
    except RuntimeError:
        values = [0.0] * len(scalars)
        by_device: dict[torch.device, list[int]] = {}
        for i, t in enumerate(scalars):
            by_device.setdefault(t.device, []).append(i)
        for index in by_device.values():
            for i, v in zip(index, torch.stack([scalars[i] for i in index]).tolist()):
                values[i] = v
        return values


@dataclass
class _Output:
    """What the hooks know of a leaf output while its forward pass runs, for the modules it feeds."""
    ref: weakref.ref
    version: int | None
    total: int        # index of its sum over the whole tensor (finite or not)
    stats: tuple | None  # (sum index, sum-of-squares index, element count) of what the statistics covered
    axis: int | None
    shape: tuple[int, ...]
    name: str = ""    # the leaf module that produced it


@dataclass(frozen=True)
class _Leaf:
    """What the hooks need to know of a leaf module, worked out once."""
    name: str
    type_name: str
    kind: str                               # channels | features | follow | other: see units_axis
    relu: bool                              # ReLU family: dead units
    non_negative: bool                      # ReLU, ReLU6: outputs >= 0
    bounds: tuple[float, float] | None      # sigmoid/tanh family: saturation
    batchnorm: bool
    keeps_finite: bool                      # an activation without parameters: finite in, finite out

    @staticmethod
    def of(name: str, module: nn.Module) -> "_Leaf":
        relu = isinstance(module, RELU_LIKE)
        bounds = None
        if isinstance(module, BOUNDED):
            bounds = (float(module.min_val), float(module.max_val)) if isinstance(module, nn.Hardtanh) else \
                (-1.0, 1.0) if isinstance(module, nn.Tanh) else (0.0, 1.0)
        no_params = not any(True for _ in module.parameters(recurse=False))   # PReLU's weight could break it
        return _Leaf(name, type(module).__name__, layer_kind(module), relu, isinstance(module, NON_NEGATIVE),
                     bounds, isinstance(module, nn.modules.batchnorm._BatchNorm),
                     (relu or bounds is not None) and no_params)


@dataclass
class Recorder:
    model: nn.Module
    activations: bool = True   # forward hooks: activation statistics and the non-finite module
    updates: bool = False      # update/weight ratio needs a copy of the weights each step
    grads: bool = True         # gradient and weight norms (and the first non-finite gradient) at each step
    every: int = 1             # activation statistics on every k-th optimizer step (0, k, 2k, ...)
    sub_batch: int | None = None  # activation statistics on the first k samples of the batch only
    moments: bool = True       # activation mean/std (False: the dead and pinned shares, the non-finite check only)
    step: int = 0
    grad_norms: dict[str, list[float]] = field(default_factory=dict)
    weight_norms: dict[str, list[float]] = field(default_factory=dict)   # on the measured steps (every one with updates)
    update_ratios: dict[str, list[float]] = field(default_factory=dict)
    act_mean: dict[str, list[float]] = field(default_factory=dict)
    act_std: dict[str, list[float]] = field(default_factory=dict)
    saturated: dict[str, list[float]] = field(default_factory=dict)      # bounded: share pinned per call
    layer_types: dict[str, str] = field(default_factory=dict)
    nonfinite_forward: dict | None = None
    nonfinite_grad: dict | None = None
    grads_none: set[str] = field(default_factory=set)
    grads_seen: set[str] = field(default_factory=set)
    dead_per_call: dict[str, list[float]] = field(default_factory=dict)  # ReLU family: share of dead units, per call
    total_grad_norms: list[float] = field(default_factory=list)  # global gradient norm per step
    units_axis: dict[str, int | None] = field(default_factory=dict)   # the dim read as units, per leaf (last call)
    activation_steps: list[int] = field(default_factory=list)   # the steps whose activations were measured
    step_seconds: list[float] = field(default_factory=list)     # wall time of each optimizer step, boundary to boundary

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"Recorder(every={self.every}): every must be >= 1 (1 measures every step)")
        if self.sub_batch is not None and self.sub_batch < 1:
            raise ValueError(f"Recorder(sub_batch={self.sub_batch}): give a sample count >= 1, or None for the batch")
        self._handles = []
        self._order_handles = []
        self._pending = _Slots()                 # this step's statistics, on the device
        self._calls: list[tuple] = []            # pending forward calls, in execution order
        self._pending_updates: list[tuple] = []
        self._outputs: dict[int, _Output] = {}   # this forward pass's leaf outputs, by id
        self._prev: tuple | None = None          # (axis, shape) of the leaf output produced last
        self._before: list[torch.Tensor] = []
        self._param_list: list[tuple[str, nn.Parameter]] | None = None
        self._plain: tuple | None = None       # _plain_grads: (norm buffer or None, layer -> parameter indices)
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._views: dict[tuple, torch.Tensor] = {}
        self._active_counts: dict[str, torch.Tensor] = {}   # ReLU family: per unit, positions > 0 so far
        self._last_time: float | None = None
        self._inputs: list[tuple] = []           # an unmeasured step's model calls (args, kwargs), for _replay
        self._replaying = False
        self._leaf_hooks: list[tuple] = []       # (leaf module, its forward hook), registered while _armed
        self._lean_hooks: list[tuple] = []       # (activation leaf, its lean hook), registered on a lean step
        self._leaf_handles: list = []
        self._hooked: str = "off"                # which of the two sets is registered: full | lean | off
        self._lean_axes: dict[tuple, list] = {}  # (leaf, ndim) -> [(units axis, unit count)] from full steps
        self._lean_ready = False                 # a full measured step has run: the lean steps may follow
        self._seen: set[str] = set()
        self.forward_order: list[str] = []   # leaf modules in the order the forward pass ran them
        self.layers = {name: m for name, m in self.model.named_modules()
                       if any(True for _ in m.parameters(recurse=False))}
        for name, m in self.model.named_modules():
            key = name or "(model)"
            self.layer_types[key] = type(m).__name__
            if list(m.children()):
                continue
            if self.activations:
                self._leaf_hooks.append((m, self._forward_hook(key, m)))
                leaf = _Leaf.of(key, m)
                if leaf.relu or leaf.bounds is not None:
                    self._lean_hooks.append((m, self._lean_hook(leaf)))
            else:  # the forward order only (depth profiles): dropped after the first step
                self._order_handles.append(m.register_forward_hook(self._order_hook(key)))
        self.output_module: str | None = None   # the leaf whose output the model returns (None: no leaf's)
        self.output_known = False                # ... once a measured forward pass has told
        self._end_handle = None
        if self.activations:
            self._handles.append(self.model.register_forward_pre_hook(self._forward_start, with_kwargs=True))
            self._end_handle = self.model.register_forward_hook(self._forward_end)
            self._sync_hooks()

    def _sync_hooks(self) -> None:
        """The leaf hooks are on exactly while ``_armed``, the activation leaves' lean hooks on a ``_lean`` step:
        an unmeasured step runs the modules bare (a module with any forward hook takes torch's slower call path,
        which costs on small fast models)."""
        want = "full" if self._armed else "lean" if self._lean else "off"
        if want == self._hooked:
            return
        for h in self._leaf_handles:
            h.remove()
        hooks = self._leaf_hooks if want == "full" else self._lean_hooks if want == "lean" else []
        self._leaf_handles = [m.register_forward_hook(hook) for m, hook in hooks]
        self._hooked = want

    # --- forward hooks ----------------------------------------------------------------------
    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A reused contiguous buffer shaped like ``like``: a fresh full-size temporary per call costs more
        than the pass that fills it (page faults on CPU), so the largest one is kept per device and dtype."""
        key = (like.device, like.dtype, like.shape)
        view = self._views.get(key)
        if view is None:
            buf = self._buffers.get(key[:2])
            if buf is None or buf.numel() < like.numel():
                buf = self._buffers[key[:2]] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
                self._views = {k: v for k, v in self._views.items() if k[:2] != key[:2]}
            view = self._views[key] = buf[:like.numel()].view(like.shape)
        return view

    def _order_hook(self, name: str):
        def hook(mod, inputs, output):
            if name not in self._seen:
                self._seen.add(name)
                self.forward_order.append(name)
        return hook

    def _forward_start(self, mod, args, kwargs) -> None:
        self._outputs.clear()
        self._prev = None
        if not self._armed and len(self._inputs) < MAX_REPLAYED:
            self._inputs.append((args, kwargs))   # references only: replayed if this step's gradients are not finite
        return None

    def _forward_end(self, mod, args, output) -> None:
        """On the first measured forward pass: which leaf produced the model's output (the output layer), that
        output itself or a view of it (a squeeze, a reshape); None when it was computed outside any leaf (``h @
        W2 + b2``). The hook then goes: it runs once."""
        if not self._armed:
            return
        out = output if isinstance(output, torch.Tensor) else _first_tensor(output)
        if out is not None:
            e = self._outputs.get(id(out))
            if e is None or e.ref() is not out:
                e = next((o for o in self._outputs.values() if (t := o.ref()) is not None and t.numel() == out.numel()
                          and t.numel() and t.data_ptr() == out.data_ptr()), None)
            self.output_module = e.name if e is not None else None
            self.output_known = True
        if self._end_handle is not None:
            self._end_handle.remove()
            self._end_handle = None

    @property
    def _armed(self) -> bool:
        """Whether every leaf hook looks at this step: always, unless the step is an unmeasured (or a lean) one
        and the gradients will tell whether it went non-finite (then a non-finite step is replayed, ``_replay``)."""
        return not self.grads or self._replaying or (self.step % self.every == 0 and not self._lean)

    @property
    def _lean(self) -> bool:
        """A measured step after the first, without the moments: only the activation leaves are hooked, for their
        dead and pinned shares (all the other leaves would only sum their outputs for the non-finite check, which
        the gradients and the replay do here as on an unmeasured step). Their units axes are the ones the full
        steps found."""
        return self._lean_ready and not self.moments and self.grads and not self._replaying and \
            self.step % self.every == 0

    def _forward_hook(self, name: str, module: nn.Module):
        leaf = _Leaf.of(name, module)

        def hook(mod, inputs, output):
            out = output if isinstance(output, torch.Tensor) else _first_tensor(output)
            if out is None or not out.is_floating_point() or out.numel() == 0:
                return
            grad = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)   # torch.no_grad() without its Python frames: it runs per module
            try:
                self._record(leaf, mod, inputs, out)
            finally:
                torch._C._set_grad_enabled(grad)
        return hook

    def _lean_hook(self, leaf: _Leaf):
        def hook(mod, inputs, output):
            out = output if isinstance(output, torch.Tensor) else _first_tensor(output)
            if out is None or not out.is_floating_point() or out.numel() == 0:
                return
            grad = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)
            try:
                self._record_lean(leaf, out)
            finally:
                torch._C._set_grad_enabled(grad)
        return hook

    def _record_lean(self, leaf: _Leaf, out: torch.Tensor) -> None:
        """An activation leaf's dead or pinned share on a lean step; the units axis is the one a full step found
        for an output of as many dims with as many units on it (else the layer's own rule, without a feeder)."""
        name = leaf.name
        if name not in self._seen:
            self._seen.add(name)
            self.forward_order.append(name)
        shape = tuple(out.shape)
        axis = next((a for a, units in self._lean_axes.get((name, len(shape)), ()) if shape[a] == units), None)
        if axis is None:
            axis = units_axis(leaf.kind, shape, None)
        self.units_axis[name] = axis
        k = self.sub_batch
        o = out[:k] if k is not None and shape and shape[0] > k else out
        extra = self._shares(leaf, o, axis)
        if extra is not None:
            self._calls.append((name, leaf.type_name, self.step, shape, None, None, None, None, None, 0, extra, True))

    def _shares(self, leaf: _Leaf, o: torch.Tensor, axis: int | None) -> tuple | None:
        """The dead (ReLU family) or pinned (bounded) share of ``o``, queued: ``(what, index, count)``, or None."""
        pending = self._pending
        name = leaf.name
        if leaf.relu and axis is not None and o.dim() >= 2:
            # ReLU family: per unit, the positions where it is > 0; dead below 1% of them
            counts = _unit_counts(o, axis, leaf.non_negative, self._scratch(o))
            ever = self._active_counts.get(name)
            if ever is None or ever.shape != counts.shape:
                self._active_counts[name] = counts.clone()
            else:
                ever.add_(counts)
            positions = max(1, o.numel() // o.shape[axis])
            return ("dead", pending.sum(counts.lt(INACTIVE_BELOW * positions)), counts.numel())
        if leaf.bounds is not None:
            # bounded: the share within the margin of a bound, |x - centre| >= reach; without a bool
            # temporary, sign(|x - centre| - reach) sums to (pinned - not pinned)
            lo, hi = leaf.bounds
            centre, reach = (lo + hi) / 2, (hi - lo) / 2 - SATURATION_MARGIN * (hi - lo)
            dist = torch.abs(o, out=self._scratch(o)) if centre == 0 else \
                torch.sub(o, centre, out=self._scratch(o)).abs_()
            return ("saturated", pending.sum(dist.sub_(reach).sign_()), o.numel())
        return None

    def _producer(self, inp: torch.Tensor, out: torch.Tensor) -> _Output | None:
        """The leaf output ``inp`` is, unchanged since (or changed in place by this very module)."""
        e = self._outputs.get(id(inp))
        if e is None or e.ref() is not inp:
            return None
        return e if out is inp or _version(inp) == e.version else None

    def _record(self, leaf: _Leaf, mod: nn.Module, inputs, out: torch.Tensor) -> None:
        name = leaf.name
        if name not in self._seen:  # execution order = depth order, for depth profiles
            self._seen.add(name)
            self.forward_order.append(name)
        pending = self._pending
        # 1. the input: finite when its producer's output was, else its own sum says
        inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else _first_tensor(inputs)
        producer, in_total = None, None
        if inp is not None and inp.is_floating_point() and inp.numel():
            producer = self._producer(inp, out)
            in_total = producer.total if producer is not None else pending.sum(inp)
        # 2. the units axis, from the layer (or the one that feeds it)
        shape = tuple(out.shape)
        axis = units_axis(leaf.kind, shape, (producer.axis, producer.shape) if producer is not None else self._prev)
        self.units_axis[name] = axis
        if axis is not None and (leaf.relu or leaf.bounds is not None):
            known = self._lean_axes.setdefault((name, len(shape)), [])
            if (axis, shape[axis]) not in known:
                known.append((axis, shape[axis]))
        # 3. the output's sum on every step (the non-finite check); statistics on measured steps
        measured = self.step % self.every == 0 and not self._replaying   # a replay only names the module
        k = self.sub_batch
        o = out[:k] if k is not None and shape and shape[0] > k else out
        total, stats = self._sums(leaf, mod, out, o, inp, producer, in_total, measured and self.moments)
        # 4. the ReLU family's dead units, the bounded family's pinned outputs
        extra = self._shares(leaf, o, axis) if measured else None
        in_sq = producer.stats[1] if producer is not None and producer.stats is not None and \
            producer.stats[2] == inp.numel() else None   # the input's sum of squares, when its producer has it
        self._calls.append((name, leaf.type_name, self.step, shape, total, stats, in_total, in_sq,
                            tuple(inp.shape) if in_total is not None else None,
                            inp.numel() if in_total is not None else 0, extra, measured))
        # 6. what the modules it feeds need to know
        self._outputs[id(out)] = _Output(weakref.ref(out), _version(out), total, stats, axis, shape, name)
        self._prev = (axis, shape)
        if pending.n > MAX_PENDING:
            self.flush()

    def _sums(self, leaf: _Leaf, mod, out, o, inp, producer, in_total, measured) -> tuple[int, tuple | None]:
        """(index of the output's sum, (sum, sum of squares, count) indices of the statistics or None)."""
        pending = self._pending
        if producer is not None and out is not inp and _same_values(out, inp):
            return producer.total, producer.stats if measured else None   # a flatten: nothing to compute
        if not measured and leaf.keeps_finite and in_total is not None:
            return in_total, None   # finite in, finite out: an activation is never where a NaN is born
        derived = _batchnorm_sums(mod, out) if leaf.batchnorm else None
        total = pending.put(derived[0]) if derived is not None else pending.sum(out)
        if not measured:
            return total, None
        if o is not out:
            return total, (pending.sum(o), pending.sumsq(o), o.numel())
        return total, (total, pending.put(derived[1]) if derived is not None else pending.sumsq(o), o.numel())

    # --- the step boundary ------------------------------------------------------------------
    def before_step(self, optimizer=None, *args, **kwargs) -> None:
        """Call between backward and optimizer.step (or let ``attach_optimizer`` do it): records the
        gradients and reads every pending statistic in one transfer."""
        grads = None
        lean = self._lean
        if self.grads and not ((lean or (self._pending.n == 0 and self.step % self.every != 0)) and not self.updates
                               and self._plain_grads()):
            with torch.no_grad():
                grads = self._queue_norms()
            self.flush(grads)
        elif lean:
            self.flush()   # the activation leaves' shares (kept when the gradients came out finite)
        inputs, self._inputs = self._inputs, []
        if inputs and self.nonfinite_forward is None and self.total_grad_norms and \
                not math.isfinite(self.total_grad_norms[-1]) and _finite_inputs(inputs):
            self._replay(inputs)   # (a batch that holds NaN names no module: the data scan names its samples)

    def _replay(self, calls: list[tuple]) -> None:
        """Run an unmeasured step's forward calls again with the hooks on, to name the module where a
        non-finite value was born. The weights are still those of that step (this runs before the
        optimizer's step); the buffers (BatchNorm's running statistics) and the RNG state are put back
        after, so the run trains on as if nothing had been replayed."""
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None
        self._replaying = True
        self._sync_hooks()
        try:
            with torch.no_grad():
                for args, kwargs in calls:
                    self.model(*args, **kwargs)
        except Exception:   # the step itself ran: a replay that raises names nothing
            pass
        finally:
            self._replaying = False
            self._sync_hooks()
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        self.flush()

    def _queue_norms(self) -> tuple:
        """Every parameter's weight and gradient norm as pending device scalars, batched per kind."""
        plist = self._parameters()
        with_weights = self.updates or self.step % self.every == 0   # weights change slowly: measured steps only
        grads = [p.grad for _, p in plist]
        if any(g is None for g in grads):   # some parameters got no gradient this step (never `None in`: tensor ==)
            grad_owner = [key for (key, _), g in zip(plist, grads) if g is not None]
            grads = [g for g in grads if g is not None]
        else:
            grad_owner = self._keys   # every parameter: the owners listed once
        owners = self._keys if with_weights else []
        weights = [p.detach() for _, p in plist] if with_weights else []
        if self.updates:
            self._before = [w.clone() for w in weights]
        start = self._pending.sumsq_each(weights + grads)
        return owners, grad_owner, grads, start, start + len(weights)

    def _plain_grads(self) -> bool:
        """An unmeasured (or lean) step's gradient norms the short way, when every parameter has a finite dense
        float32 gradient on one device: one batched norm into a buffer made once, one read, one append per layer.
        False (nothing recorded) otherwise: the general path runs, which also names a non-finite gradient. On a
        model whose step takes a few tenths of a millisecond the general path's bookkeeping costs a tenth of a
        step; this one about what the norms do (the batched norm and its read are the floor: ~7% of a 0.4 ms
        step)."""
        plain = self._plain
        if plain is None:   # decided once
            plist = self._parameters()
            devices = {p.device for _, p in plist}
            ok = len(devices) == 1 and hasattr(torch, "_foreach_norm") and \
                all(p.dtype == torch.float32 for _, p in plist)
            groups: dict[str, list[int]] = {}
            for i, (key, _) in enumerate(plist):
                groups.setdefault(key, []).append(i)
            plain = self._plain = (torch.empty(len(plist), device=next(iter(devices))) if ok else None,
                                   [p for _, p in plist],
                                   [(key, idx[0] if len(idx) == 1 else tuple(idx)) for key, idx in groups.items()],
                                   [None])   # the layers' series, once they exist
        buf, params, groups, series = plain
        if buf is None:
            return False
        grads = [p.grad for p in params]
        for g in grads:
            if g is None or g.layout is not torch.strided or g.dtype is not torch.float32:
                return False
        torch.stack(torch._foreach_norm(grads), out=buf)
        norms = buf.tolist()
        total = math.hypot(*norms)
        if not math.isfinite(total) and self.nonfinite_grad is None:
            return False   # the general path records this step and names the parameter (once is enough)
        lists = series[0]
        if lists is None:   # the first time: every layer's series, made where missing
            lists = series[0] = [(self.grad_norms.setdefault(key, []), idx) for key, idx in groups]
            self.grads_seen.update(key for key, _ in groups)
        hypot = math.hypot
        for s, idx in lists:
            s.append(norms[idx] if type(idx) is int else hypot(*[norms[i] for i in idx]))
        self.total_grad_norms.append(total)
        return True

    def _parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(layer key, parameter) of every layer, listed once (at the first step, when lazy layers exist)."""
        if self._param_list is None:
            self._param_list = [(name or "(model)", p) for name, layer in self.layers.items()
                                for p in layer.parameters(recurse=False)]
            self._keys = [key for key, _ in self._param_list]
            self._layer_keys = [name or "(model)" for name in self.layers]
        return self._param_list

    def flush(self, grads: tuple | None = None) -> None:
        """Read the pending statistics onto the host (one transfer) and append them to the series."""
        if self._order_handles and self.forward_order:
            for h in self._order_handles:
                h.remove()
            self._order_handles.clear()
        if not self._pending.n:
            return
        values = self._pending.read()
        calls, updates = self._calls, self._pending_updates
        self._calls, self._pending_updates = [], []
        self._outputs.clear()
        if grads is not None:   # first: a lean step's shares are kept only when its gradients are finite
            self._resolve_grads(grads, values)
        self._resolve_calls(calls, values)
        self._resolve_updates(updates, values)

    def _resolve_calls(self, calls: list[tuple], v: list[float]) -> None:
        steps = set()
        step_finite = not self.total_grad_norms or math.isfinite(self.total_grad_norms[-1])
        for name, type_name, step, shape, total, stats, in_total, in_sq, in_shape, in_numel, extra, measured in calls:
            # a lean step's call has no sum of its own: it is kept when the step's gradients came out finite
            if total is None and not step_finite:
                continue
            finite = total is None or math.isfinite(v[total])
            # 1. the first module whose output is non-finite while its input was finite, in forward order
            if not finite and total is not None and self.nonfinite_forward is None and \
                    (in_total is None or math.isfinite(v[in_total])):
                inp = None
                if in_total is not None:
                    inp = {"shape": list(in_shape), "nan": 0, "inf": 0, "mean": v[in_total] / max(1, in_numel)}
                    if in_sq is not None:  # root mean square: a lower bound of the largest |x|
                        inp["rms"] = math.sqrt(max(0.0, v[in_sq]) / max(1, in_numel))
                self.nonfinite_forward = {"module": name, "type": type_name, "step": step, "input": inp,
                                          "output": {"shape": list(shape), "finite": False}}
            if not measured:
                continue
            steps.add(step)
            if stats is not None:
                # 2. mean and (population) std from the sum and the sum of squares
                s, sq, n = v[stats[0]], v[stats[1]], stats[2]
                mean = s / n
                if math.isfinite(mean) and math.isfinite(sq):
                    std = math.sqrt(max(0.0, sq / n - mean * mean))
                else:  # a non-finite element, or squares too large for float32
                    mean, std = (mean if not math.isfinite(mean) else float("nan")), float("nan")
                self.act_mean.setdefault(name, []).append(mean)
                self.act_std.setdefault(name, []).append(std)
            if extra is not None and finite:
                what, i, count = extra
                if what == "dead":     # dead units / units
                    self.dead_per_call.setdefault(name, []).append(v[i] / count)
                else:                  # (pinned - not pinned) / positions -> pinned share
                    self.saturated.setdefault(name, []).append(min(1.0, max(0.0, (v[i] + count) / (2 * count))))
        for step in sorted(steps):
            if not self.activation_steps or step > self.activation_steps[-1]:
                self.activation_steps.append(step)

    def _resolve_updates(self, updates: list[tuple], v: list[float]) -> None:
        for owners, start, before in updates:
            sq: dict[str, float] = {}
            for key, i in zip(owners, range(start, start + len(owners))):
                sq[key] = sq.get(key, 0.0) + v[i]
            for key, total in sq.items():
                self.update_ratios.setdefault(key, []).append(math.sqrt(total) / (before.get(key) or 1e-12))

    def _resolve_grads(self, grads: tuple, v: list[float]) -> None:
        owners, grad_owner, tensors, start, mid = grads
        g_sq = v[mid:mid + len(grad_owner)]
        # 1. per layer: sqrt of the summed squares; a non-finite sum means a non-finite gradient (or an overflow)
        gsq: dict[str, float] = {}
        for key, x in zip(grad_owner, g_sq):
            gsq[key] = gsq[key] + x if key in gsq else x
        wsq: dict[str, float] = {}
        for key, x in zip(owners, v[start:mid]):
            wsq[key] = wsq[key] + x if key in wsq else x
        # 2. the first parameter whose gradient holds a NaN/Inf: its norm says maybe, the tensor says for sure
        total = sum(gsq.values())
        if self.nonfinite_grad is None and not math.isfinite(total):
            suspects = [(key, g) for key, x, g in zip(grad_owner, g_sq, tensors) if not math.isfinite(x)]
            if suspects:  # a second transfer, only on a step whose gradient norms are not finite
                bad = torch.stack([torch.isfinite(g).all().to(suspects[0][1].device) for _, g in suspects])
                first = next((key for (key, _), ok in zip(suspects, bad.tolist()) if not ok), None)
                if first is not None:
                    self.nonfinite_grad = {"module": first, "type": self.layer_types.get(first, "?"), "step": self.step}
        series, weight_series, nan = self.grad_norms, self.weight_norms, float("nan")
        for key in self._layer_keys:
            x = gsq.get(key)
            if x is None:
                self.grads_none.add(key)
                series.setdefault(key, []).append(nan)
            else:
                self.grads_seen.add(key)
                series.setdefault(key, []).append(math.sqrt(x))
            if owners:
                weight_series.setdefault(key, []).append(math.sqrt(wsq.get(key, 0.0)))
        self.total_grad_norms.append(math.sqrt(total) if gsq else nan)

    def after_step(self, optimizer=None, *args, **kwargs) -> None:
        if self.updates and self._before:
            with torch.no_grad():
                owners = [key for key, _ in self._parameters()]
                weights = [p.detach() for _, p in self._parameters()]
                if len(weights) == len(self._before):
                    diffs = torch._foreach_sub(weights, self._before)
                    start = self._pending.sumsq_each(diffs)
                    before = {k: v[-1] for k, v in self.weight_norms.items() if v}
                    self._pending_updates.append((owners, start, before))
            self._before = []
        self._inputs = []
        now = time.perf_counter()
        if self._last_time is not None:
            self.step_seconds.append(now - self._last_time)
        self._last_time = now
        if self._hooked == "full" and self.forward_order:
            self._lean_ready = True   # the full step found the forward order, the output layer and the units axes
        self.step += 1
        if self._leaf_hooks:
            self._sync_hooks()

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._handles.append(optimizer.register_step_pre_hook(self.before_step))
        self._handles.append(optimizer.register_step_post_hook(self.after_step))
        self._last_time = time.perf_counter()

    def detach(self) -> None:
        for h in self._handles + self._order_handles + self._leaf_handles:
            h.remove()
        if self._end_handle is not None:
            self._end_handle.remove()
            self._end_handle = None
        self._leaf_hooks, self._leaf_handles = [], []
        self._handles.clear()
        self._order_handles.clear()
        self._buffers.clear()
        self._views.clear()
        self.flush()

    # --- summaries ------------------------------------------------------------------------
    @property
    def ever_active(self) -> dict[str, torch.Tensor]:
        """ReLU-family layer -> bool per unit: was it ever > 0 during the recording."""
        return {k: v > 0 for k, v in self._active_counts.items()}

    def dead_share(self) -> dict[str, float]:
        """ReLU-family layer -> share of its units that never activated during the recording."""
        if not self.ever_active:
            return {}
        keys = list(self.ever_active)
        shares = _to_host([self.ever_active[k].float().mean() for k in keys])
        return {k: 1.0 - s for k, s in zip(keys, shares)}

    def depth_order(self) -> list[str]:
        """Layers that own parameters, in the order the forward pass reached them (then the rest)."""
        keys = [name or "(model)" for name in self.layers]
        ordered = [k for k in self.forward_order if k in keys]
        return ordered + [k for k in keys if k not in ordered]

    def summary(self) -> dict:
        self.flush()

        def last(d):
            return {k: v[-1] for k, v in d.items() if v}
        return {"grad_norm_first": {k: v[0] for k, v in self.grad_norms.items() if v},
                "grad_norm_last": last(self.grad_norms), "weight_norm_last": last(self.weight_norms),
                "dead_share": self.dead_share(),
                "saturated_share": {k: sum(v) / len(v) for k, v in self.saturated.items() if v},
                "nonfinite_forward": self.nonfinite_forward, "nonfinite_grad": self.nonfinite_grad,
                "layers_without_grad": sorted(self.grads_none - self.grads_seen)}

"""Hazards: ops that turn NaN or Inf for values training is heading to, found before they fire.

One step of the user's own training (a fresh model, the fixed batch, the optimizer at learning rate
zero) runs with every torch call traced (``TorchFunctionMode``); nothing trains. A ``Provenance``
follows what each tensor of the step *is*: a probability (the output of sigmoid or softmax, or a
view, a slice, a gather, a constant multiple or the complement ``1 - p`` of one), bounded above (its
``exp`` cannot overflow: tanh, clamp, log_softmax, ``x - x.max()``), non-negative, strictly positive
(exp, softplus, anything plus an eps), a reduction computed in the step that can be exactly zero
(sum, mean, norm, std, var, a count of a mask), or a quantity whose square root has an infinite
slope at zero (squares, squared distances, variances, ReLU outputs). At the user's own calls (a file
that is neither torch's nor nandoctor's), on the autograd path, four patterns are hazards:

- ``log-of-probability``: ``log``/``log2``/``log10`` of a probability, or ``log1p(-p)``: -inf once
  a logit moves far enough (``log(1 - sigmoid(x))`` at x ~ 17 in float32);
- ``exp-unbounded``: ``exp`` of a tensor nothing bounds above: Inf once it passes ~88.7 (float32);
- ``division-by-zeroable``: division by such a reduction that no clamp or eps keeps from zero;
- ``sqrt-at-zero``: ``sqrt``, ``rsqrt`` or ``pow(x, p < 1)`` of a quantity that can be exactly
  zero: the value is fine, the gradient is infinite (and NaN through the square before it).

Fused ops are one call to the tracer (``cross_entropy``, ``binary_cross_entropy_with_logits``,
``log_softmax``, ``layer_norm``, ``logsumexp``): what they do inside is not seen, and they are safe.
Each hazard is recorded once per line with the op, the op that produced its operand, the module it
ran in, whether that was the model, the loss or the user's ``train_step``, the user's line, and how
close it is to firing now (the margin left before log returns -inf, before exp overflows, the
divisor's smallest value, the sqrt argument's zeros). ``trace_hazards`` is also what a cure measures
on its copy.
"""

from __future__ import annotations

import functools
import linecache
import math
import sys
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.overrides import TorchFunctionMode

from nandoctor.loading import display_path, is_user_file
from nandoctor.patient import preserved_rng
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.nonfinite import op_name
from nandoctor.probes.training import error_record
from nandoctor.records import Metrics, ProbeResult

MAX_LISTED = 20   # hazards kept in the metrics (each line once)

KINDS = ("log-of-probability", "sqrt-at-zero", "division-by-zeroable", "exp-unbounded")

# --- op names (``func.__name__``: the same for torch.x, Tensor.x and F.x) -----------------------
SIGMOID = frozenset({"sigmoid", "expit", "special_expit"})
SOFTMAX = frozenset({"softmax", "special_softmax"})
LOGS = {"log": 1.0, "log_": 1.0, "log2": 1 / math.log(2), "log2_": 1 / math.log(2),
        "log10": 1 / math.log(10), "log10_": 1 / math.log(10)}   # name -> factor on the natural log
LOG1P = frozenset({"log1p", "log1p_", "special_log1p"})
EXPS = frozenset({"exp", "exp_", "exp2", "exp2_", "expm1", "expm1_", "special_exp2", "special_expm1"})
DIVS = frozenset({"div", "div_", "divide", "true_divide", "true_divide_", "__truediv__", "__itruediv__",
                  "__div__", "__idiv__"})
RDIVS = frozenset({"__rtruediv__", "__rdiv__", "reciprocal", "reciprocal_"})   # the divisor is the first argument
SQRTS = frozenset({"sqrt", "sqrt_", "rsqrt", "rsqrt_"})
POWS = frozenset({"pow", "pow_", "__pow__", "__ipow__", "float_power"})
HAZARD_OPS = frozenset(LOGS) | LOG1P | EXPS | DIVS | RDIVS | SQRTS | POWS

VIEWS = frozenset({"view", "reshape", "view_as", "reshape_as", "squeeze", "unsqueeze", "flatten", "unflatten",
                   "__getitem__", "gather", "take_along_dim", "index_select", "select", "narrow", "t", "transpose",
                   "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "contiguous", "clone", "expand",
                   "expand_as", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as"})
SPLITS = frozenset({"split", "chunk", "unbind", "tensor_split", "split_with_sizes"})
MULS = frozenset({"mul", "__mul__", "__rmul__", "multiply", "mul_", "__imul__"})
ADDS = frozenset({"add", "__add__", "__radd__", "add_", "__iadd__"})
SUBS = frozenset({"sub", "__sub__", "subtract", "sub_", "__isub__"})
RSUBS = frozenset({"__rsub__", "rsub"})
NEGS = frozenset({"neg", "__neg__", "negative", "neg_"})
BOUNDED = frozenset({"tanh", "tanh_", "sin", "cos", "erf", "hardtanh", "relu6", "hardsigmoid", "log_softmax",
                     "logsigmoid", "special_log_softmax", "softsign", "clamp_max", "clamp_max_"})
CLAMPS = frozenset({"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"})
SQUARE_LIKE = frozenset({"square", "square_"})
ZERO_AT_TIMES = frozenset({"relu", "relu_", "abs", "abs_"})   # non-negative, exactly zero at many inputs
POSITIVE = frozenset({"exp", "exp_", "softplus"})
SUMS = frozenset({"sum", "nansum", "mean", "nanmean"})
NORMS = frozenset({"norm", "linalg_vector_norm", "linalg_norm", "frobenius_norm", "cdist", "pairwise_distance"})
SPREADS = frozenset({"std", "var", "std_mean", "var_mean"})
COUNTS = frozenset({"count_nonzero"})
MAXES = frozenset({"max", "amax", "logsumexp"})
MASKS = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
                   "greater", "less", "not_equal", "greater_equal", "less_equal", "isfinite", "isnan", "isinf",
                   "logical_and", "logical_or", "logical_not", "__and__", "__or__", "__invert__"})
SQRT_OUT = frozenset({"sqrt", "sqrt_"})
FOLLOWED = (SIGMOID | SOFTMAX | VIEWS | SPLITS | MULS | ADDS | SUBS | RSUBS | NEGS | BOUNDED | CLAMPS
            | SQUARE_LIKE | ZERO_AT_TIMES | POSITIVE | SUMS | NORMS | SPREADS | COUNTS | MAXES | MASKS | SQRT_OUT
            | POWS | DIVS)
DISPATCH_FILES = ("/torch/overrides.py", "/torch/_tensor.py")  # torch's own dispatch frames between a call and its op


# --- what a tensor is ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Producer:
    """The call that made a tensor: its public name, the user's line, the module it ran in."""
    op: str
    where: str | None = None
    module: str | None = None
    count: bool = False          # a count (the sum of a mask, of an integer tensor): clamp it at 1, not at an eps
    origin: str | None = None    # the line of the first op in the chain (the square under a sum of squares)
    operand: Any = None          # a reduction's input, checked only when the result is used as a divisor


@dataclass(frozen=True)
class Probability:
    """A sigmoid or softmax output, or what views, constant factors and ``1 - p`` made of it."""
    kind: str                     # sigmoid | softmax
    producer: Producer
    logits: Any                   # the producer's input (a cure takes logsigmoid / log_softmax of it)
    dim: int | None = None        # softmax's dim
    dtype: Any = None             # softmax's dtype argument
    complement: bool = False      # 1 - p
    negated: bool = False         # -p (log1p(-p) is log(1 - p))
    chain: tuple = ()             # (func, other args, kwargs, index) of each view since the producer
    scale: float = 1.0            # a positive constant factor since the producer


@dataclass(frozen=True)
class Tag:
    prob: Probability | None = None
    upper: bool = False           # bounded above by a modest constant: exp of it cannot overflow
    nonpos: bool = False          # <= 0 (a log-probability, x - max(x), minus a distance): exp of it is at most 1
    nonneg: bool = False
    positive: bool = False        # > 0 by construction: its sums cannot be zero
    zero: Producer | None = None  # a reduction computed in the step that can be exactly zero
    sqrt_zero: Producer | None = None  # can be exactly zero, where sqrt's slope is infinite
    mask: bool = False            # a comparison's result (its sum is a count)
    root: int | None = None       # id of the tensor this one is a view or copy of
    max_of: int | None = None     # the max / logsumexp of this root (x - max(x) is bounded above)


@dataclass
class Found:
    """A hazard at one call, as the tracer sees it before the op runs."""
    kind: str
    operand: torch.Tensor         # the log/exp/sqrt argument, the divisor
    tag: Tag | None
    frame: Any                    # the user's frame that made the call
    name: str                     # the op's ``__name__``


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _arg(args: tuple, kwargs: dict, i: int, key: str, default=None):
    return args[i] if len(args) > i else kwargs.get(key, default)


@functools.lru_cache(maxsize=4096)
def _user_file(filename: str) -> bool:
    return is_user_file(filename)


@functools.lru_cache(maxsize=4096)
def _shown(filename: str) -> str:
    return display_path(filename)


def _where(frame) -> str | None:
    return f"{_shown(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}" if frame else None


def _source(frame) -> str | None:
    if frame is None:
        return None
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return line[:200] or None


class Provenance(TorchFunctionMode):
    """Follows what each tensor of a step is (``Tag``) and finds the hazards at the user's own calls.

    Subclasses decide what a hazard does: ``HazardTracer`` records it, a cure's rewriter replaces the
    op by a stable one (``nandoctor.treatments.hazards``). Tags are kept by tensor id beside a weak
    reference, so a tensor that dies takes its tag with it.
    """

    locate = True   # name the user's line of each producer (a rewriter needs no names)
    on_path_only = True   # only ops whose operands are on the autograd path (a rewriter: every such op, in any
                          # mode, so an eval-mode or no-grad score of the cured copy is cured too)

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, tuple[weakref.ref, Tag]] = {}

    # --- tags ------------------------------------------------------------------------------------
    def tag(self, t) -> Tag | None:
        if not isinstance(t, torch.Tensor):
            return None
        entry = self.tags.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def _set(self, t, tag: Tag | None) -> None:
        if not isinstance(t, torch.Tensor):
            return
        key = id(t)
        entry = self.tags.get(key)
        if entry is not None and entry[0]() is t:
            if tag is None:
                del self.tags[key]
            else:
                self.tags[key] = (entry[0], tag)
            return
        if tag is not None:
            self.tags[key] = (weakref.ref(t, functools.partial(self._drop, key)), tag)

    def _drop(self, key: int, ref) -> None:
        entry = self.tags.get(key)
        if entry is not None and entry[0] is ref:
            del self.tags[key]

    # --- the mode --------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name not in FOLLOWED and name not in HAZARD_OPS:
            out = func(*args, **kwargs)
            if args and out is args[0] and self.tag(out) is not None:
                self._set(out, None)  # changed in place by an op that is not followed: what it was is gone
            return out
        try:
            found = self._hazard(name, func, args, kwargs, sys._getframe(1)) if name in HAZARD_OPS else None
        except Exception:  # an odd signature is no hazard we know: the user's op runs as written
            found = None
        out = self.at_hazard(found, func, args, kwargs) if found is not None else func(*args, **kwargs)
        try:
            self._propagate(name, func, args, kwargs, out)
        except Exception:  # following is best effort: an odd signature loses a tag, never the user's step
            pass
        return out

    def at_hazard(self, found: Found, func, args: tuple, kwargs: dict):
        """What a hazard does: run the op (the tracer records it first; a rewriter replaces it)."""
        return func(*args, **kwargs)

    # --- the four patterns -----------------------------------------------------------------------
    def _hazard(self, name: str, func, args: tuple, kwargs: dict, frame) -> Found | None:
        if not args or (self.on_path_only and not torch.is_grad_enabled()):
            return None
        x = args[0]
        path = _on_path if self.on_path_only else (lambda t: isinstance(t, torch.Tensor))
        kind, operand = None, None
        if name in LOGS or name in LOG1P:
            tag = self.tag(x)
            if tag is not None and tag.prob is not None and tag.prob.negated == (name in LOG1P) \
                    and path(x):
                kind, operand = "log-of-probability", x
        elif name in EXPS:
            tag = self.tag(x)
            if path(x) and x.is_floating_point() \
                    and not (tag is not None and (tag.upper or tag.nonpos)):
                kind, operand = "exp-unbounded", x
        elif name in DIVS or name in RDIVS:
            d = x if name in RDIVS else _arg(args, kwargs, 1, "other")
            if name in DIVS and kwargs.get("rounding_mode") is not None:
                return None
            tag = self.tag(d)
            if tag is not None and tag.zero is not None and not _positive_operand(tag.zero) \
                    and any(path(t) for t in (x, d)):
                kind, operand = "division-by-zeroable", d
        elif name in SQRTS or name in POWS:
            tag = self.tag(x)
            p = _arg(args, kwargs, 1, "exponent") if name in POWS else None
            fractional = name in SQRTS or (_number(p) and p < 1 and p != 0 and not float(p).is_integer())
            zeroable = tag is not None and (tag.sqrt_zero is not None or (tag.zero is not None and tag.nonneg))
            if fractional and zeroable and path(x):
                kind, operand = "sqrt-at-zero", x
        if kind is None:
            return None
        site = call_site(func, frame)
        if site is None:
            return None
        return Found(kind, operand, self.tag(operand), site, name)

    # --- following ---------------------------------------------------------------------------------
    def _propagate(self, name: str, func, args: tuple, kwargs: dict, out) -> None:
        x = args[0] if args else _arg(args, kwargs, 0, "input")
        tx = self.tag(x)
        if name in VIEWS or name in SPLITS:
            if not isinstance(x, torch.Tensor):
                return
            if tx is None:
                if name == "detach" and isinstance(out, torch.Tensor):
                    self._set(out, Tag(root=id(x)))   # x - x.detach().max() is still x minus its max
                return
            root = tx.root if tx.root is not None else id(x)
            if isinstance(out, torch.Tensor):
                self._set(out, self._viewed(tx, root, func, args, kwargs, None))
            elif isinstance(out, (tuple, list)):
                for i, o in enumerate(out):
                    self._set(o, self._viewed(tx, root, func, args, kwargs, i))
            return
        if not isinstance(out, (torch.Tensor, tuple, list)):
            return
        tag = self._made(name, args, kwargs, x, tx, out)
        if isinstance(out, torch.Tensor):
            if tag is not None or out is x:
                self._set(out, tag)
        elif tag is not None and out and isinstance(out[0], torch.Tensor):  # (values, indices), (std, mean)
            self._set(out[0], tag)

    def _viewed(self, tx: Tag, root: int, func, args, kwargs, index) -> Tag:
        prob = tx.prob
        if prob is not None:
            prob = replace(prob, chain=prob.chain + ((func, args[1:], dict(kwargs), index),))
        return replace(tx, prob=prob, root=root)

    def _made(self, name: str, args, kwargs, x, tx: Tag | None, out) -> Tag | None:
        t = tx or Tag()
        if name in SIGMOID or name in SOFTMAX:
            dim = _arg(args, kwargs, 1, "dim") if name in SOFTMAX else None
            if name in SOFTMAX and dim is None:
                dim = 0 if x.dim() in (0, 1, 3) else 1   # F.softmax's implicit dim
            kind = "sigmoid" if name in SIGMOID else "softmax"
            dtype = kwargs.get("dtype") if name in SOFTMAX else None
            prob = Probability(kind, self._producer(name), x, dim=dim, dtype=dtype)
            return Tag(prob=prob, upper=True, nonneg=True, positive=True)
        if name in BOUNDED:
            return Tag(upper=True, nonneg=name in ("hardsigmoid", "relu6"),
                       nonpos=name in ("log_softmax", "logsigmoid", "special_log_softmax"))
        if name in CLAMPS:
            return self._clamped(name, args, kwargs, t)
        if name in SQUARE_LIKE:
            return Tag(nonneg=True, sqrt_zero=self._producer(name))
        if name in ZERO_AT_TIMES:
            return Tag(nonneg=True, sqrt_zero=self._producer(name))
        if name in POSITIVE:
            return Tag(nonneg=True, positive=True)
        if name in MASKS:
            return Tag(mask=True, nonneg=True)
        if name in SUMS:
            if not isinstance(out, torch.Tensor):
                return None
            count = name in ("sum", "nansum") and (t.mask or (isinstance(x, torch.Tensor) and not x.is_floating_point()
                                                             and not x.is_complex()))   # a mean of a mask is a share
            zero = None if t.positive else self._producer(name, count=count,
                                                          operand=x if tx is None and not count else None)
            return Tag(upper=t.upper and name in ("mean", "nanmean"), nonneg=t.nonneg, nonpos=t.nonpos,
                       positive=t.positive,
                       zero=zero, sqrt_zero=self._producer(name, origin=t.sqrt_zero.origin or t.sqrt_zero.where)
                       if t.sqrt_zero is not None else None)
        if name in NORMS or name in SPREADS or name in COUNTS:
            p = self._producer(name, count=name in COUNTS)
            return Tag(nonneg=True, zero=p, sqrt_zero=p if name not in COUNTS else None)
        if name in MAXES:
            if len(args) > 1 and isinstance(args[1], torch.Tensor):
                return None  # torch.max(a, b): elementwise, not a reduction
            return Tag(max_of=t.root if t.root is not None else id(x))
        if name in SQRT_OUT:
            return Tag(nonneg=True, positive=t.positive, zero=t.zero, sqrt_zero=t.sqrt_zero)
        if name in POWS:
            p = _arg(args, kwargs, 1, "exponent")
            if _number(p) and float(p).is_integer() and int(p) % 2 == 0 and p > 0:
                return Tag(nonneg=True, sqrt_zero=self._producer(name))
            return None
        if name in MULS or name in DIVS:
            return self._scaled(name, args, kwargs, x, t)
        if name in ADDS or name in SUBS:
            return self._shifted(name, args, kwargs, x, t)
        if name in RSUBS:
            c = _arg(args, kwargs, 1, "other")
            if not _number(c):
                return None
            prob = t.prob
            if prob is not None:
                prob = replace(prob, complement=not prob.complement) \
                    if c == 1 and prob.scale == 1.0 and not prob.negated else None
            return Tag(prob=prob, upper=t.nonneg, nonneg=prob is not None)
        if name in NEGS:
            prob = replace(t.prob, negated=not t.prob.negated) if t.prob is not None else None
            return Tag(prob=prob, upper=t.nonneg, nonpos=t.nonneg, nonneg=t.nonpos, zero=t.zero)
        return None

    def _producer(self, name: str, **kw) -> Producer:
        if not self.locate:
            return Producer(op=name, **kw)
        frame = sys._getframe(1)
        while frame is not None and not _user_file(frame.f_code.co_filename):
            frame = frame.f_back
        return Producer(op=name, where=_where(frame), module=self.module_name(), **kw)

    def module_name(self) -> str | None:
        return None

    def _clamped(self, name: str, args, kwargs, t: Tag) -> Tag:
        lo = _arg(args, kwargs, 1, "min")
        hi = None if name.startswith("clamp_min") else _arg(args, kwargs, 2, "max")
        lo_num = float(lo) if _number(lo) else None
        floored = lo is not None   # clamped from below: no longer zero, no longer a probability that reaches 0
        hi_num = float(hi) if _number(hi) else None
        return Tag(prob=None if floored or hi is not None else t.prob, upper=t.upper or hi is not None,
                   nonpos=t.nonpos or (hi_num is not None and hi_num <= 0),
                   nonneg=t.nonneg or (lo_num is not None and lo_num >= 0),
                   positive=t.positive or (lo_num is not None and lo_num > 0),
                   zero=None if floored else t.zero, sqrt_zero=None if floored else t.sqrt_zero, mask=t.mask)

    def _scaled(self, name: str, args, kwargs, x, t: Tag) -> Tag | None:
        y = _arg(args, kwargs, 1, "other")
        if _number(y):
            c = float(y) if name in MULS else (1.0 / float(y) if y else math.inf)
            if c == 0 or not math.isfinite(c):
                return None
            prob = replace(t.prob, scale=t.prob.scale * c) if t.prob is not None and c > 0 \
                and not t.prob.negated else None
            return Tag(prob=prob, upper=t.upper if c > 0 else t.nonneg, nonneg=t.nonneg if c > 0 else t.nonpos,
                       nonpos=t.nonpos if c > 0 else t.nonneg,
                       positive=t.positive and c > 0, zero=t.zero, sqrt_zero=t.sqrt_zero, mask=t.mask and c > 0)
        ty = self.tag(y) or Tag()
        if name in MULS and y is x and isinstance(x, torch.Tensor):
            return Tag(nonneg=True, sqrt_zero=self._producer("mul"))   # x * x
        if name in MULS:
            nonneg = (t.nonneg and ty.nonneg) or (t.nonpos and ty.nonpos)
            return Tag(nonneg=nonneg, nonpos=(t.nonpos and ty.nonneg) or (t.nonneg and ty.nonpos),
                       positive=t.positive and ty.positive, zero=t.zero or ty.zero,
                       sqrt_zero=(t.sqrt_zero or ty.sqrt_zero) if nonneg else None, mask=t.mask and ty.mask)
        return Tag(nonneg=t.nonneg and ty.nonneg, nonpos=t.nonpos and ty.nonneg, positive=t.positive and ty.positive)

    def _shifted(self, name: str, args, kwargs, x, t: Tag) -> Tag | None:
        y = _arg(args, kwargs, 1, "other")
        alpha = kwargs.get("alpha", 1)
        sub = name in SUBS
        if _number(y) or (isinstance(y, torch.Tensor) and not y.requires_grad and y.numel() == 1
                          and self.tag(y) is None):
            c = (float(y) * alpha * (-1 if sub else 1)) if _number(y) else None
            prob = None
            if t.prob is not None and t.prob.negated and c == 1 and t.prob.scale == 1.0:
                prob = replace(t.prob, negated=False, complement=not t.prob.complement)   # -p + 1
            eps = c is None or c != 0
            return Tag(prob=prob, upper=t.upper, nonneg=prob is not None or (t.nonneg and c is not None and c >= 0),
                       nonpos=t.nonpos and c is not None and c <= 0,
                       positive=(t.nonneg and c is not None and c > 0) or (t.positive and c is not None and c >= 0),
                       zero=None if eps else t.zero, sqrt_zero=None if eps else t.sqrt_zero)
        if not isinstance(y, torch.Tensor):
            return None
        ty = self.tag(y) or Tag()
        if sub:
            root = t.root if t.root is not None else id(x)
            if ty.max_of is not None and ty.max_of == root:   # x - max(x), x - logsumexp(x)
                return Tag(upper=True, nonpos=True)
            return Tag(nonpos=t.nonpos and ty.nonneg, nonneg=t.nonneg and ty.nonpos)
        nonneg = t.nonneg and ty.nonneg
        positive = (t.positive and ty.nonneg) or (ty.positive and t.nonneg)
        # a sum of two reductions that can each be zero can be zero (Dice: p.sum() + mask.sum() on an empty mask)
        zero = t.zero if not positive and t.zero is not None and ty.zero is not None \
            and not _positive_operand(t.zero) and not _positive_operand(ty.zero) else None
        return Tag(upper=t.upper and ty.upper, nonneg=nonneg, nonpos=t.nonpos and ty.nonpos, positive=positive,
                   zero=zero, sqrt_zero=t.sqrt_zero if nonneg and t.sqrt_zero and ty.sqrt_zero else None)


def _on_path(x) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad


def _positive_operand(p: Producer) -> bool:
    """A reduction of a constant the step did not compute, all of it above zero (class weights): not zero."""
    x = p.operand
    if not isinstance(x, torch.Tensor) or x.requires_grad or not x.is_floating_point() or x.numel() == 0:
        return False
    with torch.no_grad():
        lo = float(x.min())
    return lo > 0


def call_site(func, frame):
    """The user's frame that called ``func``, or None when torch or nandoctor called it (their own code)."""
    code = getattr(func, "__code__", None)
    while frame is not None:
        fn = frame.f_code.co_filename
        if (code is not None and frame.f_code is code) or fn.endswith(DISPATCH_FILES) \
                or frame.f_code.co_name == "__torch_function__":   # a mode's own frame (tracers nest)
            frame = frame.f_back
            continue
        return frame if _user_file(fn) else None
    return None


# --- the tracer: records each hazard with how close it is to firing ------------------------------
class HazardTracer(Provenance):
    """A ``Provenance`` that records every hazard (once per line) with the numbers that say how near it is."""

    def __init__(self, model: nn.Module | None = None):
        super().__init__()
        self.model_ids = {id(m) for m in model.modules()} if model is not None else set()
        self.names = {id(m): n or "(model)" for n, m in model.named_modules()} if model is not None else {}
        self.stack: list[nn.Module] = []
        self.in_loss = 0
        self.found: dict[tuple, dict] = {}
        self.outputs: dict[tuple, list] = {}   # the autograd nodes of each hazard's outputs
        self.roots: list[torch.Tensor] = []     # what backward() was called on
        self.calls = 0
        self._handles: list = []

    def __enter__(self):
        self._handles = [module_hooks.register_module_forward_pre_hook(lambda m, i: self.stack.append(m)),
                         module_hooks.register_module_forward_hook(self._pop, always_call=True)]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return super().__exit__(*exc)

    def _pop(self, module, inputs, output):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        if args and getattr(func, "__name__", "") == "backward":   # tensor.backward(), torch.autograd.backward()
            roots = args[0] if isinstance(args[0], (tuple, list)) else (args[0],)
            self.roots.extend(r for r in roots if isinstance(r, torch.Tensor))
        return super().__torch_function__(func, types, args, kwargs)

    def module_name(self) -> str | None:
        inside = [m for m in self.stack if id(m) in self.names]
        if inside:
            return self.names[id(inside[-1])]
        if self.stack:
            return f"outside the model ({type(self.stack[-1]).__name__})"
        return None

    def part(self) -> str:
        """Where the step is: the model's forward, the loss, or the user's own train_step around them."""
        if any(id(m) in self.model_ids for m in self.stack):
            return "model"
        return "loss" if self.in_loss else "step"

    def at_hazard(self, found: Found, func, args: tuple, kwargs: dict):
        try:
            record = describe(found, op_name(func, found.name), self.module_name(), self.part())
        except Exception:  # a record we cannot make: the op still runs as the user wrote it
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        key = (record["kind"], record["where"], record["op"], record["pattern"])
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
        self.outputs.setdefault(key, []).extend(o.grad_fn for o in outs if o.grad_fn is not None)
        with torch.no_grad():
            record["fires_now"] = any(o.is_floating_point() and o.numel() and not bool(torch.isfinite(o).all())
                                      for o in outs)
        old = self.found.get(key)
        if old is not None:   # the same line again (a loop, a second forward): keep the call nearest its edge
            record["count"] = old["count"] + 1
            if not nearer(record, old):
                old["count"] = record["count"]
                return out
        self.found[key] = record
        return out

    def hazards(self) -> list[dict]:
        """The hazards whose result reached what ``backward()`` was called on (all of them when it never was:
        a step that raised first, or one that does not call it): a NaN in a logged metric harms no weight."""
        order = {k: i for i, k in enumerate(KINDS)}
        found = self.found
        if self.roots and found:
            reached = graph_nodes(self.roots)
            found = {k: r for k, r in found.items() if any(fn in reached for fn in self.outputs.get(k, ()))}
        return sorted(found.values(), key=lambda r: (order[r["kind"]], r["where"] or ""))


def nearer(new: dict, old: dict) -> bool:
    """Is the call ``new`` nearer to firing than ``old`` (same line, same pattern)?"""
    if new.get("fires_now") != old.get("fires_now"):
        return bool(new.get("fires_now"))
    for key, sign in (("margin", 1), ("divisor_min", 1), ("zeros", -1), ("arg_min", 1)):
        a, b = new.get(key), old.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a != b:
            return sign * a < sign * b
    return False


def graph_nodes(roots: list[torch.Tensor]) -> set:
    """Every autograd node behind ``roots``."""
    seen: set = set()
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return seen


def describe(found: Found, op: str, module: str | None, part: str) -> dict:
    """The record of one hazard: what, where, and how close to firing now."""
    x, tag = found.operand, found.tag or Tag()
    producer = (tag.prob.producer if tag.prob is not None else tag.zero if found.kind == "division-by-zeroable"
                else tag.sqrt_zero or tag.zero)
    grad_fn = getattr(x, "grad_fn", None)
    record = {"kind": found.kind, "op": op, "producer": producer.op if producer is not None else
              (type(grad_fn).__name__ if grad_fn is not None else None),
              "producer_where": producer.where if producer is not None else None,
              "origin_where": producer.origin if producer is not None else None,
              "module": module, "in": part, "where": _where(found.frame), "code": _source(found.frame),
              "count": 1, "dtype": str(x.dtype).replace("torch.", "") if isinstance(x, torch.Tensor) else None}
    with torch.no_grad():
        record.update(closeness(found, x, tag))
    record["pattern"] = pattern(found, record)
    return record


def pattern(found: Found, record: dict) -> str:
    """The hazard in the user's terms: ``log(1 - sigmoid(x))``, ``x / norm(...)``, ``sqrt(sum(...))``."""
    short = found.name.strip("_").replace("special_", "")   # log_ -> log, special_exp2 -> exp2
    made = f"{record['producer']}(...)" if record.get("producer") else "x"
    if found.kind == "log-of-probability":
        prob = found.tag.prob
        inner = "sigmoid(x)" if prob.kind == "sigmoid" else f"softmax(x, dim={prob.dim})"
        if found.name in LOG1P:
            return f"log1p(-{inner})"
        return f"{short}({'1 - ' if prob.complement else ''}{inner})"
    if found.kind == "exp-unbounded":
        return f"{short}(x)"
    if found.kind == "division-by-zeroable":
        return f"x / {made}"
    if found.name in POWS:
        return f"pow({made}, p)"
    return f"{short}({made})"


def _finfo(x: torch.Tensor):
    return torch.finfo(x.dtype if x.is_floating_point() else torch.float32)


def closeness(found: Found, x, tag: Tag) -> dict:
    """How near the op is to returning -inf/Inf (or an infinite gradient) for the values it has now."""
    if not isinstance(x, torch.Tensor) or x.numel() == 0:
        return {}
    v = x.detach()
    v = v.double() if not v.is_floating_point() or v.dtype != torch.float64 else v
    info = _finfo(x)
    if found.kind == "log-of-probability":
        prob = tag.prob
        complement = prob.complement or found.name in LOG1P
        arg = (1.0 + v) if found.name in LOG1P else v
        lo = float(arg.min())
        # -inf when the argument rounds to 0: 1 - p once p rounds to 1 (half an ulp below 1), p once it underflows
        floor = math.log(info.eps / 2) if complement else math.log(info.tiny)
        margin = (math.log(lo) - floor) if lo > 0 else 0.0
        return {"producer_kind": prob.kind, "complement": complement, "dim": prob.dim, "arg_min": lo,
                "arg_max": float(arg.max()), "margin": max(0.0, margin), "floor": floor}
    if found.kind == "exp-unbounded":
        hi = float(v.max())
        limit = math.log(info.max)
        if found.name in ("exp2", "exp2_", "special_exp2"):
            limit = math.log2(info.max)
        return {"arg_max": hi, "overflow_at": limit, "margin": limit - hi if math.isfinite(hi) else 0.0}
    if found.kind == "division-by-zeroable":
        a = v.abs()
        return {"divisor_min": float(a.min()), "divisor_zeros": int((a == 0).sum()), "divisor_numel": v.numel(),
                "divisor_is_count": bool(tag.zero.count)}
    lo, hi = float(v.min()), float(v.max())
    return {"arg_min": lo, "arg_max": hi, "zeros": int((v == 0).sum()), "numel": v.numel()}


# --- the step, traced ---------------------------------------------------------------------------------
class MarkedLoss:
    """The user's loss, telling the tracer while it runs (other attributes are the loss's own)."""

    def __init__(self, loss_fn, tracer: HazardTracer):
        self._loss_fn, self._tracer = loss_fn, tracer

    def __call__(self, *args, **kwargs):
        self._tracer.in_loss += 1
        try:
            return self._loss_fn(*args, **kwargs)
        finally:
            self._tracer.in_loss -= 1

    def __getattr__(self, name):
        return getattr(self._loss_fn, name)


@dataclass
class HazardTrace:
    hazards: list = field(default_factory=list)
    calls: int = 0
    error: dict | None = None


def trace_hazards(patient, batch=None) -> HazardTrace:
    """One step of ``patient``'s training (fresh model, learning rate zero, the fixed batch), every call traced."""
    from nandoctor.probes.structure import make_still_optimizer
    model = patient.new_model()
    optimizer = make_still_optimizer(patient, model)
    batch = patient.fixed_batch() if batch is None else batch
    tracer = HazardTracer(model)
    traced = patient.variant("hazards traced", loss_fn=MarkedLoss(patient.loss_fn, tracer))
    error = None
    try:
        with preserved_rng():
            torch.manual_seed(patient.seed)
            with tracer:
                traced.step(model, optimizer, batch)
    except Exception as exc:  # the user's code raised: keep what was seen before (other probes report it)
        error = error_record(exc)
    return HazardTrace(hazards=tracer.hazards(), calls=tracer.calls, error=error)


@dataclass
class HazardMetrics(Metrics):
    hazards: list | None = None         # each hazardous op once per line: kind, op, producer, where, closeness
    hazard_count: int | None = None
    traced_calls: int | None = None     # torch calls the traced step made
    step_error: dict | None = None      # the traced step raised (hazards seen before it are kept)


class Hazards(Probe):
    metrics_type = HazardMetrics
    name = "hazards"
    title = "Trace one step for ops that will turn NaN before they do"
    order = 6
    share = 0.02

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient = ctx.patient
        try:
            batch = patient.fixed_batch()
        except Exception as exc:  # the user's dataset raised: the warm-up reports it
            return self.result(status="failed", error={**error_record(exc), "phase": "loading a batch"})
        trace = trace_hazards(patient, batch)
        listed = trace.hazards[:MAX_LISTED]
        summary = (f"{len(trace.hazards)} hazardous op(s): " + ", ".join(f"{h['op']} at {h['where']}" for h in listed[:3])
                   if trace.hazards else "no hazardous op on the step's path")
        return self.result(metrics={"hazards": listed, "hazard_count": len(trace.hazards),
                                    "traced_calls": trace.calls, "step_error": trace.error, "summary": summary})

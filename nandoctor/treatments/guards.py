"""A cure for a NaN born at one of the user's lines: the op that made it, guarded there and only there.

The ``nonfinite`` probe names the first torch call whose inputs were finite and whose output was not
(``torch.log`` at ``model.py:41 in forward``). ``guarded(patient, op, where)`` is a variant of the patient
whose model forward and loss run under a ``LineGuard``: the same call, matched by the same public op name
and the same user line the probe reported, gets its argument moved back into the op's domain:

- ``log``, ``log2``, ``log10``: the argument clamped at ``LOG_EPS`` (a negative or zero input has no log);
- ``log1p``: at ``-1 + LOG_EPS``;
- ``sqrt``, ``rsqrt``: at zero, plus ``ROOT_EPS`` (the slope at zero is infinite);
- ``pow`` with a fractional exponent: the base clamped at ``ROOT_EPS`` (a negative base has no real root);
- ``div``, ``/``, ``reciprocal``: the divisor kept at least ``DIV_EPS`` away from zero, its sign kept;
- ``acos``, ``asin``, ``atanh``: the argument kept inside (-1, 1).

If the run is then finite and trains, the NaN was born at that line, and the guard (or the stable
form of the expression) is the fix. Any other op is not guarded: no cure is offered for it.
"""

from __future__ import annotations

import traceback

import torch
from torch.overrides import TorchFunctionMode

from nandoctor.treatments.scoped import Scoped, scoped_variant

LOG_EPS = 1e-12
ROOT_EPS = 1e-12
DIV_EPS = 1e-8
UNIT_EPS = 1e-7

LOGS = {"log", "log2", "log10", "log_"}
ROOTS = {"sqrt", "rsqrt", "sqrt_", "rsqrt_"}
POWS = {"pow", "pow_", "__pow__", "float_power"}
DIVS = {"div", "divide", "true_divide", "__truediv__", "__itruediv__", "div_", "__rtruediv__", "reciprocal"}
UNIT = {"acos", "asin", "atanh", "arccos", "arcsin", "arctanh"}


def guardable(op: str | None) -> bool:
    """Whether ``op`` (a public name such as ``torch.Tensor.pow``) has a guard here."""
    name = str(op or "").rsplit(".", 1)[-1]
    return name in LOGS | ROOTS | POWS | DIVS | UNIT | {"log1p"}


def _eps(x: torch.Tensor, eps: float) -> float:
    return max(eps, torch.finfo(x.dtype).tiny) if x.is_floating_point() else eps


def _away_from_zero(d: torch.Tensor) -> torch.Tensor:
    eps = _eps(d, DIV_EPS)
    return torch.where(d.abs() < eps, torch.where(d < 0, -eps, eps).to(d.dtype), d)


def guard_args(name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """The op's arguments moved into its domain, or None when this call cannot be guarded."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if name in LOGS:
        return (x.clamp_min(_eps(x, LOG_EPS)), *args[1:]), kwargs
    if name == "log1p":
        return (x.clamp_min(-1 + UNIT_EPS), *args[1:]), kwargs
    if name in ROOTS:
        return (x.clamp_min(0) + _eps(x, ROOT_EPS), *args[1:]), kwargs
    if name in POWS:
        exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
        fractional = (isinstance(exponent, float) and not float(exponent).is_integer()) or \
            (isinstance(exponent, torch.Tensor) and exponent.is_floating_point())
        if not fractional or not isinstance(x, torch.Tensor):
            return None
        return (x.clamp_min(_eps(x, ROOT_EPS)), *args[1:]), kwargs
    if name in ("reciprocal", "__rtruediv__"):   # 1 / x, number / x: the divisor is args[0]
        return (_away_from_zero(x), *args[1:]), kwargs
    if name in DIVS:
        if len(args) > 1 and isinstance(args[1], torch.Tensor):
            return (x, _away_from_zero(args[1]), *args[2:]), kwargs
        if isinstance(kwargs.get("other"), torch.Tensor):
            return args, {**kwargs, "other": _away_from_zero(kwargs["other"])}
        return None
    if name in UNIT:
        return (x.clamp(-1 + UNIT_EPS, 1 - UNIT_EPS), *args[1:]), kwargs
    return None


class LineGuard(Scoped, TorchFunctionMode):
    """Guards the calls of ``op`` made at the user's line ``where`` (as the nonfinite probe names both)."""

    def __init__(self, op: str, where: str):
        super().__init__()
        self.op, self.where = op, where
        self.name = op.rsplit(".", 1)[-1]
        self.guarded = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from nandoctor.probes.nonfinite import op_name, user_line
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == self.name and op_name(func, name) == self.op:
            stack = [(f.filename, f.lineno, f.name) for f in traceback.extract_stack()[:-1]]
            if user_line(stack) == self.where:
                try:
                    fixed = guard_args(name, tuple(args), dict(kwargs))
                except Exception:  # a signature the guard does not know: the user's op, unchanged
                    fixed = None
                if fixed is not None:
                    self.guarded += 1
                    return func(*fixed[0], **fixed[1])
        return func(*args, **kwargs)


def guarded(patient, op: str, where: str):
    """A variant of ``patient`` whose forward and loss guard ``op`` at the user's line ``where``."""
    return scoped_variant(patient, f"{op} guarded at {where}", LineGuard(op, where))

"""Cures for numerical hazards: the user's model and loss with each hazardous op rewritten on the fly.

``rewritten(patient, change)`` is a variant of the patient whose model (a forward pre-hook and hook
on each module, so names and weights are the user's) and loss run under a ``Rewriter``: the
same ``Provenance`` that finds the hazards (``nandoctor.probes.hazards``), which replaces each one
at the user's call by its stable form:

- ``log(sigmoid(x))`` -> ``logsigmoid(x)``, ``log(1 - sigmoid(x))`` and ``log1p(-sigmoid(x))`` ->
  ``logsigmoid(-x)``, ``log(softmax(x, d))`` -> ``log_softmax(x, d)``, the views, slices and constant
  factors in between replayed on the log-probabilities; a form without a stable twin (``1 - softmax``)
  is clamped at ``PROB_EPS`` before the log;
- ``exp(x)`` -> ``exp(clamp(x, max=EXP_MAX))``;
- ``a / d`` -> ``a / clamp(d, min=DIV_EPS)`` (a count: ``clamp(d, min=1)``);
- ``sqrt(s)``, ``pow(s, p)`` -> ``sqrt(s + SQRT_EPS)``, ``pow(s + SQRT_EPS, p)``.

``hazard_count`` (a cure's measure) traces one step of a patient and counts what is left;
``stress_run`` (a cure's protocol) trains the fixed batch at ``STRESS_LR_FACTOR`` times the user's
learning rate, where a hazard that would fire after thousands of steps fires within a few hundred.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nandoctor.probes.hazards import LOG1P, LOGS, Provenance, trace_hazards
from nandoctor.probes.training import train
from nandoctor.treatments import Outcome
from nandoctor.treatments.scoped import Scoped, scoped_variant

PROB_EPS = 1e-12       # the floor under a probability whose log has no stable twin
EXP_MAX = 30.0         # the largest argument exp() is given (e^30 ~ 1e13: far from float32's 3e38)
DIV_EPS = 1e-8         # the smallest divisor
SQRT_EPS = 1e-12       # added under a square root (its slope at the eps: 5e5, finite)
STRESS_LR_FACTOR = 10.0  # the stress run trains at this many times the user's learning rate ...
STRESS_STEPS = 120       # ... for this many steps on the fixed batch (both arms: the cure trains 2x this)


def _eps(x: torch.Tensor, eps: float) -> float:
    """``eps``, raised to the dtype's smallest normal number where it would underflow (float16)."""
    return max(eps, torch.finfo(x.dtype).tiny) if x.is_floating_point() else eps


class Rewriter(Scoped, Provenance):
    """A ``Provenance`` that replaces each hazard at the user's call by its stable form.

    Entered around the model's forward and the loss (``push``/``pop`` count, so a model called inside
    the loss does not enter twice). A rewrite that fails runs the user's op unchanged, so the measure
    of the copy still finds that hazard.
    """

    locate = False
    on_path_only = False   # the cured copy scored without a gradient (the data scan, eval) is rewritten too

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.rewrites = 0

    def at_hazard(self, found, func, args: tuple, kwargs: dict):
        try:
            out = REWRITES[found.kind](found, func, args, kwargs)
        except Exception:  # an op whose signature the rewrite does not know: the user's op, unchanged
            out = None
        if out is None:
            return func(*args, **kwargs)
        self.rewrites += 1
        return out


def stable_log(found, func, args: tuple, kwargs: dict):
    """``log`` (or log2/log10, ``log1p(-p)``) of a sigmoid/softmax output from the logits themselves."""
    prob = found.tag.prob
    log1p = found.name in LOG1P
    complement = prob.complement != log1p   # log1p(-p) is log(1 - p)
    if prob.kind == "sigmoid":
        out = F.logsigmoid(-prob.logits if complement else prob.logits)
    elif not complement:
        out = torch.log_softmax(prob.logits, prob.dim, dtype=prob.dtype)
    else:  # log(1 - softmax): no stable twin here, clamp the argument
        x = found.operand
        arg = (1 + x) if log1p else x
        return torch.log(arg.clamp_min(_eps(arg, PROB_EPS))) * (1.0 if log1p else LOGS[found.name])
    if prob.scale != 1.0:
        out = out + math.log(prob.scale)
    for view, rest, kw, index in prob.chain:   # views commute with an elementwise log
        out = view(out, *rest, **kw)
        if index is not None:
            out = out[index]
    return out if log1p else out * LOGS[found.name]


def bounded_exp(found, func, args: tuple, kwargs: dict):
    x = found.operand
    limit = min(EXP_MAX, math.log(torch.finfo(x.dtype).max) - 2.0)
    clamped = x.clamp_max_(limit) if found.name.endswith("_") else x.clamp(max=limit)
    return func(clamped, *args[1:], **kwargs)


def guarded_division(found, func, args: tuple, kwargs: dict):
    d = found.operand
    tag = found.tag
    if tag.zero.count:
        guard = d.clamp_min(1)
    elif tag.nonneg:
        guard = d.clamp_min(_eps(d, DIV_EPS))
    else:  # a signed divisor: keep its sign, at least eps away from zero
        eps = _eps(d, DIV_EPS)
        guard = torch.where(d.abs() < eps, torch.where(d < 0, -eps, eps).to(d.dtype), d)
    if args and args[0] is d:   # 1 / d, d.reciprocal()
        return func(guard, *args[1:], **kwargs)
    if len(args) > 1:
        return func(args[0], guard, *args[2:], **kwargs)
    return func(*args, **{**kwargs, "other": guard})


def eps_under_root(found, func, args: tuple, kwargs: dict):
    x = found.operand
    eps = _eps(x, SQRT_EPS)
    shifted = x.add_(eps) if found.name.endswith("_") else x + eps
    return func(shifted, *args[1:], **kwargs)


REWRITES = {"log-of-probability": stable_log, "exp-unbounded": bounded_exp,
            "division-by-zeroable": guarded_division, "sqrt-at-zero": eps_under_root}


def rewritten(patient, change: str, loss: bool = True):
    """A variant of ``patient`` whose model forward (and, with ``loss``, its loss) runs with every hazard
    rewritten. Without ``loss`` the user's loss object is kept as it is (the probes that read a torch
    loss's class and reduction see it unchanged)."""
    # one rewriter per variant: the model's outputs and the loss share what it follows
    return scoped_variant(patient, change, Rewriter(), loss=loss)


# --- what a cure measures and how it trains ---------------------------------------------------------
def hazard_count(patient) -> dict:
    """A cure's measure: the hazards one traced step of ``patient`` still shows (None when the step raised)."""
    trace = trace_hazards(patient)
    return {"hazards": None if trace.error else len(trace.hazards)}


def stress_run(patient, steps: int, deadline: float | None, lr: float | None) -> Outcome:
    """A cure's protocol: the fixed batch at ``STRESS_LR_FACTOR`` x the user's LR (constant), as the user trains."""
    stress_lr = STRESS_LR_FACTOR * (lr if lr is not None else patient.lr)
    model = patient.new_model()
    optimizer = patient.make_optimizer(model, lr=stress_lr, schedule=False)
    run = train(patient, model, optimizer, patient.fixed_batch(), steps, deadline=deadline)
    return Outcome(run, measures={"stress_lr": stress_lr, "stress_nonfinite_step": run.nonfinite_step})


"""Cures for broken wiring, tried on copies: zero the gradients, give the optimizer every
parameter, keep the first instance of a layer that ``forward()`` builds anew on every call.

Each function returns what ``try_cure`` needs (a patient variant, or optimizer hooks);
``cure`` runs it against the overfit probe's own run and judges it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from nandoctor.patient import split_batch
from nandoctor.treatments import try_cure

CLEARLY_BETTER = 0.5   # a cure also counts when the treated tail loss is at most half the untreated one


def cure(ctx, variant, tried: str, *, code: str, hooks: Callable | None = None) -> dict:
    """``try_cure`` against the overfit probe's run; cured = the treated run is healthy and clearly better."""
    overfit = ctx.evidence.ok("overfit") if ctx.evidence is not None else None
    before = overfit.data.get("run") if overfit is not None else None
    acc = overfit.metrics.get("accuracy") if overfit is not None else None
    record = try_cure(ctx, variant, tried, code=code, before=before, before_accuracy=acc, hooks=hooks)
    b, a = record["before"], record["after"]
    if not record["cured"] and a.get("tail_loss") is not None and b.get("tail_loss") is not None:
        after_ok = a.get("error") is None and a.get("nonfinite_step") is None
        better = 0 <= a["tail_loss"] < CLEARLY_BETTER * b["tail_loss"]
        record["cured"] = bool(after_ok and better)
    return record


def zero_grad_first(train_step: Callable) -> Callable:
    """The user's step with ``optimizer.zero_grad(set_to_none=True)`` called before it."""
    def step(model, batch, loss_fn, optimizer):
        optimizer.zero_grad(set_to_none=True)
        return train_step(model, batch, loss_fn, optimizer)
    return step


def add_missing_params(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Hook for ``try_cure``: give the optimizer the trainable parameters its groups leave out."""
    have = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [p for p in model.parameters() if p.requires_grad and id(p) not in have]
    if missing:
        optimizer.add_param_group({"params": missing})


def unfrozen(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A model factory that makes every parameter of the user's model trainable."""
    def build() -> nn.Module:
        model = factory()
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    return build


def keep_first_instance(patient) -> Callable[[], nn.Module]:
    """A model factory whose ``forward()`` reuses the first layer it assigned to ``self`` instead of a new one.

    1. a forward pre-hook installs a global module-registration hook, the post-hook removes it;
    2. while it is installed, ``self.x = nn.Conv2d(...)`` hands back the ``self.x`` of the first call;
    3. one forward on the fixed batch before the optimizer is built, so the kept layers are in it.
    """
    factory = patient.model_factory
    batch = patient.fixed_batch()

    def build() -> nn.Module:
        model = factory()
        cache: dict[tuple[int, str], nn.Module] = {}
        handles: list = []

        def reuse(parent, name, sub):
            if sub is None:
                return None
            kept = cache.setdefault((id(parent), name), sub)
            return kept if kept is not sub and type(kept) is type(sub) else None

        def install(_m, _inputs):
            handles.append(module_hooks.register_module_module_registration_hook(reuse))

        def remove(_m, _inputs, _output):
            while handles:
                handles.pop().remove()

        model.register_forward_pre_hook(install)
        model.register_forward_hook(remove, always_call=True)
        inputs, _ = split_batch(batch)
        with torch.no_grad():
            model.to(patient.device)(inputs)
        return model
    return build

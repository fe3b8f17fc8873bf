"""Cures for broken wiring, tried on copies: zero the gradients, give the optimizer every
parameter, keep the first instance of a layer that ``forward()`` builds anew on every call.

Each function returns what a ``Cure`` needs (a model factory, a step, or optimizer hooks);
``REWIRED`` is how such cures are judged.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from nandoctor.patient import split_batch
from nandoctor.treatments import judges


# a rewired set-up must train where the untreated one did not, end clearly lower than it, or take clearly more
# off its loss in the same steps (same init, batch and seed: the difference is the rewiring, not noise)
REWIRED = judges.either(judges.beats_control, judges.clearly_better, judges.improves(0.05))


def reinitialised(patient, scheme: str) -> Callable[[], nn.Module]:
    """A model factory: the user's model re-initialised with a standard ``scheme`` (as the init probe names it)."""
    from nandoctor.probes.init_compare import scheme_factory
    return scheme_factory(patient, scheme)


def without_samples(patient, indices) -> "object":
    """The training set without the samples at ``indices`` (a ``Subset`` of the user's dataset, not a copy)."""
    from torch.utils.data import Subset
    drop = set(int(i) for i in indices)
    return Subset(patient.train_data, [i for i in range(len(patient.train_data)) if i not in drop])


def zero_grad_first(train_step: Callable) -> Callable:
    """The user's step with ``optimizer.zero_grad(set_to_none=True)`` called before it."""
    def step(model, batch, loss_fn, optimizer):
        optimizer.zero_grad(set_to_none=True)
        return train_step(model, batch, loss_fn, optimizer)
    return step


def add_missing_params(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A cure's ``hooks``: give the optimizer the trainable parameters its groups leave out."""
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

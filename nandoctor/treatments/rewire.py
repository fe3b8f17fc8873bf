"""Cures for broken wiring, tried on copies: zero the gradients, give the optimizer every
parameter, keep the first instance of a layer that ``forward()`` builds anew on every call
(assigned to ``self`` or not), register layers kept in plain Python lists and dicts, swap a deep
sigmoid/tanh stack for ReLU with its init.

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


def registered_containers(patient) -> Callable[[], nn.Module]:
    """A model factory whose plain Python lists/tuples/dicts of layers become ``nn.ModuleList``/``nn.ModuleDict``
    (the same layers, in the same order, now registered: in ``parameters()``, ``.to()`` and ``state_dict``)."""
    factory = patient.model_factory

    def build() -> nn.Module:
        model = factory()
        for owner in list(model.modules()):
            for name, value in list(vars(owner).items()):
                if name.startswith("_"):
                    continue
                if isinstance(value, (list, tuple)) and value and all(isinstance(v, nn.Module) for v in value):
                    delattr(owner, name)
                    setattr(owner, name, nn.ModuleList(value))
                elif isinstance(value, dict) and value and all(isinstance(k, str) and isinstance(v, nn.Module)
                                                               for k, v in value.items()):
                    delattr(owner, name)
                    setattr(owner, name, nn.ModuleDict(value))
        return model.to(patient.device)
    return build


def reused_strays(patient) -> Callable[[], nn.Module]:
    """A model factory whose ``forward()`` reuses the parameters of the layers it builds and calls without
    assigning them (``nn.Linear(c, c)(x)`` inside ``forward``).

    While the model runs, a global forward pre-hook sees every module called that is not part of the model:
    the k-th such call of a forward gets the parameters of the k-th layer of the first forward (same type and
    shapes), which are kept registered under ``model.kept_strays`` so the optimizer trains them. One forward
    on the fixed batch before the optimizer is built creates them."""
    factory = patient.model_factory
    batch = patient.fixed_batch()

    def build() -> nn.Module:
        model = factory()
        kept = nn.ModuleList()
        state = {"k": 0, "own": set(), "handles": []}

        def share(mod, _inputs):
            if id(mod) in state["own"] or not any(True for _ in mod.parameters(recurse=False)):
                return None
            k, state["k"] = state["k"], state["k"] + 1
            if k == len(kept):
                kept.append(mod)   # the first forward's layer, trained from now on
                state["own"].add(id(mod))
                return None
            first = kept[k]
            if type(first) is type(mod) and all(n in first._parameters and first._parameters[n] is not None
                                                and p is not None and first._parameters[n].shape == p.shape
                                                for n, p in mod._parameters.items()):
                for n in mod._parameters:
                    mod._parameters[n] = first._parameters[n]
            return None

        def install(_m, _inputs):
            state["k"] = 0
            state["own"] = {id(m) for m in model.modules()}
            state["handles"].append(module_hooks.register_module_forward_pre_hook(share))

        def remove(_m, _inputs, _output):
            while state["handles"]:
                state["handles"].pop().remove()

        model.register_forward_pre_hook(install)
        model.register_forward_hook(remove, always_call=True)
        inputs, _ = split_batch(batch)
        model.to(patient.device)
        with torch.no_grad():
            model(inputs)
        model.kept_strays = kept.to(patient.device)
        return model
    return build


SATURATING = (nn.Sigmoid, nn.Tanh)


def saturating_hidden(model: nn.Module) -> list[str]:
    """The sigmoid/tanh modules of ``model`` between weight layers (in registration order, which is forward
    order for the stacks this concerns): an activation after the last weight layer is the output's, kept."""
    names = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    last_weight = max((i for i, (_, m) in enumerate(names) if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))),
                      default=-1)
    return [name for i, (name, m) in enumerate(names) if isinstance(m, SATURATING) and i < last_weight]


def relu_stack(patient) -> Callable[[], nn.Module]:
    """A model factory: the user's model with its hidden sigmoid/tanh modules replaced by ReLU and its weight
    layers (but the last) re-initialised for ReLU (Kaiming normal, zero biases): the standard fix for a deep
    saturating stack, whose gradients shrink by the activation's derivative (at most 0.25 for a sigmoid) at
    every layer."""
    factory = patient.model_factory

    def build() -> nn.Module:
        model = factory()
        swap = set(saturating_hidden(model))
        for parent_name, parent in list(model.named_modules()):
            for key, child in list(parent.named_children()):
                if (f"{parent_name}.{key}" if parent_name else key) in swap:
                    setattr(parent, key, nn.ReLU())
        layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
        with torch.no_grad():
            for m in layers[:-1]:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        return model
    return build


def batch_first_flipped(patient, layers: list[str]) -> Callable[[], nn.Module]:
    """A model factory: the user's model with ``batch_first=True`` on the attention and recurrent layers named
    (built with ``batch_first=False`` and fed ``[batch, time, features]``): each then reads dim 0 as the batch,
    as the data has it. Weights and everything else as the user's factory makes them."""
    factory = patient.model_factory

    def build() -> nn.Module:
        model = factory()
        for name in layers:
            model.get_submodule(name).batch_first = True
        return model
    return build


def _output_weights(model: nn.Module, module_name: str, inputs, classes: int) -> tuple | None:
    """(weight, bias or None, fan_in) of the raw parameters that make the output of ``module_name`` (the model
    itself for ""), found by what they do: with the bias zeroed, halving the weight halves the output. Among
    the module's own parameters with a dim of ``classes``; None when none (or more than one) does that."""
    owner = model.get_submodule(module_name) if module_name else model
    own = dict(owner.named_parameters(recurse=False))
    biases = [p for p in own.values() if p.dim() == 1 and p.shape[0] == classes]
    weights = [p for p in own.values() if p.dim() == 2 and classes in p.shape]
    found = []
    was_training = model.training
    model.eval()   # no dropout: the same input gives the same output
    with torch.no_grad():
        saved = [b.clone() for b in biases]
        try:
            for b in biases:
                b.zero_()
            base = model(inputs)
            if not isinstance(base, torch.Tensor) or not bool(torch.isfinite(base).all()) or not bool(base.abs().sum()):
                return None
            for w in weights:
                w.mul_(0.5)
                half = model(inputs)
                w.mul_(2.0)
                if isinstance(half, torch.Tensor) and torch.allclose(half, 0.5 * base, rtol=1e-3, atol=1e-6):
                    found.append(w)
        finally:
            for b, s in zip(biases, saved):
                b.copy_(s)
            model.train(was_training)
    if len(found) != 1:
        return None
    w = found[0]
    fan_in = w.shape[1] if w.shape[0] == classes and w.shape[1] != classes else w.shape[0]
    return w, (biases[0] if len(biases) == 1 else None), int(fan_in)


def raw_output_reset(patient, module_name: str, classes: int) -> Callable[[], nn.Module] | None:
    """A model factory: the user's model with the raw output parameters of ``module_name`` (a weight matrix held
    as a bare ``nn.Parameter``, as in ``h @ self.W2 + self.b2``) drawn as ``nn.Linear`` draws its own:
    uniform in +-1/sqrt(fan_in), the bias too. None when those parameters cannot be told apart."""
    from nandoctor.patient import split_batch
    inputs = split_batch(patient.fixed_batch())[0]
    probe_model = patient.new_model()
    if _output_weights(probe_model, module_name, inputs, classes) is None:
        return None
    factory = patient.model_factory

    def build() -> nn.Module:
        model = factory()
        found = _output_weights(model, module_name, inputs.to(next(model.parameters()).device), classes)
        if found is not None:
            w, b, fan_in = found
            bound = 1.0 / fan_in ** 0.5
            with torch.no_grad():
                w.uniform_(-bound, bound)
                if b is not None:
                    b.uniform_(-bound, bound)
        return model
    return build


def bottleneck_widened(patient, narrow: str, consumer: str, width: int) -> Callable[[], nn.Module]:
    """A model factory: the user's model with the ``narrow`` nn.Linear (a layer of one or two units between wider
    ones) given ``width`` output units and the nn.Linear that reads it (``consumer``, through elementwise layers
    only) as many inputs, both freshly initialised the PyTorch way; every other weight as the user's factory
    makes it. What a capacity test needs: the same model with room for the information to get through."""
    factory = patient.model_factory

    def build() -> nn.Module:
        model = factory()
        for name, make in ((narrow, lambda m: nn.Linear(m.in_features, width, bias=m.bias is not None)),
                           (consumer, lambda m: nn.Linear(width, m.out_features, bias=m.bias is not None))):
            parent_name, _, key = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            old = getattr(parent, key)
            setattr(parent, key, make(old).to(device=old.weight.device, dtype=old.weight.dtype))
        return model
    return build

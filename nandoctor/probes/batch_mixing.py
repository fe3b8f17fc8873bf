"""Does a sample's output depend on the other samples in its batch?

In eval mode (running BatchNorm statistics, no dropout) a model that keeps its samples apart gives
the second half of a batch the same outputs whether the first half is there or not. One that mixes
them does not: an attention or recurrent layer built with ``batch_first=False`` and fed
``[batch, time, features]`` attends (or recurs) across the batch, a ``view`` that should have been a
``permute`` interleaves samples, a softmax or a normalisation runs over dim 0. Such a model can
still memorise one batch; what it learns does not belong to any one sample.

``batch_mixing(model, inputs)`` measures it with three forward passes without a gradient: the
batch twice from two RNG states (a model that samples in eval mode is not judged), and its
second half alone. Where they differ, a fourth pass names the first module whose output on those
samples changed with their batch-mates, and whether it is a ``batch_first=False`` layer that was
given the batch on dim 0 (or, when the mixing is in the model's own ``forward``, the last module
whose outputs still agreed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nandoctor.probes.instrument import _first_tensor

RESOLUTION = 1e-4      # a change of the shared samples' outputs below this share of their scale is rounding (a kernel
                       # picked for another batch size differs by ~1e-6): no module is looked for
MIN_SAMPLES = 4        # two samples in each half at least
BATCH_FIRST_TYPES = (nn.MultiheadAttention, nn.RNNBase)


def rows(batch, lo: int, hi: int):
    """Samples ``lo:hi`` of a batch (tensors, or tuples/lists/dicts of them, sliced on dim 0); None otherwise."""
    if isinstance(batch, torch.Tensor):
        return batch[lo:hi]
    if isinstance(batch, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in batch):
        return type(batch)(t[lo:hi] for t in batch)
    if isinstance(batch, dict) and all(isinstance(t, torch.Tensor) for t in batch.values()):
        return {k: t[lo:hi] for k, t in batch.items()}
    return None


def batch_size(inputs) -> int | None:
    first = _first_tensor(inputs)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else None


def _batch_axis(whole: torch.Tensor, part: torch.Tensor, n: int, k: int) -> int | None:
    """The axis that holds the samples: ``n`` long in the whole batch's output, ``k`` in the part's, the
    other axes alike."""
    if whole.dim() != part.dim() or whole.dim() == 0:
        return None
    for axis in range(min(whole.dim(), 2)):
        if whole.shape[axis] == n and part.shape[axis] == k and \
                all(a == b for i, (a, b) in enumerate(zip(whole.shape, part.shape)) if i != axis):
            return axis
    return None


def difference(whole: torch.Tensor, part: torch.Tensor, n: int, k: int) -> float | None:
    """How much the last ``k`` samples' outputs moved between the whole batch and those samples alone, as the
    largest absolute change over the largest absolute output; None when the samples are not on an axis."""
    if not (isinstance(whole, torch.Tensor) and isinstance(part, torch.Tensor)) or not whole.is_floating_point():
        return None
    axis = _batch_axis(whole, part, n, k)
    if axis is None:
        return None
    shared = whole.narrow(axis, n - k, k).float()
    part = part.float()
    finite = torch.isfinite(shared) & torch.isfinite(part)
    if not bool(finite.any()):
        return None
    scale = float(torch.where(finite, shared.abs(), torch.zeros_like(shared)).max())
    moved = float(torch.where(finite, (shared - part).abs(), torch.zeros_like(shared)).max())
    return moved / max(scale, 1e-12)


def _forward(model: nn.Module, inputs, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model(inputs)


def batch_mixing(model: nn.Module, inputs: Any) -> dict | None:
    """``{"difference", "samples", "batch_first_layers", "module", "module_type", "batch_first_mismatch"}`` for ``inputs``
    in eval mode, or None when it cannot be measured (too few samples, outputs with no sample axis, a model
    that is random in eval mode or raises)."""
    n = batch_size(inputs)
    if n is None or n < MIN_SAMPLES:
        return None
    k = n // 2
    rest = rows(inputs, n - k, n)
    if rest is None:
        return None
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            whole = _first_tensor(_forward(model, inputs))
            again = _first_tensor(_forward(model, inputs, seed=1))
            if whole is None or again is None or whole.shape != again.shape:
                return None
            if not torch.equal(torch.nan_to_num(whole), torch.nan_to_num(again)):
                return None   # random in eval mode: the comparison below would measure the noise
            part = _first_tensor(_forward(model, rest))
            moved = difference(whole, part, n, k)
            if moved is None:
                return None
            found = {"difference": round(moved, 6), "samples": [n, k],
                     "batch_first_layers": batch_first_layers(model)}
            if moved > RESOLUTION:
                found.update(first_mixing_module(model, inputs, rest, n, k))
            return found
    except Exception:
        return None
    finally:
        model.train(was)


def first_mixing_module(model: nn.Module, inputs, rest, n: int, k: int) -> dict:
    """The first module to finish whose output on the shared samples changes with their batch-mates (a child
    finishes before its parent: the innermost one), and whether it is a ``batch_first=False`` layer fed the
    batch on dim 0. The part's module outputs are recorded in call order, then compared as the whole batch
    makes them."""
    recorded: list[tuple[str, torch.Tensor | None]] = []
    pending = None               # while the whole batch runs: the part's outputs still to compare
    found: dict = {}
    agreed = None                # the last module whose outputs still agreed

    def hook(name):
        def run(module, args, out):
            nonlocal agreed
            t = _first_tensor(out)
            if pending is None:
                recorded.append((name, t.clone() if t is not None else None))
                return
            ref = next(pending, None)
            if found or ref is None or ref[0] != name:
                return
            moved = difference(t, ref[1], n, k)
            if moved is None:
                return
            if moved <= RESOLUTION:
                agreed = name
                return
            given = _first_tensor(args)
            found.update(module=name, module_type=type(module).__name__, module_difference=round(moved, 6),
                         batch_first_mismatch=_batch_first_false(module)
                         and given is not None and given.dim() == 3 and given.shape[0] == n)
        return run

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    try:
        _forward(model, rest)
        pending = iter(recorded)
        _forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return found or {"module": None, "after": agreed}


def _batch_first_false(module: nn.Module) -> bool:
    return isinstance(module, BATCH_FIRST_TYPES) and not getattr(module, "batch_first", True)


def batch_first_layers(model: nn.Module) -> list[str]:
    """The attention and recurrent layers built with ``batch_first=False``."""
    return [name for name, m in model.named_modules() if _batch_first_false(m)]

"""Cures for output/loss pairing problems, tried on copies of the patient.

Each builder returns what a *variant* of the patient needs (a wrapped model factory
or a wrapped loss) and never touches the user's objects; the diagnoses put them in
a ``Cure`` and ``treatments.run_cure`` trains it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn



# --- model surgery ---------------------------------------------------------------------------
class OutputMap(nn.Module):
    """The user's model followed by one op on its output (log_softmax, log, softmax, sigmoid, logit)."""

    OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "log_softmax": lambda t: torch.log_softmax(t, dim=1),
        "log": lambda t: torch.log(t.clamp_min(1e-12)),
        "softmax": lambda t: torch.softmax(t, dim=1),
        "sigmoid": torch.sigmoid,
        "logit": lambda t: torch.logit(t, eps=1e-6),
    }

    def __init__(self, model: nn.Module, op: str):
        super().__init__()
        self.model = model
        self.op = op

    def forward(self, *args, **kwargs):
        return self.OPS[self.op](self.model(*args, **kwargs))


def append_op(patient, op: str):
    """A model factory: the user's model with ``op`` applied to its output."""
    factory = patient.model_factory
    return lambda: OutputMap(factory(), op)


def replace_module(patient, name: str, new: Callable[[], nn.Module]):
    """A model factory: the user's model with the submodule ``name`` swapped for ``new()``."""
    factory = patient.model_factory

    def build() -> nn.Module:
        model = factory()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new())
        return model
    return build


# --- loss wrappers -------------------------------------------------------------------------------
def batch_len(targets) -> int:
    t = targets if isinstance(targets, torch.Tensor) else None
    return int(t.shape[0]) if t is not None and t.dim() > 0 else 1


def mean_over_batch(loss_fn: Callable) -> Callable:
    """The user's loss divided by the number of samples: a summed loss becomes a mean."""
    def loss(outputs, targets):
        return loss_fn(outputs, targets) / batch_len(targets)
    return loss


def outputs_shaped_like_targets(loss_fn: Callable) -> Callable:
    """The user's loss on outputs reshaped to the targets' shape (when they hold as many numbers)."""
    def loss(outputs, targets):
        if isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor) \
                and outputs.numel() == targets.numel():
            outputs = outputs.reshape(targets.shape)
        return loss_fn(outputs, targets)
    return loss


def clamped_outputs(loss_fn: Callable, eps: float = 1e-7) -> Callable:
    """The user's loss on outputs clamped to [eps, 1 - eps]: a log never sees 0."""
    def loss(outputs, targets):
        if isinstance(outputs, torch.Tensor):
            outputs = outputs.clamp(eps, 1 - eps)
        return loss_fn(outputs, targets)
    return loss


def logits_loss(loss_fn: Callable) -> nn.Module:
    """``BCEWithLogitsLoss`` with the settings of the user's ``BCELoss``."""
    weight = getattr(loss_fn, "weight", None)
    reduction = getattr(loss_fn, "reduction", "mean")
    return nn.BCEWithLogitsLoss(weight=weight, reduction=reduction)

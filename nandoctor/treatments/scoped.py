"""A torch function mode entered around the model's forward and the loss of a patient variant.

The cures that rewrite ops on the fly (``hazards.Rewriter``: each hazard by its stable form;
``guards.LineGuard``: one op at one user line) are ``TorchFunctionMode``s that must be active
while the user's model and loss run, and only then. ``Scoped`` counts entries (a model called
inside the loss does not enter twice); ``scoped_variant`` wraps every module and the loss.
"""

from __future__ import annotations


class Scoped:
    """Mixin for a ``TorchFunctionMode``: ``push``/``pop`` enter it on the first and leave it on the last."""

    depth = 0

    def push(self) -> None:
        if self.depth == 0:
            self.__enter__()
        self.depth += 1

    def pop(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.__exit__(None, None, None)


class ScopedLoss:
    """The user's loss run under ``scope`` (other attributes are the loss's own)."""

    def __init__(self, loss_fn, scope: Scoped):
        self._loss_fn, self._scope = loss_fn, scope

    def __call__(self, *args, **kwargs):
        self._scope.push()
        try:
            return self._loss_fn(*args, **kwargs)
        finally:
            self._scope.pop()

    def __getattr__(self, name):
        return getattr(self._loss_fn, name)


def scoped_variant(patient, change: str, scope: Scoped, loss: bool = True):
    """A variant of ``patient`` whose every module's forward (and, with ``loss``, its loss) runs under ``scope``.
    Without ``loss`` the user's loss object is kept as it is (the probes that read a torch loss's class and
    reduction see it unchanged)."""
    factory = patient.model_factory

    def build():
        model = factory()
        for module in model.modules():   # every module: a train_step may call a submodule on its own
            module.register_forward_pre_hook(lambda m, inputs: scope.push())
            module.register_forward_hook(lambda m, inputs, output: scope.pop(), always_call=True)
        return model
    loss_fn = ScopedLoss(patient.loss_fn, scope) if loss else patient.loss_fn
    return patient.variant(change, model_factory=build, loss_fn=loss_fn)

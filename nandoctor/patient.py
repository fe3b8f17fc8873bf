"""The patient: the user's objects behind one small interface.

Probes never touch the user's objects directly. They ask the patient for a
*fresh* model (built from the factory with a fixed seed, so every probe starts
from the same weights), a loader, a fixed batch, the loss, an optimizer for a
given model and LR, and one training step. Treatments make *variants* of the
patient (another loss, a wrapped model, a different step) without changing it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from nandoctor.errors import ConfigError, DataError
from nandoctor.watchdog import loader_timeout, watched


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block and give the caller back exactly the RNG state it had (torch, CUDA, numpy, random)."""
    py_state = random.getstate()
    try:
        import numpy as np
        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        np, np_state = None, None
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)


def clone_module(model: nn.Module) -> nn.Module:
    """A deep copy of a model.

    A model that keeps intermediate tensors as attributes (``self.out = self.conv(x)`` in
    ``forward``, as in seed 002) cannot be deep-copied after a forward pass: those tensors are
    not graph leaves. They are transient, so the copy is made without them.
    """
    try:
        return copy.deepcopy(model)
    except RuntimeError:
        stash = [(m, k, v) for m in model.modules() for k, v in list(vars(m).items())
                 if isinstance(v, torch.Tensor) and v.grad_fn is not None]
        for m, k, _ in stash:
            del vars(m)[k]
        try:
            return copy.deepcopy(model)
        finally:
            for m, k, v in stash:
                vars(m)[k] = v


def resolve_device(name: str | None) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; a device this machine does not have is a ``ConfigError``."""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"'{name}' is not a device.", key="device", hint="use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        have = (f"it has {torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available()
                else "CUDA is not available on it")
        raise ConfigError(f"the device '{name}' does not exist on this machine: {have}.", key="device",
                          hint="use device: auto (CUDA when there is one, else the CPU) or cpu.")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("the device 'mps' is not available on this machine.", key="device",
                          hint="use device: auto or cpu.")
    return device


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside a batch (tuples, lists, dicts) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        moved = [to_device(o, device) for o in obj]
        return type(obj)(moved) if not hasattr(obj, "_fields") else type(obj)(*moved)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch; ``DataError`` when it is not such a pair."""
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    kind = type(batch).__name__
    size = f" of {len(batch)} items" if isinstance(batch, (list, tuple, dict)) else ""
    raise DataError(f"a batch from the training set is a {kind}{size}, not an (inputs, targets) pair.",
                    key="data.train",
                    hint="make the dataset's __getitem__ return (input, target), or give a 'train_step:' "
                         "that knows how to use your batches.")


@dataclasses.dataclass
class Patient:
    """The user's training set-up. Build it with ``loading.build_patient`` or ``Patient.from_objects``."""

    model_factory: Callable[[], nn.Module]
    train_data: Dataset
    loss_fn: Callable
    optimizer_cls: type
    optimizer_kwargs: dict
    val_data: Dataset | None = None
    train_step: Callable | None = None
    batch_size: int = 32
    shuffle: bool = True
    num_workers: int = 0
    seed: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    name: str = "patient"
    loss_name: str = ""
    model_name: str = ""
    changes: tuple[str, ...] = ()  # what a treatment changed, for the report
    max_batch: int | None = None   # no batch larger than this (set after running out of memory)
    source: dict | None = None     # {"config": path} when built from a config: how to build it again elsewhere

    # --- construction -------------------------------------------------------------
    @classmethod
    def from_objects(cls, model: nn.Module | Callable[[], nn.Module], train_data: Dataset, loss: Callable,
                     optimizer: type | Callable = torch.optim.Adam, lr: float = 1e-3, *, val_data=None,
                     train_step=None, batch_size: int = 32, shuffle: bool = True, seed: int = 0,
                     device: str | None = "auto", **optimizer_kwargs) -> "Patient":
        """For notebooks: objects instead of a config. A model *instance* is copied, never trained."""
        if isinstance(model, nn.Module):
            pristine = copy.deepcopy(model)
            factory = lambda: copy.deepcopy(pristine)  # noqa: E731 - tiny closure
            model_name = type(model).__name__
        else:
            factory, model_name = model, getattr(model, "__name__", "model")
        if isinstance(optimizer, type):
            opt_cls, opt_kwargs = optimizer, {"lr": lr, **optimizer_kwargs}
        else:  # a partial of an optimizer class
            opt_cls, opt_kwargs = optimizer.func, {**optimizer.keywords}
        return cls(model_factory=factory, train_data=train_data, loss_fn=loss, optimizer_cls=opt_cls,
                   optimizer_kwargs=opt_kwargs, val_data=val_data, train_step=train_step,
                   batch_size=batch_size, shuffle=shuffle, seed=seed, device=resolve_device(device),
                   loss_name=type(loss).__name__ if isinstance(loss, nn.Module) else getattr(loss, "__name__", "loss"),
                   model_name=model_name)

    def variant(self, change: str, **fields) -> "Patient":
        """A copy with some fields replaced; ``change`` says what, for the report."""
        return dataclasses.replace(self, changes=self.changes + (change,), **fields)

    # --- the model and its optimizer -------------------------------------------------
    def new_model(self, seed: int | None = None) -> nn.Module:
        """A fresh model from the factory, always the same weights for the same seed."""
        with preserved_rng():
            torch.manual_seed(self.seed if seed is None else seed)
            model = self.model_factory()
        if not isinstance(model, nn.Module):
            raise DataError(f"the model factory returned a {type(model).__name__}, not an nn.Module.",
                            key="model", hint="return the model object from your factory function.")
        return model.to(self.device).train()

    @property
    def lr(self) -> float | None:
        """The user's learning rate (the optimizer's default when the config gives none)."""
        if "lr" in self.optimizer_kwargs:
            return float(self.optimizer_kwargs["lr"])
        default = getattr(self.optimizer_cls, "__init__", None)
        try:
            import inspect
            param = inspect.signature(default).parameters.get("lr")
            return float(param.default) if param is not None and param.default is not inspect._empty else None
        except (TypeError, ValueError):
            return None

    def make_optimizer(self, params, lr: float | None = None) -> torch.optim.Optimizer:
        """The user's optimizer class and settings over ``params`` (a model, or a list), optionally another LR."""
        if isinstance(params, nn.Module):
            params = params.parameters()
        kwargs = dict(self.optimizer_kwargs)
        if lr is not None:
            kwargs["lr"] = lr
        return self.optimizer_cls(params, **kwargs)

    # --- data ------------------------------------------------------------------------
    def loader(self, batch_size: int | None = None, shuffle: bool | None = None, dataset: Dataset | None = None,
               drop_last: bool = False) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(watched(dataset if dataset is not None else self.train_data),
                          batch_size=self.capped(batch_size or self.batch_size),
                          shuffle=self.shuffle if shuffle is None else shuffle,
                          num_workers=self.num_workers, generator=gen, drop_last=drop_last,
                          timeout=loader_timeout() if self.num_workers else 0)

    def capped(self, size: int) -> int:
        """``size``, or the largest batch that fits in memory when a probe ran out of it."""
        return min(size, self.max_batch) if self.max_batch else size

    def fixed_batch(self, size: int | None = None, offset: int = 0) -> Any:
        """The same ``size`` samples every time (a seeded draw), collated and on the device."""
        n = len(self.train_data)
        size = self.capped(min(size or self.batch_size, n))
        gen = torch.Generator().manual_seed(self.seed + 7919 * offset)
        idx = torch.randperm(n, generator=gen)[:size].tolist()
        loader = DataLoader(Subset(watched(self.train_data), idx), batch_size=size, shuffle=False, num_workers=0)
        return to_device(next(iter(loader)), self.device)

    # --- one step ----------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, batch: Any) -> tuple[Any, torch.Tensor]:
        """Forward pass and loss for a pair batch: ``(outputs, loss)``."""
        inputs, targets = split_batch(batch)
        outputs = model(inputs)
        return outputs, self.loss_fn(outputs, targets)

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> torch.Tensor:
        """One training step: the user's ``train_step`` if given, else zero_grad/forward/backward/step.

        Probes that need to see the gradients between backward and step register an
        optimizer step pre-hook; that works for the user's own step too.
        """
        if self.train_step is not None:
            loss = self.train_step(model, batch, self.loss_fn, optimizer)
            return loss.detach() if isinstance(loss, torch.Tensor) else torch.as_tensor(float(loss))
        optimizer.zero_grad(set_to_none=True)
        _, loss = self.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        return loss.detach()

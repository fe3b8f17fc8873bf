"""The patient: the user's objects behind one small interface.

Probes never touch the user's objects directly. They ask the patient for a
*fresh* model (built from the factory with a fixed seed, so every probe starts
from the same weights), a loader, a fixed batch, the loss, an optimizer for a
given model and LR, and one training step. Treatments make *variants* of the
patient (another loss, a wrapped model, a different step) without changing it.

The patient trains the way the user trains (docs/training-setups.md): the
optimizer ``make_optimizer`` returns carries the user's LR scheduler and, for
fp16, a ``torch.amp.GradScaler`` (a ``TrainingState`` kept on the optimizer), and
``step`` runs the forward pass under autocast in the configured precision,
accumulates gradients over ``accumulate`` batches, clips them and steps the
scheduler per its interval.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import random
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from nandoctor.errors import ConfigError, DataError

PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # precision -> autocast dtype
SCHEDULER_INTERVALS = ("step", "epoch")
FP16_MAX = 65504.0   # the largest finite float16: anything above becomes inf
_STATE_ATTR = "_nandoctor_training_state"  # where make_optimizer keeps an optimizer's TrainingState
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
class TrainingState:
    """What the user's loop keeps beside one optimizer: its scheduler, its GradScaler, and where it is in
    the accumulation cycle and the epoch. ``Patient.make_optimizer`` builds it; ``Patient.step`` advances it."""

    scheduler: Any = None          # the user's LR scheduler over this optimizer, or None
    scaler: Any = None             # torch.amp.GradScaler (fp16 with grad_scaler), or None
    batches: int = 0               # patient.step calls so far (one per batch)
    optimizer_steps: int = 0       # optimizer.step() calls so far (fewer than batches when accumulating)
    scheduler_steps: int = 0       # scheduler.step() calls so far
    epoch_losses: list = dataclasses.field(default_factory=list)  # this epoch's losses (ReduceLROnPlateau)
    schedule_ended: dict | None = None  # {"step", "message"} once the scheduler reached its end
    hold_past_end: bool = True  # past its end a OneCycleLR holds its last LR (False: steps on and raises, as users see)


def training_state(optimizer) -> TrainingState | None:
    """The ``TrainingState`` ``Patient.make_optimizer`` attached to ``optimizer`` (None for other optimizers)."""
    return getattr(optimizer, _STATE_ATTR, None)


def callable_name(fn) -> str:
    """``StepLR`` for a class, a function or a partial of either."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


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
    drop_last: bool = False        # the user's DataLoader skips the epoch's last, smaller batch (data.drop_last)
    num_workers: int = 0
    seed: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    name: str = "patient"
    loss_name: str = ""
    model_name: str = ""
    changes: tuple[str, ...] = ()  # what a treatment changed, for the report
    max_batch: int | None = None   # no batch larger than this (set after running out of memory)
    source: dict | None = None     # {"config": path} when built from a config: how to build it again elsewhere
    # the training set-up (SPEC section 1, 0.2); the defaults are a plain fp32 loop
    collate_fn: Callable | None = None     # passed to every DataLoader
    scheduler: Callable | None = None      # optimizer -> LR scheduler (a class or a partial of one)
    scheduler_interval: str = "step"       # step: after every optimizer step; epoch: once per pass over train_data
    precision: str = "fp32"                # fp32 (no autocast) | bf16 | fp16
    grad_scaler: bool = True               # fp16 only: scale the loss with torch.amp.GradScaler
    grad_clip: float | None = None         # clip_grad_norm_ max norm before every optimizer step
    accumulate: int = 1                    # batches whose gradients add up before each optimizer step

    def __post_init__(self):
        if self.precision not in PRECISION_DTYPES:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(PRECISION_DTYPES)}.",
                              key="precision", hint="use fp32, bf16 or fp16.")
        if self.scheduler_interval not in SCHEDULER_INTERVALS:
            raise ConfigError(f"the scheduler interval {self.scheduler_interval!r} is not step or epoch.",
                              key="scheduler.interval", hint="use 'step' or 'epoch'.")
        if isinstance(self.accumulate, bool) or not isinstance(self.accumulate, int) or self.accumulate < 1:
            raise ConfigError(f"accumulate must be a whole number, 1 or more, not {self.accumulate!r}.",
                              key="accumulate", hint="give the number of batches per optimizer step.")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ConfigError(f"grad_clip must be a positive number, not {self.grad_clip!r}.", key="grad_clip",
                              hint="give clip_grad_norm_'s max_norm (e.g. 1.0), or None for no clipping.")
        if self.scheduler is not None and not callable(self.scheduler):
            raise ConfigError(f"the scheduler {self.scheduler!r} cannot be called with the optimizer.",
                              key="scheduler", hint="pass a class such as torch.optim.lr_scheduler.StepLR or a "
                                                    "functools.partial of one.")

    # --- construction -------------------------------------------------------------
    @classmethod
    def from_objects(cls, model: nn.Module | Callable[[], nn.Module], train_data: Dataset, loss: Callable,
                     optimizer: type | Callable = torch.optim.Adam, lr: float = 1e-3, *, val_data=None,
                     train_step=None, batch_size: int = 32, shuffle: bool = True, drop_last: bool = False,
                     seed: int = 0,
                     device: str | None = "auto", collate_fn: Callable | None = None,
                     scheduler: Callable | None = None, scheduler_interval: str = "step",
                     precision: str = "fp32", grad_scaler: bool = True, grad_clip: float | None = None,
                     accumulate: int = 1, **optimizer_kwargs) -> "Patient":
        """For notebooks: objects instead of a config. A model *instance* is copied, never trained.

        ``scheduler`` is a callable taking the optimizer (``functools.partial(StepLR, step_size=10)``);
        the other set-up keywords are those of the config (SPEC section 1).
        """
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
                   batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                   device=resolve_device(device),
                   loss_name=type(loss).__name__ if isinstance(loss, nn.Module) else getattr(loss, "__name__", "loss"),
                   model_name=model_name, collate_fn=collate_fn, scheduler=scheduler,
                   scheduler_interval=scheduler_interval, precision=precision, grad_scaler=grad_scaler,
                   grad_clip=grad_clip, accumulate=accumulate)

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

    def make_optimizer(self, params, lr: float | None = None, schedule: bool = True) -> torch.optim.Optimizer:
        """The user's optimizer class and settings over ``params`` (a model, or a list), optionally another LR.

        It carries a ``TrainingState`` (``training_state(optimizer)``) with the user's scheduler over it and,
        for fp16 with ``grad_scaler``, a ``torch.amp.GradScaler``; ``step`` uses both. ``schedule=False``
        leaves the scheduler out (the LR sweep sets the LR itself), and so does ``lr=0.0``: a run at LR 0
        is a measurement that must not move the weights, and schedules such as OneCycleLR set their own LR.
        """
        if isinstance(params, nn.Module):
            params = params.parameters()
        kwargs = dict(self.optimizer_kwargs)
        if lr is not None:
            kwargs["lr"] = lr
        optimizer = self.optimizer_cls(params, **kwargs)
        state = TrainingState()
        if schedule and self.scheduler is not None and lr != 0.0:
            state.scheduler = self.scheduler(optimizer)
        if self.uses_grad_scaler:
            state.scaler = torch.amp.GradScaler(self.device.type)
        setattr(optimizer, _STATE_ATTR, state)
        return optimizer

    @property
    def uses_grad_scaler(self) -> bool:
        """fp16 with ``grad_scaler`` and the default step (a user's ``train_step`` has its own, or none)."""
        return self.precision == "fp16" and self.grad_scaler and self.train_step is None

    @property
    def epoch_batches(self) -> int:
        """Batches per pass over the training set: ``ceil(len(train_data) / batch_size)`` (``floor`` with
        ``drop_last``)."""
        n = len(self.train_data) / self.batch_size
        return max(1, math.floor(n) if self.drop_last else math.ceil(n))

    @property
    def scheduler_name(self) -> str | None:
        return callable_name(self.scheduler) if self.scheduler is not None else None

    def autocast(self):
        """``torch.autocast`` in the configured precision on the patient's device (nothing for fp32)."""
        dtype = PRECISION_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # --- data ------------------------------------------------------------------------
    def loader(self, batch_size: int | None = None, shuffle: bool | None = None, dataset: Dataset | None = None,
               drop_last: bool | None = None) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(watched(dataset if dataset is not None else self.train_data),
                          batch_size=self.capped(batch_size or self.batch_size),
                          shuffle=self.shuffle if shuffle is None else shuffle,
                          num_workers=self.num_workers, generator=gen,
                          drop_last=self.drop_last if drop_last is None else drop_last,
                          collate_fn=self.collate_fn, timeout=loader_timeout() if self.num_workers else 0)

    def capped(self, size: int) -> int:
        """``size``, or the largest batch that fits in memory when a probe ran out of it."""
        return min(size, self.max_batch) if self.max_batch else size

    def fixed_indices(self, size: int | None = None, offset: int = 0) -> list[int]:
        """The dataset indices ``fixed_batch`` holds (a seeded draw)."""
        n = len(self.train_data)
        size = self.capped(min(size or self.batch_size, n))
        gen = torch.Generator().manual_seed(self.seed + 7919 * offset)
        return torch.randperm(n, generator=gen)[:size].tolist()

    def fixed_batch(self, size: int | None = None, offset: int = 0) -> Any:
        """The same ``size`` samples every time (a seeded draw), collated and on the device."""
        return self.batch_of(self.fixed_indices(size, offset))

    def batch_of(self, indices) -> Any:
        """The training samples at ``indices``, collated into one batch as the user's loader would, on the device."""
        loader = DataLoader(Subset(watched(self.train_data), list(indices)), batch_size=len(indices), shuffle=False,
                            num_workers=0, collate_fn=self.collate_fn)
        return to_device(next(iter(loader)), self.device)

    # --- one step ----------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, batch: Any) -> tuple[Any, torch.Tensor]:
        """Forward pass and loss for a pair batch: ``(outputs, loss)``."""
        inputs, targets = split_batch(batch)
        outputs = model(inputs)
        return outputs, self.loss_fn(outputs, targets)

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> torch.Tensor:
        """One batch of training, as the user's loop does it; returns the batch's loss (not divided).

        The default step: at the start of an accumulation cycle ``zero_grad``; the forward pass and the
        loss under autocast in the configured precision; ``backward`` of ``loss / accumulate`` (scaled by
        the GradScaler when there is one); every ``accumulate``-th batch ``clip_grad_norm_`` (unscaled
        first) and ``optimizer.step()`` (``scaler.step`` + ``scaler.update``), then the scheduler per its
        interval. With the user's ``train_step`` their function does its own zeroing, clipping and
        stepping: only autocast (around their call) and the scheduler (which their function cannot
        reach) are applied.

        Probes that need to see the gradients between backward and step register an optimizer step
        pre-hook; that works for the user's own step too. Under a GradScaler the hook sees *unscaled*
        gradients (``scaler.step`` unscales before it calls ``optimizer.step``), but it is not called at
        all for the steps the scaler skips (inf/NaN gradients); with accumulation it is called once per
        ``accumulate`` batches, with the accumulated gradients.
        """
        state = training_state(optimizer)
        if self.train_step is not None:
            with self.autocast():
                loss = self.train_step(model, batch, self.loss_fn, optimizer)
            loss = loss.detach() if isinstance(loss, torch.Tensor) else torch.as_tensor(float(loss))
            if state is not None:
                state.batches += 1
                self.advance_schedule(state, loss, stepped=True)
            return loss
        if state is None:  # an optimizer built elsewhere: the user's set-up is not attached to it
            state = TrainingState()
            setattr(optimizer, _STATE_ATTR, state)
        # 1. forward and backward, accumulating
        n = self.accumulate
        if state.batches % n == 0:
            optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            _, loss = self.compute_loss(model, batch)
        scaled = loss / n if n > 1 else loss
        (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        state.batches += 1
        # 2. every n-th batch: clip, step, schedule
        stepped = state.batches % n == 0
        if stepped:
            if self.grad_clip is not None:
                if state.scaler is not None:
                    state.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            if state.scaler is not None:
                state.scaler.step(optimizer)
                state.scaler.update()
            else:
                optimizer.step()
            state.optimizer_steps += 1
        self.advance_schedule(state, loss.detach(), stepped=stepped)
        return loss.detach()

    def advance_schedule(self, state: TrainingState, loss, stepped: bool) -> None:
        """Step the scheduler as the user's loop does: after every optimizer step, or at the end of each epoch
        (``batches`` counts the epoch). ``step`` calls it after each batch; the schedule probe calls it without training."""
        if state.scheduler is None:
            return
        value = float(loss)
        state.epoch_losses.append(value)
        if self.scheduler_interval == "step":
            due = stepped
        else:
            due = state.batches % self.epoch_batches == 0
        if not due:
            return
        with warnings.catch_warnings():
            # a GradScaler skips the first steps (inf gradients): torch warns that the scheduler stepped before
            # the optimizer did. The user's loop gets the same warning; here it is noise.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
            if isinstance(state.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                finite = [v for v in state.epoch_losses if math.isfinite(v)]
                state.scheduler.step(sum(finite) / len(finite) if finite else float("inf"))
            elif state.schedule_ended is None:
                # OneCycleLR has total_steps LRs; stepped further it turns back up, then raises. The user's run ends
                # with its schedule, a probe may train longer: the LR holds at the schedule's last value, and the
                # schedule probe reports where it ended.
                total = getattr(state.scheduler, "total_steps", None)
                if state.hold_past_end and isinstance(state.scheduler, torch.optim.lr_scheduler.OneCycleLR) and \
                        state.scheduler.last_epoch + 1 >= total:
                    state.schedule_ended = {"step": state.scheduler_steps,
                                            "message": f"OneCycleLR has total_steps={total}: stepped once more it "
                                                       f"raises 'Tried to step {total + 2} times'"}
                else:
                    state.scheduler.step()
        state.scheduler_steps += 1
        state.epoch_losses.clear()

"""The one training loop every probe and treatment uses.

``train`` runs the patient's own step (its ``train_step`` or the default one) for
a number of steps on a fixed batch or a stream of batches, and returns a ``Run``:
the loss per step, where it stopped and why, and the user's exception if their
code raised. It stops at the first non-finite loss or at the deadline.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from nandoctor.loading import display_path, user_frame


class StepMeter:
    """Durations of the training steps run since ``start()``: the step time re-measured as probes run."""

    _active: "StepMeter | None" = None

    def __init__(self):
        self.durations: list[float] = []

    @classmethod
    def start(cls) -> "StepMeter":
        cls._active = cls()
        return cls._active

    def stop(self) -> float | None:
        """The median step duration (None when fewer than 3 steps ran)."""
        if StepMeter._active is self:
            StepMeter._active = None
        d = sorted(self.durations)
        return d[len(d) // 2] if len(d) >= 3 else None

    @classmethod
    def add(cls, seconds: float) -> None:
        if cls._active is not None:
            cls._active.durations.append(seconds)


@dataclass
class Run:
    losses: list[float] = field(default_factory=list)
    stopped: str = "done"           # done | nonfinite | deadline | error
    error: dict | None = None       # {"type", "message", "where", "step"}
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def finite(self) -> list[float]:
        return [x for x in self.losses if math.isfinite(x)]

    @property
    def initial(self) -> float | None:
        return self.losses[0] if self.losses else None

    def tail(self, share: float = 0.1) -> float | None:
        """Mean of the last ``share`` of the finite losses (at least one point)."""
        f = self.finite
        if not f:
            return None
        k = max(1, int(len(f) * share))
        return sum(f[-k:]) / k

    @property
    def nonfinite_step(self) -> int | None:
        for i, x in enumerate(self.losses):
            if not math.isfinite(x):
                return i
        return None

    def to_metrics(self) -> dict:
        f = self.finite
        return {"steps": self.steps, "initial_loss": self.initial, "final_loss": self.losses[-1] if self.losses else None,
                "min_loss": min(f) if f else None, "tail_loss": self.tail(), "stopped": self.stopped,
                "nonfinite_step": self.nonfinite_step}


def error_record(exc: BaseException, step: int | None = None) -> dict:
    """The user's exception as evidence: type, message, the user's line, and the step."""
    frames = traceback.extract_tb(exc.__traceback__)
    return {"type": type(exc).__name__, "message": str(exc).strip().splitlines()[0][:500] if str(exc).strip() else "",
            "where": user_frame(exc), "step": step,
            "last_frame": f"{display_path(frames[-1].filename)}:{frames[-1].lineno}" if frames else None}


def train(patient, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Any, steps: int, *,
          deadline: float | None = None, progress: Callable[[float], None] | None = None,
          stop_on_nonfinite: bool = True, on_step: Callable[[int, float], None] | None = None) -> Run:
    """Train for ``steps`` steps. ``batches`` is one fixed batch or an iterable re-cycled as needed."""
    run = Run()
    start = time.perf_counter()
    fixed = not isinstance(batches, Iterable) or isinstance(batches, (tuple, list, dict, torch.Tensor))
    stream = None if fixed else _cycle(batches, patient)
    for i in range(steps):
        batch = batches if fixed else next(stream)
        t_step = time.perf_counter()
        try:
            loss = patient.step(model, optimizer, batch)
            value = float(loss)
        except Exception as exc:  # the user's code raised: that is evidence, not a crash of ours
            run.error = error_record(exc, step=i)
            run.stopped = "error"
            break
        StepMeter.add(time.perf_counter() - t_step)
        run.losses.append(value)
        if on_step:
            on_step(i, value)
        if progress:
            progress(1)
        if stop_on_nonfinite and not math.isfinite(value):
            run.stopped = "nonfinite"
            break
        if deadline is not None and time.perf_counter() > deadline and i >= 2:
            run.stopped = "deadline"
            break
    run.seconds = time.perf_counter() - start
    return run


def _cycle(loader, patient):
    from nandoctor.patient import to_device
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield to_device(batch, patient.device)
        if empty:
            return

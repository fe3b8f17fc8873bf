"""Probes: the only code that trains. Each returns a ``ProbeResult`` (numbers, curves), never a verdict.

A probe is a subclass of ``Probe`` that sets ``name``; defining it registers it
(every module in this package is imported by ``load_all()``). The pipeline runs
them in ``order`` and gives each a share of the time budget by ``weight``.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from nandoctor.records import Evidence, ProbeResult

REGISTRY: dict[str, "Probe"] = {}


@dataclass
class ProbeContext:
    """What a probe gets: the patient, its time allowance, and what earlier probes found."""

    patient: Any
    seconds: float                      # this probe's share of the budget
    step_time: float                    # measured seconds per training step at the user's batch size
    evidence: Evidence
    plots_dir: Path | None = None       # where to save plots (None: do not plot)
    progress: Callable[[float, float | None], None] = lambda done, total=None: None
    options: dict = field(default_factory=dict)  # command-line options meant for probes (min_lr, ...)
    started: float = field(default_factory=time.perf_counter)

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    def steps(self, share: float = 1.0, lo: int = 5, hi: int = 200, per_step: float | None = None) -> int:
        """How many training steps fit in ``share`` of this probe's time, clamped to ``[lo, hi]``."""
        per = per_step if per_step is not None else self.step_time
        fit = int(self.seconds * share / max(per, 1e-6))
        return max(lo, min(hi, fit))

    def plot_path(self, name: str) -> tuple[Path | None, str]:
        """(absolute path to save to, the report-relative id ``plots/NAME.png``)."""
        rel = f"plots/{name}.png"
        return (self.plots_dir / f"{name}.png" if self.plots_dir else None), rel


class Probe:
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    order: ClassVar[int] = 50        # run order, low first (cheap, static probes early)
    weight: ClassVar[float] = 1.0    # share of the budget, relative to the other selected probes
    default: ClassVar[bool] = True   # part of the default battery
    needs_pairs: ClassVar[bool] = False  # needs (inputs, targets) batches (cannot run on a custom step alone)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            REGISTRY[cls.name] = cls()

    def run(self, ctx: ProbeContext) -> ProbeResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def result(self, **kwargs) -> ProbeResult:
        return ProbeResult(name=self.name, **kwargs)


def load_all() -> dict[str, Probe]:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(sorted(REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))

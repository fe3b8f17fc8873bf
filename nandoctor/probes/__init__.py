"""Probes: the only code that trains. Each returns a ``ProbeResult`` (numbers, curves), never a verdict.

A probe is a subclass of ``Probe`` that sets ``name``; defining it registers it
(every module in this package is imported by ``load_all()``). The pipeline runs
them in ``order``. A training probe declares ``steps``, a ``StepNeed`` (the fewest
steps its verdict needs, the ideal, the cost of one step); the planner
(``nandoctor.planning``) grants it ``ctx.planned_steps`` and a deadline, or, when its
minimum does not fit the budget, never runs it and reports it ``inconclusive``. A
probe whose training was stopped by its deadline below the minimum raises
``Inconclusive`` through ``ctx.require``: no verdict ever comes from a cut probe.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from nandoctor.planning import StepNeed
from nandoctor.records import Evidence, Metrics, ProbeResult

REGISTRY: dict[str, "Probe"] = {}


class Inconclusive(Exception):
    """Raised by a probe whose evidence is too short to judge; the pipeline marks it ``inconclusive``."""


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
    planned_steps: int | None = None    # the planner's steps for this probe (None: not a step-planned probe)
    selected: tuple[str, ...] = ()      # the probes of this run (a probe may reuse another's evidence)
    min_steps: int = 0                  # the fewest steps its verdict needs
    refute_steps: int | None = None     # a cure: the planned steps a failure must reach to refute (None: any)
    hard_stop: float | None = None      # where the watchdog stops code that does not come back (a clock reading)

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    def steps(self, share: float = 1.0, lo: int = 5, hi: int = 200, per_step: float | None = None) -> int:
        """The planned steps, clamped to ``[lo, hi]``; without a plan, what fits ``share`` of the time."""
        if self.planned_steps is not None:
            return max(lo, min(hi, self.planned_steps))
        per = per_step if per_step is not None else self.step_time
        fit = int(self.seconds * share / max(per, 1e-6))
        return max(lo, min(hi, fit))

    def require(self, run, need: int | None = None) -> None:
        """``Inconclusive`` when ``run`` was stopped by the deadline before ``need`` (default: the minimum) steps."""
        need = self.min_steps if need is None else need
        if getattr(run, "stopped", None) == "deadline" and run.steps < need:
            raise Inconclusive(f"stopped by its deadline after {run.steps} of the {need} steps its verdict needs "
                               f"(the machine ran slower than measured); run with a larger --budget")

    def plot_path(self, name: str) -> tuple[Path | None, str]:
        """(absolute path to save to, the report-relative id ``plots/NAME.png``)."""
        rel = f"plots/{name}.png"
        return (self.plots_dir / f"{name}.png" if self.plots_dir else None), rel


class Probe:
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    order: ClassVar[int] = 50        # run order, low first (cheap, static probes early)
    share: ClassVar[float] = 0.0     # not step-planned: the share of the budget it may take
    default: ClassVar[bool] = True   # part of the default battery
    needs_pairs: ClassVar[bool] = False  # needs (inputs, targets) batches (cannot run on a custom step alone)
    steps: ClassVar[StepNeed | None] = None  # training steps its verdict needs; None: not step-planned
    metrics_type: ClassVar[type[Metrics] | None] = None  # the dataclass of what it measures (typed evidence)
    priority: ClassVar[int] = 50     # when the budget is short, the lowest priority (highest number) goes first

    def need(self, ctx: ProbeContext) -> StepNeed | None:
        """The steps this probe will need given what ran before it (None: nothing to plan, e.g. reused evidence)."""
        return self.steps

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            REGISTRY[cls.name] = cls()

    def run(self, ctx: ProbeContext) -> ProbeResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def result(self, **kwargs) -> ProbeResult:
        """A ``ProbeResult``; a metrics mapping becomes the probe's ``metrics_type`` (an unknown key is a TypeError)."""
        metrics = kwargs.pop("metrics", None)
        if self.metrics_type is not None and not isinstance(metrics, Metrics):
            metrics = self.metrics_type(**(metrics or {}))
        return ProbeResult(name=self.name, metrics=metrics if metrics is not None else {}, **kwargs)


def load_all() -> dict[str, Probe]:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(sorted(REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))

"""The budget planner: probes are planned in *steps*; the clock only decides which fit.

Each training probe declares a ``StepNeed``: the fewest steps its verdict needs (``min``),
the steps it takes when time allows (``ideal``) and what one of its steps costs in
training-step equivalents (``cost``: K models trained side by side cost K). After the
warm-up has measured the step time, ``plan`` picks a *tier* for each probe: a probe at
tier k runs ``min * TIER_FACTORS[k]`` steps, capped at its ideal. Every probe gets its
minimum first; what is left raises the tiers, most important probe first. Tiers are
coarse (each doubles the steps), so a machine 30% slower than another plans the same
steps unless it sits right at a boundary, and every verdict is defined at the minimum,
so even then the same diagnosis comes out. A probe whose minimum does not fit is not run
short: it is dropped, lowest priority first, and reported ``inconclusive`` with the
steps it needed and the budget that would fit them.

The functions here are pure (no clock, no torch): the pipeline feeds them the measured
step time and the seconds left, and ``tests/test_planning.py`` feeds them numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

TIER_FACTORS = (1, 2, 4, 8, 16, 32)  # steps at tier k: min x factor, capped at the ideal
SAFETY = 1.15        # the plan assumes a step costs this much more than measured (hooks, streamed batches)
SLACK = 1.7          # a probe's own deadline: its planned seconds x this, so a machine that slows down still finishes
GRACE = 3.0          # ... plus this many seconds (fixed costs: fresh models, plots)
FIXED_SECONDS = 0.4  # planned per probe for what is not steps (fresh models, a plot)


def step_seconds(steps: float, step_time: float) -> float:
    """What ``steps`` training-step equivalents take at ``step_time``, as the plan counts them."""
    return steps * step_time * SAFETY + FIXED_SECONDS


@dataclass(frozen=True)
class StepNeed:
    """What a probe's verdict needs, in training steps."""

    min: int                 # fewest steps its verdict needs; below this it is inconclusive
    ideal: int               # what it takes when time allows
    cost: float = 1.0        # training-step equivalents per planned step (K models side by side: K)
    fixed: float = 0.0       # training-step equivalents of fixed work (evaluation passes, profiles)

    def steps_at(self, tier: int) -> int:
        return min(self.ideal, self.min * TIER_FACTORS[min(tier, len(TIER_FACTORS) - 1)])

    def top_tier(self) -> int:
        """The lowest tier at which this probe already takes its ideal steps."""
        for k in range(len(TIER_FACTORS)):
            if self.steps_at(k) >= self.ideal:
                return k
        return len(TIER_FACTORS) - 1

    def seconds(self, steps: int, step_time: float) -> float:
        return step_seconds(self.fixed + steps * self.cost, step_time)


@dataclass
class Plan:
    """The planner's answer: a tier per probe, the steps of every kept probe, what was dropped and why."""

    tier: int                     # the lowest tier of the kept probes (the battery's floor)
    step_time: float
    tiers: dict[str, int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)   # probe -> the inconclusive reason
    needed_seconds: float = 0.0   # what the whole run needs with every probe at its minimum, at this step time

    def to_json(self) -> dict:
        return {"tier": self.tier, "tiers": dict(self.tiers), "step_seconds": self.step_time,
                "steps": dict(self.steps), "planned_seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "dropped": dict(self.dropped), "needed_seconds": round(self.needed_seconds, 1)}


def suggest_budget(seconds: float) -> int:
    """A round ``--budget`` that covers ``seconds``: the next multiple of 30 s (60 s past 300)."""
    unit = 60 if seconds > 300 else 30
    return int(math.ceil(max(seconds, 1.0) / unit) * unit)


def plan(needs: dict[str, StepNeed], priority: list[str], step_time: float, available: float,
         *, max_tiers: dict[str, int] | None = None, extra_seconds: float = 0.0,
         full_seconds: float | None = None) -> Plan:
    """Tiers that fit ``available`` seconds, filled in order of importance.

    Every probe starts at its minimum (tier 0). When even that does not fit, the least
    important are dropped until the rest do. The most important probe is then raised one tier
    ahead of the rest, where that fits. What is left over raises the tiers in rounds: in
    each round every probe, most important first (``priority``), goes one tier up if that fits, so
    the battery rises together and, when a round does not fit whole, the overfit probe gets its
    longer run before the init comparison does. ``max_tiers`` caps each probe
    (a re-plan never raises one). ``extra_seconds`` is what the rest of the run needs whatever the
    plan (report, untrained probes): it enters only the budget suggested when probes are
    dropped; ``full_seconds``, when given, is that suggestion instead (a re-plan keeps the first).
    """
    step_time = max(step_time, 1e-6)
    order = [n for n in priority if n in needs] + [n for n in needs if n not in priority]

    def cost(name, tier):
        return needs[name].seconds(needs[name].steps_at(tier), step_time)

    result = Plan(tier=0, step_time=step_time, needed_seconds=full_seconds if full_seconds is not None
                  else sum(cost(n, 0) for n in order) + extra_seconds)
    kept = list(order)
    # 1. the minimum of all, dropping the least important until it fits
    while kept and sum(cost(n, 0) for n in kept) > available:
        name = kept.pop()
        need = needs[name]
        result.dropped[name] = (f"needs at least {need.min} steps (about {cost(name, 0):.0f} s at {step_time:.3g} s "
                                f"a step) and {max(0.0, available):.0f} s were left for the training probes; the "
                                f"whole battery needs about {suggest_budget(result.needed_seconds)} s here: run "
                                f"with --budget {suggest_budget(result.needed_seconds)}")
    # 2. what is left raises the tiers in rounds, one tier a round, most important first in each round
    tiers = {n: 0 for n in kept}
    caps = {n: min(needs[n].top_tier(), (max_tiers or {}).get(n, needs[n].top_tier())) for n in kept}
    spent = sum(cost(n, 0) for n in kept)
    # 2a. the most important probe starts a tier ahead (the overfit run: whether one batch is memorised is what
    #     the most verdicts read, and a realistic model needs more than its minimum steps to get there)
    if kept and tiers[kept[0]] < caps[kept[0]]:
        extra = cost(kept[0], 1) - cost(kept[0], 0)
        if spent + extra <= available:
            tiers[kept[0]] += 1
            spent += extra
    raised = True
    while raised:
        raised = False
        for name in kept:
            if tiers[name] >= caps[name]:
                continue
            extra = cost(name, tiers[name] + 1) - cost(name, tiers[name])
            if spent + extra <= available:
                tiers[name] += 1
                spent += extra
                raised = True
    for name in kept:
        result.tiers[name] = tiers[name]
        result.steps[name] = needs[name].steps_at(tiers[name])
        result.seconds[name] = cost(name, tiers[name])
    result.tier = min(tiers.values(), default=0)
    return result


def replan(current: Plan, needs: dict[str, StepNeed], priority: list[str], step_time: float,
           available: float) -> Plan:
    """The plan for the probes still to run, at a step time re-measured as probes ran.

    Never above the tiers already chosen (a faster stretch does not add steps, so quiet and
    busy machines agree); lower only when what is left no longer fits, and drop probes only
    when their minimum does not.
    """
    remaining = {n: needs[n] for n in needs if n in current.steps}
    slower = max(step_time, current.step_time)
    # the budget suggested for the whole battery scales with the step time it is now measured at (a machine that
    # slowed down needs more than the first plan said)
    fresh = plan(remaining, priority, slower, available, max_tiers=dict(current.tiers),
                 full_seconds=current.needed_seconds * slower / max(current.step_time, 1e-6))
    fresh.dropped = {**current.dropped, **fresh.dropped}
    return fresh


def deadline_seconds(planned_seconds: float) -> float:
    """A probe's own time limit: its planned seconds with slack for a machine that slows down."""
    return planned_seconds * SLACK + GRACE

"""The LR sweep (LR range test): where training works, where it diverges, which LR to use.

A fresh model is trained with the user's own step and optimizer on the user's
batches while the learning rate grows exponentially from ``min_lr`` to ``max_lr``
(set through ``optimizer.param_groups``, so any ``torch.optim`` optimizer works).
The sweep stops as soon as the loss diverges (non-finite, or the smoothed loss
far above its best). Its points are planned in steps (30 at least, 100 when time
allows); a sweep that its deadline stops before the end of the range has not
covered it and is inconclusive, never read. The curve is read by the pure functions of
``nandoctor.curves``. Batches holding NaN/Inf are skipped (the data scan's business).

Then, when the user's LR is 10x or more away from the suggestion, the *check*:
three short constant-LR runs from the same fresh init on the same batches, at LR 0
(the untrained loss per batch), at the user's LR and at the suggestion. It is the
evidence lr-too-high / lr-too-low need, and it verifies the suggestion: one that
does not train from scratch is replaced by the most cautious rule's LR if that does.

The user's objects are never touched: the model comes from the factory, and the
global RNG state is restored afterwards. The same seed gives the same sweep.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils.data import TensorDataset

from nandoctor import curves
from nandoctor.patient import preserved_rng, to_device
from nandoctor.planning import StepNeed
from nandoctor.probes import Inconclusive, Probe, ProbeContext
from nandoctor.probes.training import Run, _cycle, error_record, train
from nandoctor.records import Metrics, ProbeResult

DEFAULT_MIN_LR = 1e-7     # the sweep's lowest LR (the CLI's --min-lr default)
DEFAULT_MAX_LR = 10.0     # the sweep's highest LR (--max-lr)
MIN_STEPS = 30            # fewer points than this cannot be read reliably (8 decades in 30 points)
MAX_STEPS = 100           # points in the battery; pytorch-lr-finder's default number of iterations
STEP_COST = 1.2           # a streamed batch costs a little more than the fixed batch the warm-up timed
MAX_BAD_IN_A_ROW = 16     # give up when this many batches in a row hold non-finite values
CHECK_STEPS = 20          # steps of each short constant-LR run (user's LR vs the suggestion) from the same init
CHECK_MIN_STEPS = 8       # below this the check is not run (no time)
CHECK_COST = 0.6          # the three check runs (LR 0, user, suggestion), per sweep point, in steps
SUGGESTION_TRAINS_DROP = 0.25  # the suggestion "trains" when its check run's loss falls by 25% or more
CHECK_RATIO = 10.0        # the check runs only when the user's LR is 10x above or below the suggestion
TAIL_SHARE = 0.25         # a check run's end loss is the mean of its last quarter of steps


@dataclass
class Sweep:
    """A raw sweep: the LR and loss of every step, and why it stopped."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    stopped: str = "done"          # done | diverged | error | bad-data
    error: dict | None = None      # the user's exception, when their code raised
    skipped_batches: int = 0       # batches with NaN/Inf inputs or targets, not trained on
    planned: int = 0
    seconds: float = 0.0


def batch_finite(obj: Any) -> bool:
    """True when every floating tensor inside a batch (tuples, lists, dicts) is finite."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, (list, tuple)):
        return all(batch_finite(o) for o in obj)
    if isinstance(obj, dict):
        return all(batch_finite(o) for o in obj.values())
    return True


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every param group to ``lr`` (tensor LRs, as in capturable optimizers, are filled in place)."""
    for group in optimizer.param_groups:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def _batches(patient):
    """The user's batches, on the device, re-cycled as needed (the loader is seeded: same order every sweep)."""
    if type(patient.train_data) is TensorDataset and patient.num_workers == 0 and patient.collate_fn is None:
        yield from _tensor_batches(patient)
        return
    while True:
        empty = True
        for batch in patient.loader():
            empty = False
            yield to_device(batch, patient.device)
        if empty:
            return


class Schedule:
    """Exponential LRs from ``min_lr`` to ``max_lr`` in ``steps`` points: the same points on any machine."""

    def __init__(self, min_lr: float, max_lr: float, steps: int):
        self.lo, self.span, self.steps = math.log(min_lr), math.log(max_lr / min_lr), max(2, steps)

    def __iter__(self):
        for i in range(self.steps):
            yield math.exp(self.lo + i / (self.steps - 1) * self.span)


def _tensor_batches(patient):
    """A plain TensorDataset sliced a batch at a time: the same samples a DataLoader would collate, without the
    per-sample indexing and stacking that dominates the step time of small models."""
    tensors, n, bs = patient.train_data.tensors, len(patient.train_data), patient.batch_size
    gen = torch.Generator().manual_seed(patient.seed)
    while n:
        order = torch.randperm(n, generator=gen) if patient.shuffle else torch.arange(n)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            yield to_device(tuple(t[idx] for t in tensors), patient.device)


def sweep(patient, min_lr: float = DEFAULT_MIN_LR, max_lr: float = DEFAULT_MAX_LR, steps: int = MAX_STEPS, *,
          deadline: float | None = None, progress: Callable[[int], None] | None = None) -> Sweep:
    """Run the LR range test on a fresh model and return the raw curve. Leaves the RNG state as it found it."""
    out = Sweep(planned=steps)
    start = time.perf_counter()
    with preserved_rng():
        # 1. a fresh model, the user's optimizer, a seeded stream of the user's batches
        torch.manual_seed(patient.seed)
        model = patient.new_model()
        optimizer = patient.make_optimizer(model, lr=min_lr, schedule=False)  # the sweep sets the LR itself
        stream, watch = _batches(patient), curves.DivergenceWatch()
        # 2. one step per LR; stop at divergence, at max_lr, or when the user's code raises
        for lr in Schedule(min_lr, max_lr, steps):
            if deadline is not None and time.perf_counter() > deadline:
                out.stopped = "deadline"
                break
            batch = _next_finite(stream, out)
            if batch is None:
                out.stopped = "bad-data"
                break
            set_lr(optimizer, lr)
            try:
                value = float(patient.step(model, optimizer, batch))
            except Exception as exc:  # the user's code raised: evidence, and a divergence point after step 0
                out.error, out.stopped = error_record(exc, step=len(out.losses)), "error"
                if out.losses:
                    out.lrs.append(lr)
                    out.losses.append(float("nan"))
                break
            out.lrs.append(lr)
            out.losses.append(value)
            if progress:
                progress(1)
            if watch.add(value) is not None:
                out.stopped = "diverged"
                break
    out.seconds = time.perf_counter() - start
    return out


def _next_finite(stream, out: Sweep, tries: int = MAX_BAD_IN_A_ROW):
    """The next batch without NaN/Inf in it (those are the data scan's business, not the LR's); None if none."""
    for _ in range(tries):
        batch = next(stream, None)
        if batch is None:
            return None
        if batch_finite(batch):
            return batch
        out.skipped_batches += 1
    return None


def loss_at(lrs: list[float], smoothed: list[float], lr: float | None) -> float | None:
    """The smoothed loss at the last sweep point whose LR is at or below ``lr`` (None below the sweep)."""
    if lr is None:
        return None
    below = [s for x, s in zip(lrs, smoothed) if x <= lr * (1 + 1e-9) and curves.finite(s)]
    return below[-1] if below else None


def position(user_lr: float | None, reading: curves.SweepReading, lrs: list[float]) -> str | None:
    """Where the user's LR sits on the curve, in words."""
    if user_lr is None or not lrs:
        return None
    if reading.divergence_lr is not None and user_lr >= reading.divergence_lr:
        return "past-divergence"
    if user_lr < lrs[0]:
        return "below-sweep"
    if user_lr > lrs[-1]:
        return "above-sweep"
    if reading.useful_low is not None and user_lr < reading.useful_low:
        return "before-useful"
    return "useful"


def sweep_metrics(patient, run: Sweep, reading: curves.SweepReading, min_lr: float, max_lr: float) -> dict:
    user_lr = patient.lr
    at_user = loss_at(run.lrs, reading.smoothed, user_lr)
    init = reading.initial_loss
    drop = (init - at_user) / abs(init) if at_user is not None and init else None
    return {**reading.metrics(), "user_lr": user_lr, "user_lr_position": position(user_lr, reading, run.lrs),
            "loss_at_user_lr": at_user, "drop_at_user_lr": drop, "min_lr": min_lr, "max_lr": max_lr,
            "steps": len(run.losses), "steps_planned": run.planned, "stopped": run.stopped,
            "last_lr": run.lrs[-1] if run.lrs else None, "skipped_nonfinite_batches": run.skipped_batches,
            "optimizer": patient.optimizer_cls.__name__}


def run_summary(run: Run, baseline: Run | None) -> dict:
    """A check run in numbers: its end loss against the untrained model's loss on the same batches.

    ``relative_drop`` = 1 - end / end-at-init, both means over the last quarter of the steps; the
    baseline is the same run at LR 0 (same init, batches and dropout masks: the loss at init per batch).
    """
    k = max(1, int(run.steps * TAIL_SHARE))
    tail = run.tail(TAIL_SHARE)
    base = baseline.losses[run.steps - k:run.steps] if baseline is not None and baseline.steps >= run.steps else []
    base_tail = sum(base) / len(base) if base and all(curves.finite(b) for b in base) else None
    drop = None
    if run.nonfinite_step is None and not run.error and tail is not None and base_tail:
        drop = (base_tail - tail) / abs(base_tail)
    return {"steps": run.steps, "start_loss": run.initial, "end_loss": tail, "end_loss_at_init": base_tail,
            "relative_drop": drop, "nonfinite_step": run.nonfinite_step,
            "error": run.error and run.error.get("message"), "losses": run.losses}


def untrained_run(patient, steps: int, deadline: float | None) -> Run:
    """The run at LR 0: the untrained model's loss on each of the check's batches.

    With the default step that is a forward pass per batch (train mode, so dropout draws the
    same masks and BatchNorm uses batch statistics, as in the check runs): the same losses as
    training at LR 0, at about a third of the cost. A user ``train_step`` is run at LR 0.
    """
    if patient.train_step is not None:
        return _constant_lr_run(patient, 0.0, steps, deadline)
    run, start = Run(), time.perf_counter()
    with preserved_rng():
        torch.manual_seed(patient.seed)
        model = patient.new_model()
        model.train()
        stream = _cycle(patient.loader(), patient)
        with torch.no_grad():
            for i in range(steps):
                batch = next(stream, None)
                if batch is None:
                    break
                try:
                    with patient.autocast():
                        value = float(patient.compute_loss(model, batch)[1])
                except Exception as exc:  # the user's code raised: the check runs will say so too
                    run.error, run.stopped = error_record(exc, step=i), "error"
                    break
                run.losses.append(value)
                if deadline is not None and time.perf_counter() > deadline and i >= 2:
                    run.stopped = "deadline"
                    break
    run.seconds = time.perf_counter() - start
    return run


def _constant_lr_run(patient, lr: float, steps: int, deadline: float | None) -> Run:
    with preserved_rng():
        torch.manual_seed(patient.seed)
        model = patient.new_model()
        optimizer = patient.make_optimizer(model, lr=lr, schedule=False)  # constant LR: no scheduler
        return train(patient, model, optimizer, patient.loader(), steps, deadline=deadline)


def check_lrs(patient, lrs: dict[str, float], steps: int, deadline: float | None = None,
              baseline: Run | None = None) -> dict:
    """Short constant-LR runs from the same fresh init on the same batches, one per named LR, each
    measured against a run at LR 0 (the untrained model's loss on those batches; pass one to reuse it)."""
    baseline = baseline if baseline is not None else untrained_run(patient, steps, deadline)
    runs = {label: _constant_lr_run(patient, lr, steps, deadline) for label, lr in lrs.items()}
    if any(r.stopped == "deadline" for r in [baseline, *runs.values()]):
        return {}  # cut short by the clock: no verdict is better than a wrong one
    out = {label: {"lr": lrs[label], **run_summary(run, baseline)} for label, run in runs.items()}
    out["_baseline"] = baseline
    return out


def trains(run: dict | None) -> bool:
    """A check run trains: finite, and its loss fell by ``SUGGESTION_TRAINS_DROP`` against the untrained model."""
    drop = run.get("relative_drop") if run else None
    return drop is not None and drop >= SUGGESTION_TRAINS_DROP


def verify_suggestion(patient, reading: curves.SweepReading, check: dict, steps: int, deadline: float | None) -> dict:
    """When the run at the suggestion does not train from scratch, try the most cautious rule's LR instead
    and adopt it if it does: the sweep's model was trained along the way and tolerates more than a fresh one."""
    answered = [(v, name) for name, v in reading.suggestions.items() if v]
    if not check or trains(check.get("suggested")) or not answered or min(answered)[0] >= reading.suggested_lr:
        return check
    cautious, rule = min(answered)
    retry = check_lrs(patient, {"suggested": cautious}, steps, deadline, baseline=check["_baseline"])
    if trains(retry.get("suggested")):
        reading.suggested_lr, reading.suggested_by = cautious, f"{rule}: the valley's LR did not train from scratch"
        return {**check, "suggested": retry["suggested"]}
    return check


def worth_checking(user_lr: float | None, suggested_lr: float | None) -> bool:
    """The check is only worth its steps when the user's LR is far from the suggestion, either way."""
    if not user_lr or not suggested_lr:
        return False
    ratio = user_lr / suggested_lr
    return ratio >= CHECK_RATIO or ratio <= 1 / CHECK_RATIO


def plan_steps(ctx: ProbeContext, requested: int | None) -> tuple[int, int]:
    """(sweep points, steps per check run): the planned points, and check runs a fifth as long (8 to 20 steps)."""
    if requested:
        points = requested
    elif ctx.planned_steps is not None:
        points = ctx.planned_steps
    else:  # no plan (a direct call): what fits the allowance
        points = ctx.steps(lo=MIN_STEPS, hi=MAX_STEPS, per_step=ctx.step_time * (STEP_COST + CHECK_COST))
    return points, min(CHECK_STEPS, max(CHECK_MIN_STEPS, points // 5))


def summary_line(m: dict) -> str:
    """The sweep's answer in one line, for the terminal and the report's probe table."""
    div = f"diverges at {m['divergence_lr']:.3g}" if m.get("divergence_lr") else \
        f"no divergence up to {m['last_lr']:.3g}" if m.get("last_lr") else "no divergence"
    user = f"; your LR {m['user_lr']:.3g}" if m.get("user_lr") else ""
    if m.get("suggested_lr") is None:
        return f"no suggestion: {m.get('reason')}; {div}{user}"
    rules = [v for v in (m.get("suggestions") or {}).values() if v]
    spread = f", rules {min(rules):.2g}..{max(rules):.2g}" if len(rules) > 1 else ""
    return f"suggested LR {m['suggested_lr']:.3g} ({m.get('suggested_by') or 'valley'}{spread}); {div}{user}"


@dataclass
class LRSweepMetrics(Metrics):
    suggested_lr: float | None = None        # SPEC: always present, null when there is none
    suggested_by: str | None = None
    suggestions: dict | None = None          # each curve rule's LR
    divergence_lr: float | None = None       # SPEC: always present, null when there is none
    divergence_kind: str | None = None
    reason: str | None = None                # why there is no suggestion
    best_loss: float | None = None
    best_lr: float | None = None
    initial_loss: float | None = None
    useful_range: list | None = None
    spread_decades: float | None = None
    user_lr: float | None = None
    user_lr_position: str | None = None
    loss_at_user_lr: float | None = None
    drop_at_user_lr: float | None = None
    min_lr: float | None = None
    max_lr: float | None = None
    steps: int | None = None
    steps_planned: int | None = None
    stopped: str | None = None
    last_lr: float | None = None
    skipped_nonfinite_batches: int | None = None
    optimizer: str | None = None
    error_at_lr: dict | None = None
    check: dict | None = None                # the constant-LR runs: untrained, the user's LR, the suggestion


class LRSweep(Probe):
    metrics_type = LRSweepMetrics
    name = "lr_sweep"
    title = "Sweep the learning rate"
    order = 40
    priority = 20
    steps = StepNeed(min=MIN_STEPS, ideal=MAX_STEPS, cost=STEP_COST + CHECK_COST, fixed=6.0)

    def need(self, ctx: ProbeContext) -> StepNeed | None:
        """The battery's sweep, or exactly the points ``--steps`` asked for."""
        asked = int((ctx.options or {}).get("steps") or 0)
        return StepNeed(min=asked, ideal=asked, cost=self.steps.cost, fixed=self.steps.fixed) if asked else self.steps

    def run(self, ctx: ProbeContext) -> ProbeResult:
        patient, opts = ctx.patient, ctx.options or {}
        # 1. the range and the number of points: the --steps option, else what fits the allowance
        min_lr = float(opts.get("min_lr") or DEFAULT_MIN_LR)
        max_lr = float(opts.get("max_lr") or DEFAULT_MAX_LR)
        steps, check_steps = plan_steps(ctx, int(opts["steps"]) if opts.get("steps") else None)
        ctx.progress(0, steps + 3 * check_steps)
        # 2. sweep and read the curve
        run = sweep(patient, min_lr, max_lr, steps, deadline=ctx.deadline, progress=lambda n: ctx.progress(n, None))
        if run.stopped == "deadline":
            raise Inconclusive(f"stopped by its deadline at LR {run.lrs[-1] if run.lrs else min_lr:.3g}, "
                               f"after {len(run.losses)} of {steps} points: the range was not covered; "
                               f"run with a larger --budget")
        if run.error and not run.losses:
            return self.result(status="failed", error={**run.error, "phase": "LR sweep"})
        reading = curves.read_sweep(run.lrs, run.losses)
        metrics = sweep_metrics(patient, run, reading, min_lr, max_lr)
        if run.error:
            metrics["error_at_lr"] = {"lr": run.lrs[-1], "type": run.error.get("type"),
                                      "message": run.error.get("message")}
        # 3. the user's LR against the suggestion: two short runs from the same init
        check = {}
        if check_steps and worth_checking(patient.lr, reading.suggested_lr):
            check = check_lrs(patient, {"user": patient.lr, "suggested": reading.suggested_lr}, check_steps,
                              deadline=ctx.deadline)
            check = verify_suggestion(patient, reading, check, check_steps, ctx.deadline)
            check.pop("_baseline", None)
            metrics.update(suggested_lr=reading.suggested_lr, suggested_by=reading.suggested_by)
            metrics["check"] = {k: {m: v for m, v in c.items() if m != "losses"} for k, c in check.items()}
        metrics["summary"] = summary_line(metrics)
        # 4. the plot: loss against LR with the user's LR, the suggestion and the divergence marked
        plots = []
        path, rel = ctx.plot_path("lr_sweep")
        if path is not None and run.losses:
            from nandoctor.report import lr_plots, plots as plot_lib
            with plot_lib.figure(path) as ax:
                lr_plots.lr_sweep_curve(ax, run.lrs, run.losses, reading.smoothed, user_lr=patient.lr,
                                        suggested_lr=reading.suggested_lr, divergence_lr=reading.divergence_lr,
                                        suggestions=reading.suggestions)
            plots.append(rel)
        return self.result(metrics=metrics, plots=plots,
                           data={"lrs": run.lrs, "losses": run.losses, "smoothed": reading.smoothed,
                                 "reading": reading, "sweep": run, "check": check})

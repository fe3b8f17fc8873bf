"""lr-schedule-collapse: the configured scheduler drives the LR to ~0, or far past the divergence point,
within the first steps the user trains."""

from __future__ import annotations


from nandoctor.diagnoses import Diagnosis
from nandoctor.patient import training_state
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, judges

PROBE = "schedule"
PER_EPOCH_SCHEDULERS = ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts",
                        "PolynomialLR", "LinearLR", "ConstantLR")  # their settings count scheduler.step() calls
TOTAL_SCHEDULERS = ("OneCycleLR", "CosineAnnealingLR", "PolynomialLR")  # schedules that end at a set step


def early_window(m: dict, t: dict) -> int:
    """The optimizer steps judged: ``early_epochs`` epochs, clamped to ``[early_min_steps, early_max_steps]``."""
    steps = t["early_epochs"] * (m.get("steps_per_epoch") or 1)
    return int(max(t["early_min_steps"], min(t["early_max_steps"], steps)))


def read_schedule(lrs: list[float], m: dict, divergence_lr: float | None, t: dict) -> dict | None:
    """What goes wrong in the first steps of an LR trace, or None. Pure: the trace, the probe's metrics, thresholds."""
    if not lrs:
        return None
    early = early_window(m, t)
    head = lrs[:early + 1]
    peak = max(range(len(head)), key=lambda i: head[i])
    ref = head[peak]
    configured = m.get("configured_lr")
    out = {"early_steps": early, "peak_lr": ref, "peak_step": peak}
    # 1. the schedule ends (the scheduler raises) within the first steps: the user's run crashes there
    ended = m.get("ended")
    if ended and ended.get("step") is not None and ended["step"] <= early:
        out.update(kind="schedule-ends", step=ended["step"], message=ended.get("message"))
        return out
    # 2. the LR falls to ~0 after its peak
    collapse = next((i for i in range(peak, len(head)) if head[i] < t["collapse_ratio"] * ref), None) if ref > 0 else None
    if collapse is not None:
        out.update(kind="collapse", step=collapse, lr=head[collapse], ratio=head[collapse] / ref)
        return out
    # 2b. the LR decays so fast that it has spent its budget (the sum of the LRs over the traced horizon, how far
    #     the optimizer can move at all) within a few epochs: later epochs train at ~0 (a per-epoch StepLR
    #     stepped per batch). Only where the trace covers several times that window (the schedule did not end)
    spe = m.get("steps_per_epoch") or 1
    window = int(t["spent_epochs"] * spe)
    if len(lrs) >= 4 * window and all(v >= 0 for v in lrs):
        total, run = sum(lrs), 0.0
        for i, v in enumerate(lrs):
            run += v
            if run >= t["spent_share"] * total:
                break
        if total > 0 and i <= window:
            out.update(kind="spent", step=i, lr=lrs[i], ratio=lrs[i] / ref if ref > 0 else None,
                       spent_share=t["spent_share"], horizon=len(lrs))
            return out
    # 3. it never comes near the configured LR at all
    if configured and ref < t["collapse_ratio"] * configured:
        out.update(kind="stays-near-zero", step=0, lr=ref, ratio=ref / configured)
        return out
    # 4. the schedule raises the LR far past the divergence point of the sweep
    if divergence_lr and head[0] < divergence_lr and ref >= t["past_divergence"] * divergence_lr:
        step = next(i for i in range(len(head)) if head[i] >= t["past_divergence"] * divergence_lr)
        out.update(kind="past-divergence", step=step, lr=head[step], ratio=head[step] / divergence_lr)
        return out
    return None


def _advice(kind: str, m: dict) -> str:
    name, spe, interval = m.get("scheduler") or "the scheduler", m.get("steps_per_epoch"), m.get("interval")
    if kind == "past-divergence":
        return (f"Lower the schedule's peak LR ({name}'s max_lr or base LR) below the LR sweep's divergence point, "
                "or lengthen its warm-up.")
    if kind == "schedule-ends" or (name in TOTAL_SCHEDULERS and kind == "collapse"):
        return (f"Give {name} the length of your whole run in the unit you step it in: with interval: {interval}, "
                f"total_steps (or T_max) = epochs x {spe} optimizer steps per epoch, or pass epochs= and "
                f"steps_per_epoch={spe} to OneCycleLR.")
    if interval == "step" and name in PER_EPOCH_SCHEDULERS:
        return (f"{name}'s settings (step_size, T_max, milestones, gamma) count scheduler.step() calls, and you call it "
                f"after every batch: set 'interval: epoch' if you meant epochs (call it once per epoch), or multiply "
                f"those settings by the {spe} optimizer steps per epoch.")
    return f"Check {name}'s settings against how often you call scheduler.step() ({interval})."


def _as_users_loop(model, optimizer) -> None:
    """A cure's ``control_hooks``: step the scheduler past its end as the user's loop would (a
    OneCycleLR then raises) instead of holding its last LR, as probes that train longer than the user's run do."""
    state = training_state(optimizer)
    if state is not None:
        state.hold_past_end = False


class LRScheduleCollapse(Diagnosis):
    code = "lr-schedule-collapse"
    title = "The LR schedule drives the learning rate to ~0 (or past divergence) within the first steps"
    severity = "critical"
    role = "cause"
    requires = (PROBE,)
    # the LR sweep and its check runs use a constant LR (no schedule): lr-too-high/low are not its symptoms
    explains = ("cannot-overfit-batch", "training-crashed", "exploding-gradients", "loss-nonfinite",
                "nonfinite-source", "no-generalisation")
    thresholds = {
        "collapse_ratio": 1e-3,    # the LR is "~0" below this share of its peak (or of the configured LR)
        "early_epochs": 2,         # the first steps judged: this many epochs of optimizer steps ...
        "early_min_steps": 30,     # ... but at least this many ...
        "early_max_steps": 1000,   # ... and at most this many
        "past_divergence": 3.0,    # "far past" the LR sweep's divergence point: this many times it
        "spent_share": 0.99,       # "spent": this share of the sum of the LRs over the traced horizon ...
        "spent_epochs": 5,         # ... is reached within this many epochs
        "cure_min_steps": 30,      # the cure trains at least this many optimizer steps ...
        "cure_max_steps": 300,     # ... at most this many
        "clearly_better": 0.1,     # cured: the run without the schedule takes this much more off its loss (share of
                                   # its start) than the run with it, on the same steps, batch and seed
    }
    fix = ("Step the scheduler at the interval its settings are written for (interval: epoch for per-epoch "
           "step_size/T_max/milestones), or set total_steps/T_max to the length of the whole run in optimizer steps.")
    doc = """
    ## What it detects
    The `schedule` probe steps a copy of the configured scheduler over a throwaway optimizer exactly
    as the user's loop steps it (per optimizer step or per epoch, with accumulation counted), without
    training, and records the LR of every optimizer step. Within the first steps of training
    (`early_epochs` epochs, clamped to `[early_min_steps, early_max_steps]` optimizer steps) the LR
    falls below `collapse_ratio` of its peak, never comes within `collapse_ratio` of the configured
    LR, rises to `past_divergence` times the LR sweep's divergence point, or the scheduler raises
    (OneCycleLR stepped past its `total_steps`). Or, over the whole traced horizon (when the schedule
    does not end within it), the LR decays so fast that `spent_share` of the sum of all its LRs (how
    far the optimizer can move at all) is spent within `spent_epochs` epochs: a
    StepLR(step_size=10, gamma=0.5) stepped per batch halves the LR every ten batches and stops
    the training after a few epochs, past the first two.
    Typical causes: per-epoch settings stepped per batch
    (StepLR(step_size=30) meant as 30 epochs, called after every batch), StepLR(step_size=1,
    gamma=0.1) per batch, a `total_steps`/`T_max` given in epochs.

    ## Why it breaks training
    With the LR at a thousandth of its value the optimizer no longer moves the weights: the loss
    flattens after a few steps and the run looks like a model that cannot learn, or like
    early stopping. A schedule that ends too early crashes the run (OneCycleLR raises), and one
    whose peak is past the divergence point blows the loss up during the warm-up.

    ## Evidence
    The scheduler and interval, the optimizer steps per epoch, the first steps judged, the kind of
    failure and its step (and epoch), the LR there against its peak, the configured LR and the
    sweep's divergence LR, and the LR at the end of epochs 1, 2, 5, 10. Plot: the LR per optimizer
    step (plots/schedule.png). The treatment trains the same model on the same batch with and
    without the schedule, from the same seed; cured when the run without it trains clearly better.

    ## Fix
    Match the scheduler's settings to how often `scheduler.step()` is called: per-epoch schedules
    with `interval: epoch` (once per epoch), or their step counts multiplied by the steps per
    epoch; `total_steps` of OneCycleLR = epochs x steps per epoch (or `epochs=` and
    `steps_per_epoch=`); a peak LR below the divergence point.

    ## Known false positives
    A run that really is this short (a fine-tuning of a few dozen steps whose schedule ends with it);
    the judged window is at least `early_min_steps` steps for that reason. The divergence point is
    measured on a fresh model: a warm-up can legitimately reach LRs a fresh model does not tolerate.
    """

    def check(self, ev: Evidence):
        r = ev.ok(PROBE)
        if r is None:
            return None
        m = r.metrics
        sweep = ev.ok("lr_sweep")
        divergence = (sweep.metrics.get("divergence_lr") if sweep is not None else None) or m.get("divergence_lr")
        lrs = (r.data or {}).get("lrs") or [lr for _, lr in m.get("trajectory") or []]
        read = read_schedule(lrs, m, divergence, self.thresholds)
        if read is None:
            return None
        kind, step, spe = read["kind"], read["step"], m.get("steps_per_epoch") or 1
        evidence = {"kind": kind, "scheduler": m.get("scheduler"), "interval": m.get("interval"),
                    "steps_per_epoch": spe, "early_steps": read["early_steps"], "step": step,
                    "epoch": step / spe, "lr": read.get("lr"), "peak_lr": read["peak_lr"], "peak_step": read["peak_step"],
                    "ratio": read.get("ratio"), "configured_lr": m.get("configured_lr"), "divergence_lr": divergence,
                    "lr_at_epoch_end": m.get("lr_at_epoch_end"), "message": read.get("message")}
        titles = {
            "collapse": f"{m.get('scheduler')} drives the LR to {read.get('lr', 0):.2g} ({read.get('ratio', 0):.0e} of its "
                        f"peak) by optimizer step {step} (epoch {step / spe:.2g})",
            "stays-near-zero": f"{m.get('scheduler')} keeps the LR at {read.get('lr', 0):.2g}, below "
                               f"{self.thresholds['collapse_ratio']:g} of the configured LR, for the first "
                               f"{read['early_steps']} steps",
            "spent": f"{m.get('scheduler')} spends {self.thresholds['spent_share']:.0%} of its learning rate (the sum "
                     f"over {read.get('horizon')} optimizer steps) by step {step} (epoch {step / spe:.2g}), where the "
                     f"LR is {read.get('lr', 0):.2g}: training stops moving after that",
            "schedule-ends": f"{m.get('scheduler')} ends after {step} optimizer steps (epoch {step / spe:.2g}): "
                             "the run crashes there",
            "past-divergence": f"{m.get('scheduler')} raises the LR to {read.get('lr', 0):.2g} by step {step}, "
                               f"{read.get('ratio', 0):.0f}x the LR sweep's divergence point {divergence or 0:.2g}",
        }
        if kind == "past-divergence":
            confidence = 0.7   # a warm-up may legitimately pass what a fresh model tolerates
        else:
            confidence = 0.85 if kind in ("collapse", "schedule-ends") and step <= spe else 0.8
        return self.finding(confidence, evidence, plots=r.plots, title=titles[kind], fix=_advice(kind, m))

    def cures(self, ctx, finding):
        t, ev = self.thresholds, finding.evidence
        patient = ctx.patient
        # 1. long enough to pass the failure, in batches (an optimizer step is `accumulate` batches)
        steps = min(t["cure_max_steps"], max(t["cure_min_steps"], 2 * int(ev.get("step") or 0) + 10))
        # 2. the same model, batch and seed, with the schedule stepped as the user does and without it
        constant = f" (constant LR {patient.lr:.3g})" if patient.lr else ""
        tried = f"the same training without {ev.get('scheduler') or 'the scheduler'}{constant}"
        # 3. clearly better without: it trains where the scheduled run broke, or its loss falls much further
        return [Cure(tried, patient.variant("no scheduler", scheduler=None), steps=steps * patient.accumulate,
                     control_hooks=_as_users_loop, judge=judges.improves(t["clearly_better"]), follows_plan=False)]

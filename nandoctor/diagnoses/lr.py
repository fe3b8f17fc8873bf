"""lr-too-high and lr-too-low: the user's learning rate against the LR sweep.

Both read the ``lr_sweep`` probe: the sweep's divergence point and suggestion, and
its *check*, two short constant-LR runs from the same fresh init on the same
batches, one at the user's LR and one at the suggestion. The check is what keeps
these diagnoses quiet on healthy set-ups: a verdict needs the user's LR to fail
where the suggestion trains. The check is also their treatment record ("ran at
the suggested LR"), re-run here only when the probe had no time for it.
"""

from __future__ import annotations

from nandoctor.diagnoses import Diagnosis
from nandoctor.records import Evidence
from nandoctor.treatments import Cure, Outcome, judges

LR_PROBE = "lr_sweep"


def check_runs(metrics: dict) -> tuple[dict | None, dict | None]:
    """The (user, suggested) check-run summaries of the sweep, or (None, None)."""
    check = metrics.get("check") or {}
    return check.get("user"), check.get("suggested")


def blew_up(run: dict | None) -> bool:
    """The check run went non-finite or the user's code raised in it."""
    return run is not None and (run.get("nonfinite_step") is not None or bool(run.get("error")))


def drop(run: dict | None) -> float | None:
    """A check run's relative drop of the loss (None when it blew up or could not be measured)."""
    if run is None or blew_up(run):
        return None
    return run.get("relative_drop")


class LRDiagnosis(Diagnosis):
    """Shared by both: the treatment replays (or runs) the check and plots it."""

    requires = (LR_PROBE,)
    fallback = ("overfit",)  # no sweep (inconclusive, failed): the overfit run at the user's LR gives a suspicion

    def confirmed(self, user: dict | None, suggested: dict | None) -> bool | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_cure(self, ctx, severity: str | None = None) -> list:
        """The sweep's check as a cure: the run at the suggestion against the run at the user's LR, from the
        same init on the same batches; the probe's own runs when it made them, else run by the cure runner."""
        r = ctx.evidence.get(LR_PROBE)
        sugg = r.metrics.get("suggested_lr") if r is not None else None
        if not sugg or not ctx.patient.lr:
            return []
        user_lr = ctx.patient.lr
        tried = f"ran at the suggested LR {sugg:.3g} instead of {user_lr:.3g} (from the same init, same batches)"
        judge = judges.judge(f"{self.code}'s check: " + self.check_rule)(
            lambda before, after: bool(self.confirmed(before.measures, after.measures)))
        check = r.data.get("check") or {}
        user, suggested = check.get("user"), check.get("suggested")
        if user is not None and suggested is not None:
            arms = tuple(Outcome.reported({k: v for k, v in run.items() if k != "losses"}, run.get("losses"))
                         for run in (user, suggested))
            return [Cure(tried, done=arms, judge=judge, severity=severity, lr=sugg)]
        return [Cure(tried, lr=sugg, train="lr_check", judge=judge, severity=severity)]


class LRTooHigh(LRDiagnosis):
    code = "lr-too-high"
    title = "The learning rate is past the point where training diverges"
    severity = "critical"
    role = "cause"
    explains = ("exploding-gradients", "cannot-overfit-batch")
    thresholds = {
        "far_above": 30.0,       # the user's LR is at least 30x the suggestion (with a failing check) ...
        "fails_below_drop": 0.1,  # a check run "fails" when its loss falls by less than 10% (or goes non-finite)
        "trains_above_drop": 0.25,  # the run at the suggestion "trains" when its loss falls by 25% or more
        "rises_above": 1.2,      # without a usable sweep: the overfit run at the user's LR ends 20% above its start
        "climbs_above": 0.2,     # the check run at the user's LR ends 20% above the untrained loss ...
        "climb_ratio": 3.0,      # ... with the user's LR at least 3x the suggestion: a suspicion its cure decides;
                                 # at 3x with a check that fails at the user's LR and trains at the suggestion
                                 # (and no batch memorised): the runs alone decide, below the divergence point
        "unstable_ratio": 3.0,   # ... or at 3x, the overfit run's tail at least 3x its lowest loss (it falls and
                                 # jumps back up): an info candidate its cure (the suggestion) decides
    }
    cure_factors = (10.0, 100.0)  # without a suggestion, the cure retrains the overfit run at these fractions
    fix = ("Lower the learning rate to the suggested value (see the LR-sweep plot), or add a warm-up; "
           "with SGD on a deep net, gradient clipping also helps.")
    doc = """
    ## What it detects
    The LR sweep (a fresh copy of the model trained while the learning rate grows exponentially)
    finds where the loss diverges. This fires when the user's learning rate is at or past that
    point, or far above the suggested one, and a short run at the user's LR from a fresh init
    fails (the loss rises, stalls or turns NaN) where the same run at the suggested LR trains.
    The sweep's divergence point is an upper bound (the sweep's model was trained along the way):
    a constant LR below it can still fail, so at 3x the suggestion the two runs decide alone. At
    3x with an overfit run that falls and jumps back up (its tail `unstable_ratio` times its lowest
    loss, the batch not memorised), the finding is an `info` candidate that its cure raises: the
    same training at the suggestion must memorise the batch.

    ## Why it breaks training
    Each step overshoots the minimum it is heading for: the loss oscillates, climbs, or overflows
    to Inf/NaN, and with ReLU nets a single huge step can kill most units for good. Adam bounds each
    update by roughly the LR, so lr=1 moves every weight by ~1 per step: far more than any layer's
    scale. The seeds' "loss rises steadily then turns NaN" is this more often than anything else.

    ## Evidence
    The user's LR, the sweep's divergence LR (and whether it went non-finite or rose), the
    suggested LR and the rules behind it, how far above the suggestion the user is, and the two
    check runs (start and end loss at each LR). Plot: loss against LR with the user's LR, the
    suggestion and the divergence point marked (plots/lr_sweep.png); the check runs side by side.

    ## Fix
    Use the suggested LR (or a value between it and a third of the divergence LR). If a high LR
    is wanted for speed, add a linear warm-up over the first few hundred steps. Clipping the
    gradient norm helps SGD; it does not help Adam much, whose steps are already normalised.

    ## Known false positives
    A sweep is short: a set-up that needs a warm-up or a scheduler to reach a high LR safely will
    look diverging at that LR here. Causes that make every LR look too high (inputs on a 0..255
    scale, a summed loss, a bad init) fire this too: when those are found, fix them first.
    """

    def confirmed(self, user: dict | None, suggested: dict | None) -> bool | None:
        """True: the user's LR fails where the suggestion trains; None: no check was run."""
        if user is None or suggested is None:
            return None
        user_drop, sugg_drop = drop(user), drop(suggested)
        user_fails = blew_up(user) or (user_drop is not None and user_drop < self.thresholds["fails_below_drop"])
        sugg_trains = sugg_drop is not None and sugg_drop >= self.thresholds["trains_above_drop"]
        return user_fails and sugg_trains

    def check(self, ev: Evidence):
        r = ev.ok(LR_PROBE)
        if r is None:
            return self._rising_overfit(ev, None, ev.facts.get("lr")) if ev.facts.get("lr") else None
        m = r.metrics
        user, sugg, div = m.get("user_lr"), m.get("suggested_lr"), m.get("divergence_lr")
        if user and not sugg:
            return self._rising_overfit(ev, r, user)  # no usable curve: the overfit run at the user's LR decides
        # 1. where the user's LR sits: past the divergence point, or far above the suggestion
        past = div is not None and user >= div
        far = user >= sugg * self.thresholds["far_above"]
        user_run, sugg_run = check_runs(m)
        user_drop = drop(user_run)
        above = user >= sugg * self.thresholds["climb_ratio"]
        climbs = above and (blew_up(user_run) or (user_drop is not None and user_drop <= -self.thresholds["climbs_above"]))
        # 2. the check decides: the user's LR must fail where the suggestion trains
        confirmed = self.confirmed(user_run, sugg_run)
        # below the sweep's divergence point (an upper bound: a constant LR below it can still fail), the runs
        # decide alone, where the model also could not memorise one batch at the user's LR
        over = ev.ok("overfit")
        failing = above and confirmed and (over is None or not over.metrics.get("memorised"))
        # the loss on one batch falls and jumps back up at the user's LR (3x the suggestion or more): a candidate
        # its cure (the same training at the suggestion) decides
        om = over.metrics if over is not None else {}
        lowest, tail = om.get("min_loss"), om.get("tail_loss")
        unstable = above and over is not None and not om.get("memorised") and om.get("nonfinite_step") is None \
            and isinstance(lowest, (int, float)) and isinstance(tail, (int, float)) and lowest > 0 \
            and tail >= self.thresholds["unstable_ratio"] * lowest
        if not (past or far or climbs or failing or unstable):
            return None
        if confirmed:
            severity, confidence = "critical", 0.95 if past else 0.85
        elif past and confirmed is None:  # no time for the check: its treatment runs it and may confirm
            severity, confidence = "warning", 0.6
        elif past or climbs:  # the loss climbs at the user's LR: the cure on the overfit run decides
            severity, confidence = "warning", 0.55 if climbs else 0.45
        elif unstable:  # a note until its cure shows the suggestion memorises the batch
            severity, confidence = "info", 0.45
        else:
            return None
        evidence = {"user_lr": user, "divergence_lr": div, "divergence_kind": m.get("divergence_kind"),
                    "suggested_lr": sugg, "times_suggested": user / sugg, "suggestions": m.get("suggestions"),
                    "user_lr_position": m.get("user_lr_position"), "check_user": _brief(user_run),
                    "check_suggested": _brief(sugg_run), "optimizer": m.get("optimizer")}
        if severity == "info":
            evidence.update(candidate_only=True, overfit_min_loss=lowest, overfit_tail_loss=tail)
        where = f"past the divergence point {div:.3g}" if past else f"{user / sugg:.0f}x the suggested {sugg:.3g}"
        if severity == "info":
            where += f", and the loss on one batch falls to {lowest:.3g} then jumps back to {tail:.3g}"
        return self.finding(confidence, evidence, severity=severity, plots=r.plots,
                            title=f"The learning rate {user:.3g} is {where}",
                            fix=f"Lower the learning rate to about {sugg:.2g} (the LR sweep's suggestion); "
                                f"add a warm-up if you need a higher one.")


    def _rising_overfit(self, ev: Evidence, sweep, user: float):
        """A suspicion from the overfit probe alone: at the user's constant LR the loss on one batch climbs
        (or turns non-finite) instead of falling. Its cure, the same training at a tenth of the LR, decides."""
        over = ev.ok("overfit")
        if over is None:
            return None
        m = over.metrics
        start, tail = m.get("initial_loss"), m.get("tail_loss")
        rises = m.get("nonfinite_step") is not None or (
            start is not None and tail is not None and start > 0 and tail > self.thresholds["rises_above"] * start)
        if not rises or m.get("memorised"):
            return None
        sm = sweep.metrics if sweep is not None else {}
        evidence = {"user_lr": user, "suggested_lr": None, "divergence_lr": sm.get("divergence_lr"),
                    "sweep": sm.get("reason") or _no_sweep(ev), "overfit_initial_loss": start, "overfit_tail_loss": tail,
                    "overfit_nonfinite_step": m.get("nonfinite_step"), "overfit_steps": m.get("steps"),
                    "optimizer": sm.get("optimizer") or ev.facts.get("optimizer")}
        return self.finding(0.5, evidence, severity="warning", plots=over.plots, probes=[LR_PROBE, "overfit"],
                            title=f"At the learning rate {user:.3g} the loss on one batch rises instead of falling",
                            fix=f"Lower the learning rate (try {user / 10:.2g}), or add a warm-up.")

    check_rule = "the user's LR fails (non-finite, or under 10% off the loss) where the suggestion takes 25% off"

    def cures(self, ctx, finding) -> list:
        """The check (the suggestion against the user's LR), then the overfit run again at a lower LR:
        at the suggestion, or without one at a tenth and a hundredth of the user's."""
        cures = self.check_cure(ctx, severity="critical")
        suggested = finding.evidence.get("suggested_lr")
        user_lr = ctx.patient.lr
        if not user_lr:
            return cures
        for lr in ([suggested] if suggested else [user_lr / f for f in self.cure_factors]):
            tried = f"the overfit run again at LR {lr:.3g} ({user_lr / lr:.3g}x lower), same init and batch"
            cures.append(Cure(tried, lr=lr, severity="critical", refuted_severity="warning"))
        return cures


class LRTooLow(LRDiagnosis):
    code = "lr-too-low"
    title = "The learning rate is orders of magnitude below the useful range"
    severity = "critical"
    role = "cause"
    explains = ("cannot-overfit-batch",)
    thresholds = {
        "far_below": 100.0,       # the user's LR is at most 1/100 of the suggestion (two decades) ...
        "below_with_check": 10.0,  # ... or 1/10 of it with a check that confirms (the suggestion trains, the user's LR not)
        "barely_moves_drop": 0.05,  # ... and its loss falls by less than 5% in the check run ...
        "overfit_trains_drop": 0.25,  # ... and, when the overfit probe ran, by less than 25% over its steps
        "trains_above_drop": 0.25,  # ... while the run at the suggestion falls by 25% or more
    }
    fix = "Raise the learning rate to the suggested value (see the LR-sweep plot)."
    doc = """
    ## What it detects
    The user's learning rate is at least two orders of magnitude below the LR the sweep suggests
    (one, when the check below confirms it), and the loss barely moves at it: a short run at the user's LR from a fresh init hardly changes
    the loss while the same run at the suggested LR trains. When the overfit probe ran, the model
    must also have failed to memorise one batch at the user's LR (critical); without the overfit
    probe (`nandoctor lr-sweep` alone) the finding is a warning.

    ## Why it breaks training
    Every update is a tiny fraction of what the loss surface allows: the loss looks flat (or falls
    so slowly that early stopping fires), the model looks broken, and hours of compute buy nothing.
    It is the quiet twin of lr-too-high, and explains a "cannot overfit one batch" result.

    ## Evidence
    The user's LR, the suggested LR and its rules, the start of the useful range, how many times
    below the suggestion the user is, the loss drop at each LR in the check runs, and the overfit
    probe's drop when it ran. Plot: loss against LR with the user's LR marked (plots/lr_sweep.png).

    ## Fix
    Raise the learning rate to the suggestion. Typical working values: Adam 1e-4..3e-3, SGD with
    momentum 1e-3..1e-1, scaled for batch size.

    ## Known false positives
    Fine-tuning a pre-trained model on purpose with a tiny LR (the sweep sees only a short horizon);
    schedules that warm the LR up from a tiny starting value (the sweep sees the configured LR).
    """

    check_rule = "the loss barely moves at the user's LR (under 5% off) and takes 25% off at the suggestion"
    cure_factors = (10.0, 100.0)  # without a suggestion, the cure retrains the overfit run at these multiples

    def cures(self, ctx, finding) -> list:
        """The overfit run again at a higher LR: cured when the batch the user's LR could not memorise is
        memorised. Not the check: that short run is the finding's evidence, and a 20-step race favours an LR
        that only diverges later; another cause of a stuck loss (a layer left out of the optimizer, one
        rebuilt in forward()) keeps the batch from being memorised at any LR and so refutes this one."""
        user_lr, suggested = ctx.patient.lr, finding.evidence.get("suggested_lr")
        if not user_lr:
            return []
        cures = []
        for lr in ([suggested] if suggested else [user_lr * f for f in self.cure_factors]):
            tried = f"the overfit run again at LR {lr:.3g} ({lr / user_lr:.3g}x higher), same init and batch"
            cures.append(Cure(tried, lr=lr, judge=judges.fixes(judges.memorised), refuted_severity="warning"))
        return cures

    def confirmed(self, user: dict | None, suggested: dict | None) -> bool | None:
        """True: the loss barely moves at the user's LR and trains at the suggestion; None: no check."""
        if user is None or suggested is None:
            return None
        user_drop, sugg_drop = drop(user), drop(suggested)
        barely = user_drop is not None and user_drop < self.thresholds["barely_moves_drop"]
        trains = sugg_drop is not None and sugg_drop >= self.thresholds["trains_above_drop"]
        return barely and trains

    def check(self, ev: Evidence):
        r = ev.ok(LR_PROBE)
        if r is None:
            return self._flat_overfit(ev, None, ev.facts.get("lr")) if ev.facts.get("lr") else None
        m = r.metrics
        user, sugg = m.get("user_lr"), m.get("suggested_lr")
        if user and not sugg:
            return self._flat_overfit(ev, r, user)  # no suggestion: the overfit run at the user's LR decides
        if not user or user > sugg / self.thresholds["below_with_check"]:
            return None
        # 1. the overfit probe, when it ran, must agree: no memorising at the user's LR
        over = ev.ok("overfit")
        if over is not None and over.metrics.get("memorised"):
            return None
        # 2. the check decides; without one, the overfit probe at the user's LR gives a weaker verdict
        user_run, sugg_run = check_runs(m)
        confirmed = self.confirmed(user_run, sugg_run)
        if user > sugg / self.thresholds["far_below"] and not confirmed:
            return None  # one decade below: only the runs (the suggestion trains clearly faster) can tell
        sweep_drop = m.get("drop_at_user_lr")
        over_drop = _overfit_drop(over.metrics) if over is not None else None
        if over_drop is not None and over_drop >= self.thresholds["overfit_trains_drop"]:
            return None  # the user's LR trains the batch over the overfit probe's steps: slow, not stuck
        if confirmed and over is not None:
            severity, confidence = "critical", 0.95
        elif confirmed:  # no overfit probe: a slow but healthy start cannot be told apart from a stuck one
            severity, confidence = "warning", 0.7
        elif confirmed is None and over_drop is not None and over_drop < self.thresholds["barely_moves_drop"]:
            severity, confidence = "warning", 0.6
        else:
            return None
        evidence = {"user_lr": user, "suggested_lr": sugg, "times_below_suggested": sugg / user,
                    "useful_range": m.get("useful_range"), "suggestions": m.get("suggestions"),
                    "sweep_drop_at_user_lr": sweep_drop, "check_user": _brief(user_run),
                    "check_suggested": _brief(sugg_run),
                    "overfit_drop": over_drop,
                    "optimizer": m.get("optimizer")}
        return self.finding(confidence, evidence, severity=severity, plots=r.plots,
                            title=f"The learning rate {user:.3g} is {sugg / user:.0f}x below the suggested "
                                  f"{sugg:.3g}; the loss barely moves",
                            fix=f"Raise the learning rate to about {sugg:.2g} (the LR sweep's suggestion).")


    def _flat_overfit(self, ev: Evidence, sweep, user: float):
        """A suspicion from the overfit probe alone, when the sweep found no suggestion (too short, or a flat
        curve): at the user's LR the loss on one batch barely moves. Its cure, the same training at 10x and
        100x the LR, decides; another cause of a flat loss (frozen layers, a broken graph) refutes it."""
        over = ev.ok("overfit")
        if over is None or over.metrics.get("memorised") or over.metrics.get("nonfinite_step") is not None:
            return None
        over_drop = _overfit_drop(over.metrics)
        if over_drop is None or abs(over_drop) >= self.thresholds["barely_moves_drop"]:
            return None
        sm = sweep.metrics if sweep is not None else {}
        evidence = {"user_lr": user, "suggested_lr": None, "sweep": sm.get("reason") or _no_sweep(ev),
                    "overfit_drop": over_drop, "overfit_steps": over.metrics.get("steps"),
                    "overfit_initial_loss": over.metrics.get("initial_loss"),
                    "overfit_tail_loss": over.metrics.get("tail_loss"),
                    "optimizer": sm.get("optimizer") or ev.facts.get("optimizer")}
        return self.finding(0.45, evidence, severity="warning", plots=over.plots, probes=[LR_PROBE, "overfit"],
                            title=f"At the learning rate {user:.3g} the loss on one batch barely moves "
                                  f"({over_drop:.1%} in {over.metrics.get('steps')} steps)",
                            fix=f"Raise the learning rate (try {user * 10:.2g}), after ruling out frozen layers.")

def _no_sweep(ev: Evidence) -> str:
    r = ev.get(LR_PROBE)
    return f"the LR sweep did not run ({r.status}: {r.reason})" if r is not None else "the LR sweep did not run"


def _brief(run: dict | None) -> dict | None:
    if run is None:
        return None
    return {k: run.get(k) for k in ("lr", "end_loss", "end_loss_at_init", "relative_drop", "nonfinite_step")}


def _overfit_drop(m: dict) -> float | None:
    initial, tail = m.get("initial_loss"), m.get("tail_loss")
    if not isinstance(initial, float) or tail is None or not initial:
        return None
    return (initial - tail) / abs(initial)

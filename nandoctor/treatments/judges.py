"""Judges: pure functions that say whether a cure worked, ``judge(before, after) -> bool``.

``before`` is the untreated control and ``after`` the treated copy, both trained on the same
steps, batch and seed (``treatments.Outcome``). One vocabulary for every diagnosis:

- *outcome tests* read one run: ``clean`` (finite, never below zero: a log-likelihood below zero
  is no cure), ``memorised``, ``trains``, ``falls``;
- *judges* compare the two: ``beats_control`` (the default), ``fixes(test)`` (the treated run
  passes a test the control fails), ``repairs(test)`` (the control is broken by static evidence:
  the treated run only has to pass), ``tail_ratio``, ``drop_gain``, ``measured``, ``both``,
  ``either``, ``rescues_rare_class`` (per-class recall along two runs on the data stream).

Each judge carries a ``text`` for the report (``treatment.judged_by``). Judges train nothing and
never read the clock: the same two runs always get the same verdict.
"""

from __future__ import annotations

import math
from typing import Callable

from nandoctor.probes.overfit import memorised as _memorised

NEGATIVE_TOL = 1e-6   # a loss below -NEGATIVE_TOL has passed the floor of a log-likelihood
TRAINS_DROP = 0.25    # a treated run that has not memorised the batch yet must have taken 25% off its loss ...
BEATS_CONTROL = 0.1   # ... and that much more than twice what the untreated run took off (nothing, if it broke)
CLEARLY_BETTER = 0.5  # ``or_clearly_better``: the treated tail loss at most half the untreated one


def judge(text: str):
    """Name a judge (or an outcome test) for the report."""
    def wrap(fn):
        fn.text = text
        return fn
    return wrap


# --- outcome tests: one run -------------------------------------------------------------------
def _run(o):
    return o.run if hasattr(o, "run") else o


@judge("ran clean (finite, never below zero)")
def clean(o) -> bool:
    """Ran to the end without an exception, finite all along, never below zero."""
    run = _run(o)
    return not run.error and run.nonfinite_step is None and bool(run.losses) and min(run.losses) >= -NEGATIVE_TOL


def relative_drop(o, share: float = 0.25) -> float | None:
    """1 - (mean of the last ``share`` of the losses) / first loss; None when the run broke or starts at <= 0."""
    run = _run(o)
    start, end = run.initial, run.tail(share)
    if run.error or run.nonfinite_step is not None or start is None or end is None or start <= 0:
        return None
    return (start - end) / start


@judge("memorised the batch")
def memorised(o) -> bool:
    return clean(o) and _memorised(_run(o).initial, _run(o).tail(), getattr(o, "accuracy", None))


@judge(f"memorised the batch, or clean and {TRAINS_DROP:.0%} off its loss")
def trains(o) -> bool:
    if memorised(o):
        return True
    drop = relative_drop(o)
    return clean(o) and drop is not None and drop >= TRAINS_DROP


@judge(f"clean and {TRAINS_DROP:.0%} below the untrained model's loss on the same batches")
def trains_on_stream(o) -> bool:
    """For the LR check's protocol (a run on the data stream): its drop against the same run at LR 0."""
    drop = o.measures.get("relative_drop") if hasattr(o, "measures") else None
    return clean(o) and isinstance(drop, (int, float)) and drop >= TRAINS_DROP


@judge("clean and lower at the end than at the start")
def falls(o) -> bool:
    run = _run(o)
    tail = run.tail()
    return clean(o) and tail is not None and run.initial is not None and tail < run.initial


# --- readings of a recorded arm (``treatment.before``/``after``: summaries, not runs) ------------------
def arms_of(treatment: dict | None) -> tuple[dict, dict, str | None]:
    """(before, after, protocol) of a ``treatment`` record; empty arms when it has none."""
    t = treatment if isinstance(treatment, dict) else {}
    before, after = t.get("before"), t.get("after")
    return (before if isinstance(before, dict) else {}, after if isinstance(after, dict) else {},
            t.get("protocol"))


def arm_broke(arm: dict) -> bool:
    """The recorded run raised or turned non-finite."""
    return bool(arm.get("error")) or arm.get("nonfinite_step") is not None


def arm_clean(arm: dict) -> bool:
    """The recorded run trained some steps and ended finite, without an exception."""
    tail = arm.get("tail_loss")
    return not arm_broke(arm) and (arm.get("steps") or 0) > 0 and isinstance(tail, (int, float)) \
        and math.isfinite(tail)


def arm_memorised(arm: dict) -> bool:
    """The recorded run memorised its batch (the overfit probe's rule), clean and never below zero."""
    initial, tail = arm.get("initial_loss"), arm.get("tail_loss")
    if not arm_clean(arm) or not isinstance(initial, (int, float)) or tail < 0:
        return False
    return bool(_memorised(initial, tail, arm.get("accuracy")))


# --- judges: the two runs ---------------------------------------------------------------------
@judge(f"beats the untreated run: clean, and memorised or {TRAINS_DROP:.0%} off its loss and "
       f"{BEATS_CONTROL:.0%} more than twice the control's drop, where the control did not memorise")
def beats_control(before, after) -> bool:
    """The default: cured when the treated run is clean, the control did not memorise the batch, and the
    treated run either memorised it or trains clearly better. A treated run still learning when the steps
    run out counts, so the verdict does not depend on how many steps the budget allowed."""
    if not clean(after) or memorised(before):
        return False
    if memorised(after):
        return True
    after_drop = relative_drop(after)
    before_drop = max(0.0, relative_drop(before) or 0.0) if clean(before) else 0.0
    return after_drop is not None and after_drop >= TRAINS_DROP and after_drop >= 2 * before_drop + BEATS_CONTROL


def ends_lower(ratio: float) -> Callable:
    """On the data stream (the LR check's protocol: the same batches for both arms, in the same order), the
    treated run ends at most ``ratio`` times the untreated one's end loss; where that one broke, it trains."""
    @judge(f"clean and ending at most {ratio:g}x the untreated run's loss on the same batches")
    def j(before, after) -> bool:
        a, b = after.measures.get("end_loss"), before.measures.get("end_loss")
        if not clean(after) or not isinstance(a, (int, float)):
            return False
        if not clean(before) or not isinstance(b, (int, float)) or not math.isfinite(b):
            return trains_on_stream(after)
        return 0 <= a <= ratio * b
    return j


def ends_lower_by(ratio: float, share: float) -> Callable:
    """``ends_lower(ratio)``, and by a margin that matters: the gap between the two end losses is at least
    ``share`` of the untrained model's loss on those batches (the lower of the two arms': a cure of huge inputs
    starts far lower than the model without it). Two arms that both memorise the stream end near zero, where
    any ratio is noise."""
    lower = ends_lower(ratio)

    @judge(f"{lower.text}, lower by at least {share:.0%} of the untrained model's loss")
    def j(before, after) -> bool:
        if not lower(before, after):
            return False
        a, b = after.measures.get("end_loss"), before.measures.get("end_loss")
        if not clean(before) or not isinstance(b, (int, float)) or not math.isfinite(b):
            return True   # the untreated run broke and the treated one trains: ends_lower's own reading
        scales = [o.measures.get("end_loss_at_init") for o in (before, after)]
        scales = [x for x in scales if isinstance(x, (int, float)) and math.isfinite(x) and x > 0]
        return bool(scales) and b - a >= share * min(scales)
    return j


def when_broken(test: Callable) -> Callable:
    """Cured when the untreated run broke (non-finite, an exception) and the treated one passes ``test``; no
    verdict (None: the finding stays inconclusive) when the untreated run never met the symptom."""
    @judge(f"the untreated run broke and the treated run {test.text}")
    def j(before, after) -> bool | None:
        if clean(before) or (not _run(before).losses and not _run(before).error):
            return None
        return bool(test(after))
    return j


def when_either_trains(test: Callable) -> Callable:
    """``test``, where at least one arm trains (memorised, or 25% off its loss); no verdict (None) when neither
    does: "no worse" between two runs that both stay where they started says nothing."""
    @judge(f"where either run trains: {test.text}")
    def j(before, after) -> bool | None:
        if not trains(before) and not trains(after):
            return None
        return bool(test(before, after))
    return j


def fixes(test: Callable) -> Callable:
    """Cured when the treated run passes ``test`` and the control does not."""
    @judge(f"the treated run {test.text} and the untreated one did not")
    def j(before, after) -> bool:
        return bool(test(after)) and not test(before)
    return j


def also(test: Callable) -> Callable:
    """Both runs pass ``test`` (both memorised the batch): no worse, where the ratio of two losses near zero is
    noise."""
    @judge(f"both runs {test.text}")
    def j(before, after) -> bool:
        return bool(test(after)) and bool(test(before))
    return j


@judge("clean and classifying the batch at least as well as the untreated run")
def accuracy_not_lower(before, after) -> bool:
    """Classification: the treated run's batch accuracy at least the untreated one's (a model with oversized
    weights can drive a batch's loss lower while classifying fewer of it right)."""
    a, b = getattr(after, "accuracy", None), getattr(before, "accuracy", None)
    return clean(after) and isinstance(a, (int, float)) and isinstance(b, (int, float)) and a >= b


def trains_no_worse(ratio: float = 1.05) -> Callable:
    """A cure that resets what should have been the default (an init, an output layer): the treated run ends no
    worse than ``ratio`` times the untreated tail loss, or both memorise the batch, or it classifies the batch at
    least as well."""
    return either(not_worse(ratio), also(memorised), accuracy_not_lower)


def repairs(test: Callable) -> Callable:
    """For a control broken by static evidence (the outputs do not fit the loss): the treated run must pass
    ``test``; it must also be clean, so a loss run below zero is never a repair."""
    @judge(f"the treated run {test.text} (the untreated set-up is broken by construction)")
    def j(before, after) -> bool:
        return clean(after) and bool(test(after))
    return j


def improves(by: float) -> Callable:
    """Cured when the treated run is clean and takes ``by`` more of its start off its loss than the control
    (nothing, where the control broke or went below zero): a repair still learning when the steps end."""
    @judge(f"clean and {by:.0%} more off its loss than the untreated run")
    def j(before, after) -> bool:
        d_after = relative_drop(after)
        d_before = max(0.0, relative_drop(before) or 0.0) if clean(before) else 0.0
        return clean(after) and d_after is not None and d_after >= d_before + by
    return j


def not_worse(ratio: float) -> Callable:
    """For a cure that removes something (a column said to carry nothing): the treated run is clean and ends at
    most ``ratio`` times the untreated tail loss (or trains, where that one broke)."""
    @judge(f"clean and ending no worse than {ratio:g}x the untreated run's tail loss")
    def j(before, after) -> bool:
        a, b = _run(after).tail(), _run(before).tail()
        if not clean(before) or b is None or not math.isfinite(b):
            return trains(after)
        return clean(after) and a is not None and a <= ratio * b + 1e-6
    return j


def tail_ratio(ratio: float) -> Callable:
    """Cured when the treated run is clean and ends ``ratio`` times lower; when the control broke, when it trains."""
    @judge(f"clean and a tail loss {ratio:g}x below the untreated run's (or trains, where that one broke)")
    def j(before, after) -> bool:
        b = _run(before).tail()
        if not clean(before) or b is None or not math.isfinite(b):
            return trains(after) and memorised(after)
        a = _run(after).tail()
        return clean(after) and a is not None and a <= b / ratio
    return j


def drop_gain(by: float) -> Callable:
    """Cured when the treated run's relative drop beats the control's by ``by`` (or reaches it, where that broke)."""
    @judge(f"takes at least {by:.0%} more off its loss than the untreated run")
    def j(before, after) -> bool:
        d_after, d_before = relative_drop(after), relative_drop(before)
        if d_after is None:
            return False
        return d_after >= by if d_before is None else d_after - d_before >= by
    return j


def measured(key: str, *, at_most: float | None = None, at_least: float | None = None,
             arm: str = "after") -> Callable:
    """A measurement beside the loss: ``measures[key]`` of the treated (or, ``arm="before"``, the
    untreated) run within the limit; False when it could not be measured."""
    limit = f"at most {at_most:g}" if at_most is not None else f"at least {at_least:g}"
    @judge(f"{key} {limit} {'after' if arm == 'after' else 'before'} the cure")
    def j(before, after) -> bool:
        v = (after if arm == "after" else before).measures.get(key)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (at_most is None or v <= at_most) and (at_least is None or v >= at_least)
    return j


def measure_lower(key: str, ratio: float) -> Callable:
    """``measures[key]`` of the treated run at most ``ratio`` times the untreated one's (a loss measured
    beside the training, e.g. on held-out samples), the treated run clean; finite where the control's was not."""
    @judge(f"clean and {key} at most {ratio:g}x the untreated run's")
    def j(before, after) -> bool:
        a, b = after.measures.get(key), before.measures.get(key)
        if not clean(after) or not isinstance(a, (int, float)) or not math.isfinite(a):
            return False
        if not isinstance(b, (int, float)) or not math.isfinite(b):
            return True
        return a <= ratio * b
    return j


def starts_near(value: float, ratio: float) -> Callable:
    """The treated run is clean and its first loss is at most ``ratio`` times ``value`` (the expected loss at
    initialisation): a cure of how the model starts."""
    @judge(f"clean and a first loss at most {ratio:g}x {value:.3g}")
    def j(before, after) -> bool:
        first = _run(after).initial
        return clean(after) and isinstance(first, (int, float)) and math.isfinite(first) and first <= ratio * value
    return j


def both(*judges: Callable) -> Callable:
    @judge(" and ".join(j.text for j in judges))
    def j(before, after) -> bool:
        return all(x(before, after) for x in judges)
    return j


def either(*judges: Callable) -> Callable:
    @judge(" or ".join(j.text for j in judges))
    def j(before, after) -> bool:
        return any(x(before, after) for x in judges)
    return j


def unmeasured(key: str) -> Callable:
    """True when ``key`` could not be measured on either arm (a judge that falls back on the loss)."""
    @judge(f"{key} not measurable")
    def j(before, after) -> bool:
        return before.measures.get(key) is None or after.measures.get(key) is None
    return j


@judge(f"clean and a tail loss at most {CLEARLY_BETTER:g}x the untreated run's")
def clearly_better(before, after) -> bool:
    a, b = _run(after).tail(), _run(before).tail()
    return clean(after) and a is not None and b is not None and 0 <= a < CLEARLY_BETTER * b


def decided(verdict: bool, by: str) -> Callable:
    """The verdict of a comparison a probe already made on its own copies (the BatchNorm variants, the
    init schemes): the same two arms, judged by the probe's rule, named in ``by``."""
    @judge(by)
    def j(before, after) -> bool:
        return bool(verdict)
    return j


def rescues_rare_class(*, recall: float = 0.2, share: float = 1 / 3, gain: float = 0.1) -> Callable:
    """For a rare class (the ``class_recall`` protocol: both arms scored on the same stratified batch along the
    run), at the end of the run: cured when the treated run's balanced accuracy leads the untreated one's by
    ``gain`` and the untreated run still ignores the rare class (its recall at most ``recall``, or at most
    ``share`` of the other classes' mean recall). A rare class the user's training learns late, but within the
    steps, is not ignored. Never where the treated run is not clean; no verdict (None) where the untreated run
    broke or the batch could not be scored."""
    @judge(f"at the end of the run the treated one leads by {gain:g} in balanced accuracy and the untreated one "
           f"ignores the rare class (recall at most {recall:g}, or {share:.2g} of the other classes')")
    def j(before, after) -> bool | None:
        b, a = getattr(before, "measures", {}) or {}, getattr(after, "measures", {}) or {}
        if not clean(before) or b.get("rare_class") is None or b.get("rare_class") != a.get("rare_class"):
            return None
        if not clean(after):
            return False
        rare, others = b.get("rare_recall_curve") or [], b.get("others_recall_curve") or []
        untreated, treated = b.get("balanced_accuracy_curve") or [], a.get("balanced_accuracy_curve") or []
        if not rare or not others or not untreated or not treated:
            return None
        if treated[-1] - untreated[-1] < gain - 1e-9:
            return False
        return rare[-1] <= recall + 1e-9 or rare[-1] <= share * others[-1] + 1e-9
    return j

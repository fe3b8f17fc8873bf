"""The cure judges on hand-built before/after runs: no training, the verdict from the two curves alone."""

import math

import pytest

from patients import blobs, make_patient

from nandoctor.probes.training import Run
from nandoctor.treatments import Cure, Outcome, cured_patient, judges, run_cure


def arm(losses, accuracy=None, stopped="done", error=None, **measures):
    return Outcome(Run(losses=list(losses), stopped=stopped, error=error), accuracy, dict(measures))


def falling(start=1.1, end=0.01, n=40):
    return [start + (end - start) * i / (n - 1) for i in range(n)]


FLAT = [1.1] * 40


def test_a_log_likelihood_run_below_zero_is_never_cured():
    # seed 000: log-softmax is "tried" but the loss still runs to -0.94: below the floor of an NLL
    negative = arm(falling(1.1, -0.94))
    raw_scores = arm(falling(0.0, -8421.0))
    for judge in (judges.beats_control, judges.repairs(judges.falls), judges.repairs(judges.trains),
                  judges.fixes(judges.memorised), judges.tail_ratio(3.0), judges.clearly_better):
        assert not judge(raw_scores, negative), judge.text
    assert not judges.clean(negative) and not judges.trains(negative)


def test_beats_control_wants_the_treated_run_to_train_where_the_control_did_not():
    assert judges.beats_control(arm(FLAT), arm(falling()))
    assert judges.beats_control(arm([1.1, 2.0, math.nan], stopped="nonfinite"), arm(falling(1.1, 0.7)))
    # the control memorised the batch already: nothing to cure
    assert not judges.beats_control(arm(falling()), arm(falling()))
    # both learn about as much: no clear gain
    assert not judges.beats_control(arm(falling(1.1, 0.75)), arm(falling(1.1, 0.7)))
    # a treated run that broke is no cure, however bad the control
    assert not judges.beats_control(arm(FLAT), arm([1.1, math.inf], stopped="nonfinite"))
    assert not judges.beats_control(arm(FLAT), arm([1.1, 0.9], stopped="error", error={"message": "boom"}))


def test_a_crash_is_cured_only_when_the_run_then_trains():
    crashed = arm([], stopped="error", error={"message": "Target 3 is out of bounds"})
    assert judges.beats_control(crashed, arm(falling()))
    assert not judges.beats_control(crashed, arm(FLAT))  # runs now, but does not train


def test_fixes_and_repairs():
    fixed = judges.fixes(judges.memorised)
    assert fixed(arm(FLAT), arm(falling()))
    assert not fixed(arm(falling()), arm(falling()))  # the control passed the same test
    repaired = judges.repairs(judges.falls)
    assert repaired(arm(falling()), arm(falling()))   # broken by construction: the treated run only has to pass
    assert not repaired(arm(FLAT), arm(FLAT))


def test_measured_judges_read_the_numbers_beside_the_loss():
    judge = judges.both(judges.repairs(judges.memorised), judges.measured("gradient_ratio", at_most=1.5))
    assert judge(arm(FLAT, gradient_ratio=2.0), arm(falling(), gradient_ratio=1.0))
    assert not judge(arm(FLAT, gradient_ratio=2.0), arm(falling(), gradient_ratio=2.0))
    assert not judge(arm(FLAT), arm(falling()))  # not measured: no verdict from a missing number
    before = judges.measured("drift", at_least=1e-3, arm="before")
    assert before(arm(FLAT, drift=0.5), arm(FLAT)) and not before(arm(FLAT, drift=0.0), arm(FLAT))


def test_tail_ratio_and_drop_gain():
    assert judges.tail_ratio(3.0)(arm(falling(1.1, 0.9)), arm(falling(1.1, 0.2)))
    assert not judges.tail_ratio(3.0)(arm(falling(1.1, 0.9)), arm(falling(1.1, 0.5)))
    assert judges.drop_gain(0.2)(arm(FLAT), arm(falling(1.1, 0.5)))
    assert not judges.drop_gain(0.2)(arm(falling(1.1, 0.6)), arm(falling(1.1, 0.5)))


def test_ends_lower_on_the_stream():
    stalled = arm(falling(30.0, 1.02), end_loss=1.02, relative_drop=0.97)
    learning = arm(falling(1.1, 0.84), end_loss=0.84, relative_drop=0.21)
    assert judges.ends_lower(0.9)(stalled, learning)
    assert not judges.ends_lower(0.9)(learning, stalled)


def test_every_judge_names_its_rule_for_the_report():
    for j in (judges.beats_control, judges.fixes(judges.trains), judges.tail_ratio(2), judges.drop_gain(0.1),
              judges.measured("x", at_most=1), judges.ends_lower(0.9), judges.decided(True, "the probe")):
        assert isinstance(j.text, str) and j.text


def test_run_cure_judges_a_comparison_a_probe_already_made():
    cure = Cure("froze BatchNorm", done=(arm(FLAT), arm(falling())), judge=judges.beats_control)
    record = run_cure(None, cure)
    assert record["cured"] is True and record["judged_by"] == judges.beats_control.text
    assert record["curves"]["before"] == FLAT and len(record["curves"]["after"]) == 40


def _short_cure_ctx(planned, refute=240):
    from nandoctor.probes import ProbeContext
    from nandoctor.records import Evidence
    return ProbeContext(make_patient(), seconds=60.0, step_time=0.001, evidence=Evidence(),
                        planned_steps=planned, refute_steps=refute)


def _failing_protocol(patient, steps, deadline, lr):
    return arm(FLAT)   # the treated arm stays as flat as the control: the cure did not cure


@pytest.mark.parametrize("follows_plan", [True, False])
def test_a_cure_that_fails_short_of_the_refutation_steps_is_inconclusive_not_refuted(follows_plan):
    from nandoctor.records import Finding
    cure = Cure("a cure", train=_failing_protocol, control=arm(FLAT), follows_plan=follows_plan)
    record = run_cure(_short_cure_ctx(planned=60), cure)
    finding = Finding(code="x", severity="critical", confidence=0.5, title="x", evidence={}, fix="",
                      treatment=record)
    if follows_plan:   # 60 planned steps of the 240 a refutation is defined at: not proof of anything yet
        assert record["judged"] is False and record["short_of_refutation"]["refutation_steps"] == 240
        assert "--budget" in record["note"] and finding.status == "inconclusive"
    else:              # its steps are fixed by the evidence (the step a schedule broke at): refuted
        assert "judged" not in record and finding.status == "refuted"


def test_a_cure_that_fails_at_the_refutation_steps_refutes_and_one_that_cures_early_confirms():
    from nandoctor.records import Finding
    refuted = run_cure(_short_cure_ctx(planned=240), Cure("a cure", train=_failing_protocol, control=arm(FLAT)))
    assert Finding(code="x", severity="critical", confidence=0.5, title="x", evidence={}, fix="",
                   treatment=refuted).status == "refuted"
    cured = run_cure(_short_cure_ctx(planned=30), Cure("a cure", train=lambda *a: arm(falling()), control=arm(FLAT)))
    assert cured["cured"] is True and "short_of_refutation" not in cured


@pytest.mark.parametrize("probe_steps", [40, 300])
def test_the_treated_arm_trains_as_long_as_the_overfit_run_it_is_compared_with(probe_steps):
    """The overfit probe's run is the control: the treated copy trains exactly its steps, whether the plan gave
    the probe more steps than the cures (a quiet machine: 300 against 240) or fewer."""
    from nandoctor.probes import ProbeContext
    from nandoctor.records import Evidence, ProbeResult
    control = Run(losses=falling(1.1, 0.3, probe_steps), stopped="done")
    evidence = Evidence({"overfit": ProbeResult(name="overfit", metrics={"planned_steps": probe_steps,
                                                                          "accuracy": 0.9},
                                                data={"run": control})})
    ctx = ProbeContext(make_patient(), seconds=60.0, step_time=0.001, evidence=evidence, planned_steps=240,
                       refute_steps=240)
    record = run_cure(ctx, Cure("a cure", hooks=lambda model, optimizer: None))
    assert record["before"]["steps"] == probe_steps and record["after"]["steps"] == probe_steps


def stream_arm(end, at_init=1.1, drop=None, **kw):
    return arm(falling(at_init, end), end_loss=end, end_loss_at_init=at_init,
               relative_drop=drop if drop is not None else 1 - end / at_init, **kw)


def test_ends_lower_by_wants_a_gap_that_matters_not_a_ratio_of_two_losses_near_zero():
    judge = judges.ends_lower_by(0.9, 0.1)
    assert not judge(stream_arm(3e-4), stream_arm(1e-5))       # both memorised the stream: the ratio is noise
    assert judge(stream_arm(0.9), stream_arm(0.3))             # a gap of half the untrained loss
    assert not judge(stream_arm(0.9), stream_arm(0.85))        # 0.94x: not lower enough
    broke = arm([1.1, float("nan")], stopped="nonfinite", end_loss=None, end_loss_at_init=1.1)
    assert judge(broke, stream_arm(0.3))                       # the untreated run broke, the treated one trains
    # a sentinel -10000 makes the untrained loss 50; repaired it is 1.1: the margin is read on the lower one
    assert judge(stream_arm(0.97, at_init=50.5), stream_arm(0.47, at_init=1.13))
    assert not judge(stream_arm(0.97, at_init=50.5), stream_arm(0.9, at_init=1.13))


def test_the_lr_matched_protocol_trains_each_arm_at_the_lr_its_own_sweep_suggests():
    from nandoctor.treatments import lr_matched_run
    raw, standard = make_patient(data=blobs(scale=300.0)), make_patient()
    a, b = lr_matched_run(raw, 60, None, None), lr_matched_run(standard, 60, None, None)
    for out in (a, b):
        assert out.measures["lr_from"].startswith("its own LR sweep") and out.measures["end_loss"] is not None
    assert a.measures["lr"] < b.measures["lr"]    # inputs 300x larger: a lower LR of their own


def test_a_cure_whose_alternative_the_budget_left_out_is_not_refuted():
    from nandoctor.treatments import treat
    ctx = _short_cure_ctx(planned=240)
    first = Cure("at the configured LR", train=_failing_protocol, control=arm(FLAT))
    second = Cure("each arm at its own LR", train=_failing_protocol, control=arm(FLAT))
    ctx.seconds = 0.0   # the first one spent the budget
    record, cure = treat(ctx, [first, second])
    assert cure is None and record["judged"] is False and record["untried"] == ["each arm at its own LR"]
    ctx.seconds = 60.0  # with the time for both, both fail: refuted
    record, _ = treat(ctx, [first, second])
    assert "judged" not in record and [a["tried"] for a in record["attempts"]] == [first.tried, second.tried]


def test_the_cured_copy_is_the_variant_with_the_cure_s_lr():
    p = make_patient(lr=1.0)
    cured = cured_patient(p, Cure("lower LR", lr=0.01))
    assert cured.lr == pytest.approx(0.01) and p.lr == 1.0   # a copy; the patient is untouched
    assert cured_patient(p, Cure("clip", hooks=lambda m, o: None)) is None


def test_a_loss_measured_beside_the_training_must_halve_on_the_treated_arm():
    lower = judges.measure_lower("others_loss", 0.5)
    assert lower(arm(falling(), others_loss=3.4), arm(falling(), others_loss=0.03))
    assert not lower(arm(falling(), others_loss=0.11), arm(falling(), others_loss=0.06))   # 0.55x: not half
    assert not lower(arm(falling(), others_loss=3.4), arm(falling(), others_loss=None))     # unmeasured: no cure
    assert lower(arm(falling(), others_loss=math.nan), arm(falling(), others_loss=0.5))    # finite where it was not
    assert not lower(arm(falling(), others_loss=3.4), arm([1.0, -0.5], others_loss=0.01))  # below zero: never


def test_a_reset_init_trains_no_worse_when_it_classifies_the_batch_as_well():
    """A model with oversized weights drives one batch's loss lower while classifying fewer of it right: the
    default init is no worse for that (the acoustic model drawn from normal(0, 1))."""
    big = arm(falling(3.9, 0.45) + [0.45] * 20, accuracy=0.81)
    reset = arm(falling(1.1, 0.58) + [0.58] * 20, accuracy=0.94)
    no_worse = judges.trains_no_worse(1.05)
    assert not judges.not_worse(1.05)(big, reset)        # by the loss alone it looks worse
    assert no_worse(big, reset)                          # it classifies more of the batch right
    assert not no_worse(big, arm(falling(1.1, 0.58) + [0.58] * 20, accuracy=0.7))   # worse on both
    assert no_worse(arm(falling(3.9, 0.001), accuracy=1.0), arm(falling(1.1, 0.004), accuracy=1.0))  # both memorised


def test_no_worse_between_two_runs_that_stay_where_they_started_is_no_verdict():
    """Dropping a year column that the only model cannot use anyway: both flat, "no worse" says nothing."""
    judge = judges.when_either_trains(judges.not_worse(1.05))
    assert judge(arm(FLAT), arm(FLAT)) is None
    assert judge(arm(falling()), arm(falling())) is True            # both train, the treated no worse
    assert judge(arm(falling(1.1, 0.01)), arm(falling(1.1, 0.6))) is False  # the column helped: refuted


def test_a_stalled_init_is_cured_by_a_run_that_trains_at_all():
    from nandoctor.diagnoses.init import untreated_stalls
    judge = judges.both(judges.fixes(judges.trains), untreated_stalls(0.1))
    assert judge(arm(FLAT), arm(falling(1.1, 0.7)))                  # 36% off where the configured init did not move
    assert not judge(arm(falling(1.1, 0.95)), arm(falling(1.1, 0.7)))   # it moved 14%: a slow init, not a stalled one

"""Ranking: causes above the symptoms they explain, confirmed above suspected."""

from nandoctor.ranking import rank, verdict
from nandoctor.records import Finding


def f(code, severity="warning", confidence=0.8, role="cause", explains=(), treatment=None):
    return Finding(code=code, severity=severity, confidence=confidence, title=code, evidence={}, fix="",
                   role=role, explains=explains, treatment=treatment)


def test_cause_outranks_the_symptom_it_explains_even_at_lower_severity():
    symptom = f("exploding", severity="critical", confidence=0.95, role="symptom")
    cause = f("lr-high", severity="warning", confidence=0.6, explains=("exploding",))
    assert [x.code for x in rank([symptom, cause])] == ["lr-high", "exploding"]


def test_confirmed_outranks_suspected():
    guess = f("a", confidence=0.8)
    cured = f("b", confidence=0.8, treatment={"cured": True})
    assert rank([guess, cured])[0].code == "b"


def test_severity_dominates_unrelated_findings():
    assert rank([f("w", "warning", 1.0), f("c", "critical", 0.5)])[0].code == "c"


def test_verdict():
    assert verdict([]) == "healthy"
    assert verdict([f("i", "info")]) == "healthy"
    assert verdict([f("w", "warning"), f("i", "info")]) == "warning"
    assert verdict([f("c", "critical")]) == "critical"


def test_catch_all_symptoms_go_below_specific_findings():
    catch_all = f("cannot-overfit-batch", severity="critical", confidence=0.95, role="symptom")
    catch_all.generic = True
    specific = f("dead-relu", severity="warning", confidence=0.5, role="symptom")
    assert [x.code for x in rank([catch_all, specific])] == ["dead-relu", "cannot-overfit-batch"]
    assert rank([catch_all, f("i", "info")])[0].code == "cannot-overfit-batch"


# --- differential diagnosis: what the cures showed comes before the priority ----------------------
CURED, FAILED = {"cured": True}, {"cured": False}


def test_a_confirmed_warning_outranks_a_suspected_critical():
    guess = f("outlier-sample", severity="critical", confidence=0.9)
    proven = f("data-unnormalized", severity="warning", confidence=0.6, treatment=CURED)
    assert [x.code for x in rank([guess, proven])] == ["data-unnormalized", "outlier-sample"]


def test_a_refuted_cause_drops_below_the_suspected_ones_and_keeps_its_status():
    refuted = f("exploding-gradients", severity="critical", confidence=0.95, treatment=FAILED)
    suspected = f("lr-too-high", severity="warning", confidence=0.5)
    ranked = rank([refuted, suspected])
    assert [x.code for x in ranked] == ["lr-too-high", "exploding-gradients"]
    assert ranked[1].status == "refuted" and ranked[0].status == "suspected"


def test_when_a_diverging_run_has_several_candidates_the_one_whose_cure_trains_wins():
    candidates = [f("lr-too-high", "critical", 0.9, treatment=FAILED),
                  f("sample-loss-outlier", "critical", 0.8, treatment=FAILED),
                  f("data-unnormalized", "warning", 0.6, treatment=CURED),
                  f("loss-reduction-sum", "warning", 0.7)]
    assert [x.code for x in rank(candidates)] == ["data-unnormalized", "loss-reduction-sum", "lr-too-high",
                                                  "sample-loss-outlier"]


def test_info_findings_stay_last_whatever_their_cure_showed():
    note = f("class-imbalance", severity="info", confidence=1.0, treatment=CURED)
    refuted = f("dead-relu", severity="warning", confidence=0.3, treatment=FAILED)
    assert rank([note, refuted])[-1].code == "class-imbalance"


def test_symptoms_fold_under_the_cause_that_explains_them():
    cause = f("nll-on-raw-logits", "critical", 0.9, explains=("cannot-overfit-batch",), treatment=CURED)
    symptom = f("cannot-overfit-batch", "critical", 0.95, role="symptom")
    other = f("class-imbalance", "warning", 0.7)
    ranked = rank([symptom, other, cause])
    assert ranked[0].code == "nll-on-raw-logits" and ranked[0].explained_by is None
    assert {x.code: x.explained_by for x in ranked} == {"nll-on-raw-logits": None, "cannot-overfit-batch":
                                                        "nll-on-raw-logits", "class-imbalance": None}


def test_a_refuted_cause_neither_jumps_over_nor_folds_its_symptoms():
    cause = f("lr-too-high", "warning", 0.6, explains=("exploding-gradients",), treatment=FAILED)
    symptom = f("exploding-gradients", "critical", 0.9, role="symptom")
    ranked = rank([cause, symptom])
    assert [x.code for x in ranked] == ["exploding-gradients", "lr-too-high"]
    assert all(x.explained_by is None for x in ranked)


def test_a_suspected_cause_does_not_jump_over_a_confirmed_symptom():
    cause = f("bad-init", "critical", 0.9, explains=("exploding-gradients",))
    symptom = f("exploding-gradients", "warning", 0.6, role="symptom", treatment=CURED)
    assert rank([cause, symptom])[0].code == "exploding-gradients"


def test_a_finding_gone_once_the_top_cause_is_cured_is_folded_under_it():
    top = f("nll-on-raw-logits", "critical", 0.9, treatment=CURED)
    gone = f("dead-relu", "warning", 0.7)
    gone.gone_after = "nll-on-raw-logits"
    after = f("lr-too-low", "critical", 0.95, treatment=CURED)
    after.after_cure = "nll-on-raw-logits"
    ranked = rank([gone, after, top])
    assert [x.code for x in ranked] == ["nll-on-raw-logits", "lr-too-low", "dead-relu"]
    assert ranked[2].explained_by == "nll-on-raw-logits" and ranked[1].explained_by is None


def test_an_unjudged_cure_leaves_the_finding_inconclusive_not_refuted():
    cut = f("lr-too-low", "critical", 0.9, treatment={"cured": False, "judged": False})
    assert cut.status == "inconclusive" and cut.confirmed is None
    assert cut.to_json()["status"] == "inconclusive"


def test_an_observed_cause_ranks_with_the_confirmed_and_leads_what_it_explains():
    # a layer rebuilt in forward() is seen in the set-up; an LR "confirmed" by a faster race is its symptom
    layer = f("unregistered-module", "critical", 0.9, explains=("lr-too-low",))
    layer.observed = True
    lr = f("lr-too-low", "critical", 0.95, treatment=CURED)
    ranked = rank([lr, layer])
    assert [x.code for x in ranked] == ["unregistered-module", "lr-too-low"]
    assert ranked[1].explained_by == "unregistered-module"
    layer.treatment = FAILED   # its cure refuted it: it drops with the refuted
    assert rank([lr, layer])[0].code == "lr-too-low"


def test_a_symptom_still_found_after_the_cure_is_not_folded_under_it():
    cause = f("nll-on-raw-logits", "critical", 0.9, explains=("cannot-overfit-batch",),
              treatment={"cured": True, "remaining": ["cannot-overfit-batch"]})
    symptom = f("cannot-overfit-batch", "critical", 0.95, role="symptom")
    assert rank([symptom, cause])[1].explained_by is None


def test_an_observed_defect_whose_cure_is_refuted_ranks_with_the_suspected_not_below_them():
    """Six parameters missing from the optimizer are there whatever a one-batch cure shows; refuted, the finding
    still outranks a suspected warning (and a catch-all symptom), not a confirmed finding."""
    missing = f("params-not-in-optimizer", severity="critical", confidence=0.9, treatment={"cured": False})
    missing.observed = True
    guess = f("dead-relu", severity="warning", confidence=0.9)
    catch_all = f("cannot-overfit-batch", severity="warning", confidence=0.9, role="symptom")
    catch_all.generic = True
    cured = f("numerical-hazard", severity="warning", confidence=0.6, treatment={"cured": True})
    assert [x.code for x in rank([catch_all, guess, missing, cured])] == \
        ["numerical-hazard", "params-not-in-optimizer", "dead-relu", "cannot-overfit-batch"]
    plain = f("lr-too-low", severity="critical", confidence=0.9, treatment={"cured": False})
    assert [x.code for x in rank([plain, guess])] == ["dead-relu", "lr-too-low"]


def test_a_check_on_the_cured_copy_cut_short_by_the_budget_says_so(monkeypatch):
    """The battery run again on the cured copy, its training probes unable to reach their minimum (planned as
    if a step took a million times longer): the top cure's record says it was checked only in part."""
    import dataclasses

    from torch import nn

    from nandoctor import pipeline
    from patients import battery, make_patient

    real = dataclasses.replace

    def slow_sub(obj, **changes):
        if isinstance(obj, pipeline.Options) and changes.get("compose") is False:
            changes["step_time_scale"] = 1e6   # any machine: no training probe reaches its minimum
        return real(obj, **changes)
    monkeypatch.setattr(pipeline.dataclasses, "replace", slow_sub)
    report = battery(make_patient(loss=nn.NLLLoss()), budget=30.0)
    top = report.findings[0]
    assert top.code == "nll-on-raw-logits" and top.confirmed
    note = top.treatment.get("remaining_note") or ""
    assert note.startswith("partly checked: ") and "lr_sweep" in note, top.treatment

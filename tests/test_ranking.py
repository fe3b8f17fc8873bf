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

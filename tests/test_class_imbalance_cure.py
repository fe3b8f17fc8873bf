"""class-imbalance judged by behaviour: a class-weighted loss against the loss as configured, both trained on the data
stream from the same init and scored along the run on the same stratified batch (the ``class_recall`` protocol).

A model that still predicts (almost) none of the rare class at the end of the run, where the weighted one has learnt it,
confirms the finding; an imbalance whose rare class the user's training learns within the steps, even late, is
refuted, and below the histogram ratio (10) it stays an ``info`` note."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from patients import battery, make_patient

from nandoctor import diagnoses
from nandoctor.probes.training import Run
from nandoctor.records import Evidence, ProbeResult
from nandoctor.treatments import Outcome, judges

BUDGET = 10.0


def teacher(n, shares, seed, features=10):
    """Standard-normal features, labels from a random two-layer teacher whose scores are shifted until each class
    holds its share: a learnable task whose rare class is a small region of the inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w1, w2 = torch.randn(features, 16, generator=g), torch.randn(16, len(shares), generator=g)
    scores = torch.tanh(x @ w1) @ w2
    for _ in range(200):
        share = torch.bincount(scores.argmax(1), minlength=len(shares)).float() / n
        scores += 0.5 * (torch.tensor(shares) - share)
    return TensorDataset(x, scores.argmax(1))


def net(classes):
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes))


def patient(shares, seed, lr=1e-3):
    """Adam, batches of 32, a two-hidden-layer MLP: the field zoo's tabular set-up."""
    return make_patient(model=lambda: net(len(shares)), data=teacher(480, shares, seed), lr=lr)


def imbalance(report):
    return next(f for f in report.findings if f.code == "class-imbalance")


def test_a_6_to_1_set_up_that_still_predicts_the_majority_is_confirmed_by_a_weighted_loss():
    """At a careful LR (Adam 2e-4) the loss as configured still predicts almost none of the rare class at the end
    of the cure's run; weighted, the rare class is learnt."""
    report = battery(patient([0.86, 0.14], seed=30, lr=2e-4), budget=BUDGET)
    top = report.findings[0]
    assert top.code == "class-imbalance", [(f.code, f.severity, f.status) for f in report.findings]
    assert top.status == "confirmed" and top.severity == "warning", top.treatment
    t = top.treatment
    assert t["protocol"] == "class_recall" and t["tried"].startswith("CrossEntropyLoss(weight=")
    before, after = t["before"], t["after"]
    assert before["rare_class"] == after["rare_class"] == 1
    assert before["scored_batch"] == after["scored_batch"] >= 2 * before["scored_rare"] >= 2 * 32
    assert before["rare_recall_curve"][-1] <= 0.2 < 0.8 <= after["rare_recall_curve"][-1]
    assert after["balanced_accuracy_curve"][-1] - before["balanced_accuracy_curve"][-1] >= 0.1


def test_the_same_imbalance_learnt_within_the_steps_is_refuted():
    """At Adam's 1e-3 the same 6:1 set-up learns its rare class within the cure's steps: a note, refuted."""
    report = battery(patient([0.86, 0.14], seed=30), budget=BUDGET)
    found = imbalance(report)
    assert found.severity == "info" and found.status == "refuted", found.treatment
    assert found.treatment["before"]["rare_recall_curve"][-1] > 0.5


def test_a_healthy_3_to_1_set_up_gets_no_warning():
    report = battery(patient([0.75, 0.25], seed=30), budget=BUDGET)
    assert not [f.code for f in report.findings if f.severity == "critical"]
    found = imbalance(report)
    assert found.severity == "info" and found.evidence["candidate_only"], (found.severity, found.treatment)
    assert found.status == "refuted", found.treatment
    assert found.treatment["before"]["rare_recall_curve"][-1] > 0.33   # the user's training learnt the rare class


# --- the judge, on hand-built records ----------------------------------------------------------------------------
STEPS = [20, 40, 60, 80, 100, 120]


def arm(rare, others, rare_class=1, steps=STEPS, losses=(0.7, 0.5, 0.3), error=None):
    balanced = [(r + o) / 2 for r, o in zip(rare, others)]
    return Outcome(Run(losses=list(losses), error=error, stopped="error" if error else "done"),
                   measures={"rare_class": rare_class, "scored_batch": 128, "scored_rare": 64,
                             "check_steps": list(steps), "rare_recall_curve": list(rare),
                             "others_recall_curve": list(others), "balanced_accuracy_curve": balanced})


JUDGE = judges.rescues_rare_class()
MAJORITY = arm([0.0, 0.0, 0.0, 0.0, 0.05, 0.1], [1.0] * 6)   # predicts the majority to the end
WEIGHTED = arm([0.7, 0.9, 0.95, 0.95, 0.97, 0.97], [0.9, 0.93, 0.95, 0.97, 0.97, 0.98])


def test_the_judge_confirms_a_rare_class_still_ignored_at_the_end_where_the_weighted_run_learnt_it():
    assert JUDGE(MAJORITY, WEIGHTED) is True
    # "clearly below the others": recall 0.3 against 0.95 at the end is ignored too
    assert JUDGE(arm([0.0, 0.1, 0.2, 0.25, 0.3, 0.3], [0.95] * 6), WEIGHTED) is True


def test_the_judge_refutes_a_rare_class_learnt_within_the_steps_or_a_cure_that_does_not_help():
    late = arm([0.0, 0.0, 0.0, 0.1, 0.6, 0.9], [1.0, 1.0, 0.98, 0.97, 0.97, 0.97])
    assert JUDGE(late, WEIGHTED) is False             # ignored for 80 steps, learnt by the end: slow, not harmed
    assert JUDGE(MAJORITY, MAJORITY) is False          # both ignore it: the weighting does not help
    broken = arm([0.0] * 3, [1.0] * 3, steps=STEPS[:3], losses=(0.7, float("nan")))
    assert JUDGE(MAJORITY, broken) is False            # the treated run must be clean


def test_the_judge_abstains_without_a_comparable_scoring():
    unscored = Outcome(Run(losses=[0.7, 0.5]), measures={"rare_class": None})
    assert JUDGE(unscored, unscored) is None
    assert JUDGE(MAJORITY, arm([0.9] * 6, [0.9] * 6, rare_class=0)) is None   # not the same rare class
    crashed = arm([0.0] * 6, [1.0] * 6, error={"type": "RuntimeError", "message": "boom"})
    assert JUDGE(crashed, WEIGHTED) is None


# --- the candidate, on hand-built evidence -----------------------------------------------------------------------
def scan(hist, loss="CrossEntropyLoss", n_classes=2):
    targets = {"kind": "class", "shape": [], "integer_valued": True, "histogram": hist, "n_classes": n_classes,
               "loss": loss}
    return ProbeResult(name="data_scan", metrics={"targets": targets, "samples_scanned": sum(hist.values()),
                                                  "samples_total": sum(hist.values())})


def check(hist, facts=None, **kw):
    return diagnoses.get("class-imbalance").check(Evidence(data_scan=scan(hist, **kw), facts=facts or {}))


def test_below_the_ratio_only_a_loss_the_cure_can_weigh_raises_a_candidate():
    found = check({0: 400, 1: 80})
    assert found.evidence["candidate_only"] and found.evidence["ratio"] == pytest.approx(5.0)
    assert check({0: 400, 1: 80}, loss="MSELoss") is None       # no cure to try: nothing below the ratio
    assert check({0: 400, 1: 160}) is None                       # 2.5:1 is not a candidate
    assert check({0: 400, 1: 80}, facts={"loss_weighted": "weight"}) is None
    strong = check({0: 500, 1: 20}, facts={"loss_weighted": "pos_weight"})
    assert strong.severity == "info" and "candidate_only" not in strong.evidence


def test_the_weighted_copy_leaves_the_users_loss_alone():
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    weighted, how = diagnoses.get("class-imbalance").rebalanced_loss(loss, {0: 300, 1: 60}, 2, torch.device("cpu"))
    assert loss.weight is None and weighted.label_smoothing == 0.1
    assert weighted.weight.tolist() == pytest.approx([360 / 600, 360 / 120]) and how.startswith("weight=")
    bce, how = diagnoses.get("class-imbalance").rebalanced_loss(nn.BCEWithLogitsLoss(), {0: 300, 1: 60}, None,
                                                                torch.device("cpu"))
    assert bce.pos_weight.tolist() == [5.0] and how == "pos_weight=5"


def test_a_candidate_is_info_until_its_cure_confirms_it():
    """Below the ratio the finding is an ``info`` candidate whose cure the pipeline tries all the same: a warning
    only when the cure confirms it (not when it is refuted, cannot be judged, or is not tried)."""
    from types import SimpleNamespace
    p = patient([0.8, 0.2], seed=30)
    ev = Evidence(data_scan=scan({0: 384, 1: 96}))
    found = diagnoses.get("class-imbalance").check(ev)
    assert found.severity == "info" and found.evidence["candidate_only"]
    ctx = SimpleNamespace(patient=p, evidence=ev, planned_steps=None)
    (cure,) = diagnoses.get("class-imbalance").cures(ctx, found)
    assert (cure.severity, cure.refuted_severity, cure.train, cure.steps) == ("warning", "info", "class_recall", 120)
    assert cure.variant.loss_fn.weight.tolist() == pytest.approx([480 / 768, 480 / 192]) and p.loss_fn.weight is None

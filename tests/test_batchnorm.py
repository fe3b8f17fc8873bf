"""batchnorm-small-batch and train-eval-gap on tiny patients; healthy BatchNorm set-ups stay clean."""

import pytest
import torch
from torch.utils.data import TensorDataset

from patients import battery, blobs, codes, make_patient
from sick_grads import SoftmaxInEval, bn_cnn, bn_mlp, images

ALL_MINE = ["overfit", "gradients", "init", "bn_freeze", "train_eval"]


def test_batchnorm_with_a_batch_of_two_ranks_first_and_freezing_cures_it(out):
    patient = make_patient(model=bn_mlp, data=blobs(n=512), lr=1e-3, batch_size=2)
    report = battery(patient, probes=["overfit", "bn_freeze", "train_eval"], budget=15, out=out)
    top = report.findings[0]
    assert top.code == "batchnorm-small-batch"
    assert top.severity == "critical" and top.evidence["batch_size"] == 2
    assert top.treatment["cured"] is True
    assert top.treatment["after"]["eval_loss"] < top.treatment["before"]["eval_loss"]
    assert (out / "plots" / "bn_freeze.png").exists()


def class_sorted(n=384, classes=3):
    """blobs whose rows are sorted by class (as written by a GROUP BY)."""
    x, y = blobs(n=n, classes=classes).tensors
    order = torch.argsort(y, stable=True)
    return TensorDataset(x[order], y[order])


def test_batchnorm_on_one_class_batches_ranks_first_and_shuffling_cures_it():
    patient = make_patient(model=bn_mlp, data=class_sorted(), lr=1e-3, batch_size=32, shuffle=False)
    report = battery(patient, probes=["overfit", "bn_freeze", "train_eval"], budget=15)
    top = report.findings[0]
    assert top.code == "batchnorm-small-batch" and top.status == "confirmed", [(f.code, f.title) for f in report.findings]
    assert top.evidence["one_class_batches"] and not top.evidence["small_batch"]
    assert top.evidence["stream_majority_share"] >= 0.9 and top.evidence["random_majority_share"] <= 0.75
    assert top.treatment["tried"].startswith("trained on the same data shuffled")
    assert top.treatment["after"]["held_out_loss"] < 0.5 * top.treatment["before"]["held_out_loss"]
    assert "shuffle=True" in top.fix


def test_the_same_rows_shuffled_raise_nothing_about_batchnorm():
    patient = make_patient(model=bn_mlp, data=class_sorted(), lr=1e-3, batch_size=32, shuffle=True)
    report = battery(patient, probes=["overfit", "bn_freeze", "train_eval"], budget=15)
    assert "batchnorm-small-batch" not in codes(report)
    assert report.probes["bn_freeze"].metrics["stream_majority_share"] < 0.75


def test_model_that_switches_to_softmax_in_eval_has_a_train_eval_gap():
    report = battery(make_patient(model=SoftmaxInEval, lr=1e-2), probes=["overfit", "train_eval"], budget=10)
    assert codes(report)[0] == "train-eval-gap"
    ev = report.findings[0].evidence
    assert ev["eval_mode_loss"] > 3 * ev["train_mode_loss"]


@pytest.mark.parametrize("model, data, batch_size", [(bn_mlp, blobs(n=512), 16), (bn_mlp, blobs(n=512), 32),
                                                     (bn_cnn, images(), 16)])
def test_healthy_batchnorm_setups_get_no_critical_finding(model, data, batch_size):
    patient = make_patient(model=model, data=data, lr=1e-3, batch_size=batch_size)
    report = battery(patient, probes=ALL_MINE, budget=10)
    assert not [f for f in report.findings if f.severity == "critical"], [(f.code, f.title) for f in report.findings]
    assert "batchnorm-small-batch" not in codes(report)


def test_bn_probe_is_skipped_without_batchnorm():
    report = battery(make_patient(lr=1e-3), probes=["bn_freeze", "train_eval"], budget=10)
    assert report.probes["bn_freeze"].status == "skipped"
    assert report.probes["train_eval"].status == "skipped"
    assert report.verdict == "healthy"


def test_train_eval_probe_scores_on_copies():
    patient = make_patient(model=bn_mlp, data=blobs(n=512), lr=1e-3, batch_size=2)
    report = battery(patient, probes=["bn_freeze", "train_eval"], budget=10)
    model = report.evidence["bn_freeze"].data["models"]["as configured"]
    stats = model[1].running_mean.clone()
    battery(patient, probes=["bn_freeze", "train_eval"], budget=10)
    assert torch.equal(model[1].running_mean, stats)


def _train_eval_evidence(**metrics):
    from nandoctor.probes.train_eval import TrainEvalMetrics
    from nandoctor.records import Evidence, ProbeResult
    base = {"train_mode_loss": 0.2, "train_mode_std": 0.01, "eval_mode_loss": 2.5, "initial_loss": 1.1,
            "trained_steps": 10, "batch_size": 16, "mode_layers": ["BatchNorm2d"]}
    return Evidence({"train_eval": ProbeResult(name="train_eval", metrics=TrainEvalMetrics(**{**base, **metrics}))})


def test_a_gap_that_re_estimated_batchnorm_statistics_close_is_lag_not_a_fault():
    from nandoctor.diagnoses.batchnorm import TrainEvalGap
    diag = TrainEvalGap()
    assert diag.check(_train_eval_evidence()) is not None                       # no re-estimate: a gap
    assert diag.check(_train_eval_evidence(eval_mode_loss_recalibrated=0.25)) is None   # the lag, closed
    still = diag.check(_train_eval_evidence(eval_mode_loss_recalibrated=2.4))   # the model itself differs
    assert still is not None and still.evidence["eval_mode_loss_recalibrated"] == 2.4


def test_train_eval_probe_re_estimates_batchnorm_statistics_on_a_copy():
    patient = make_patient(model=bn_cnn, data=images(), batch_size=16)
    report = battery(patient, probes=["train_eval"], budget=15)
    m = report.probes["train_eval"].metrics
    assert m["recalibration_batches"] and m["recalibration_batches"] >= 1
    assert m["eval_mode_loss_recalibrated"] is not None and m["eval_mode_loss_recalibrated"] > 0



def test_a_gap_kept_by_a_low_momentum_is_a_fault_though_re_estimating_closes_it():
    """Momentum 0.001 (a bn_decay schedule run down, as in a PointNet port) leaves the running statistics ~90%
    at their initial 0/1 after a hundred steps: re-estimated they fit, but training never gets them there. The
    field zoo's PointNet (tests/test_field_zoo.py) is confirmed by the default momentum."""
    from nandoctor.diagnoses.batchnorm import TrainEvalGap
    diag = TrainEvalGap()
    stale = diag.check(_train_eval_evidence(eval_mode_loss_recalibrated=0.25, bn_momentum=0.001, stats_memory=0.9))
    assert stale is not None and stale.evidence["stale_running_stats"] and "momentum 0.001" in stale.title
    lag = diag.check(_train_eval_evidence(eval_mode_loss_recalibrated=0.25, bn_momentum=0.1, stats_memory=1e-5))
    assert lag is None   # the default momentum forgets its start: the gap was lag

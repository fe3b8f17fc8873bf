"""The overfit-one-batch probe and cannot-overfit-batch, on tiny patients."""

import torch
from torch import nn

from patients import battery, codes, make_patient, mlp


def test_healthy_classifier_memorises_and_is_healthy():
    report = battery(make_patient(), probes=["overfit"])
    assert report.probes["overfit"].metrics["memorised"] is True
    assert report.verdict == "healthy"
    assert not [f for f in report.findings if f.severity == "critical"]


def frozen_mlp():
    model = mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    model[2].bias.requires_grad_(True)  # an optimizer needs at least one parameter
    return model


def test_frozen_model_cannot_overfit_and_ranks_first():
    report = battery(make_patient(model=frozen_mlp), probes=["overfit"])
    assert codes(report)[0] == "cannot-overfit-batch"
    top = report.findings[0]
    assert top.evidence["relative_drop"] < 0.9
    assert top.evidence["steps"] >= 30

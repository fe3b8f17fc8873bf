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


class Exploder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        return self.fc(x) * 1e30  # overflows to inf within a few steps


def test_nonfinite_loss_is_loss_nonfinite_not_cannot_overfit():
    report = battery(make_patient(model=Exploder, optimizer=torch.optim.SGD, lr=1e10), probes=["overfit"])
    assert "loss-nonfinite" in codes(report)
    assert "cannot-overfit-batch" not in codes(report)
    nonfinite = next(f for f in report.findings if f.code == "loss-nonfinite")
    assert nonfinite.evidence["nonfinite_step"] >= 0 and nonfinite.severity == "critical"


def test_lazy_modules_are_diagnosed_not_crashed():
    report = battery(make_patient(model=lambda: nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 3))),
                     probes=["overfit"])
    assert report.probes["overfit"].status == "ok"
    assert report.verdict == "healthy"

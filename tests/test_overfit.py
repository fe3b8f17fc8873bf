"""The overfit-one-batch probe and cannot-overfit-batch, on tiny patients."""

import pytest
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


# --- masks: memorised means the pixels are classified right, each class weighted alike ---------------
def test_balanced_accuracy_weighs_the_rare_class_alike():
    from nandoctor.probes.overfit import balanced_accuracy
    actual = torch.zeros(100, dtype=torch.bool)
    actual[:8] = True                                     # 8% foreground
    assert balanced_accuracy(torch.zeros(100, dtype=torch.bool), actual) == pytest.approx(0.5)
    assert balanced_accuracy(actual.clone(), actual) == pytest.approx(1.0)
    half = actual.clone()
    half[:4] = False
    assert balanced_accuracy(half, actual) == pytest.approx(0.75)


def test_a_mask_batch_is_scored_by_its_pixels_under_bce_with_logits():
    from nandoctor.patient import Patient
    from nandoctor.probes.overfit import batch_accuracy
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    masks = (x > 1.0).float()                             # a sparse mask the model can read off its input
    model = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(10.0)
        model.bias.fill_(-10.0)                          # score 10 (x - 1): positive exactly on the mask
    data = torch.utils.data.TensorDataset(x, masks)
    patient = Patient.from_objects(lambda: model, data, nn.BCEWithLogitsLoss(), torch.optim.Adam, lr=1e-3)
    assert batch_accuracy(patient, model, (x, masks)) == pytest.approx(1.0)
    with torch.no_grad():
        model.bias.fill_(-1000.0)                         # everything called background
    assert batch_accuracy(patient, model, (x, masks)) == pytest.approx(0.5)
    soft = torch.utils.data.TensorDataset(x, masks * 0.7)  # soft targets: not a binary decision
    assert batch_accuracy(Patient.from_objects(lambda: model, soft, nn.BCEWithLogitsLoss(), torch.optim.Adam,
                                               lr=1e-3), model, (x, masks * 0.7)) is None

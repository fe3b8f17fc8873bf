"""The overfit-one-batch probe and cannot-overfit-batch, on tiny patients."""

import pytest
import torch
from torch import nn

from patients import battery, blobs, codes, make_patient, mlp


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


# --- a one-unit squeeze: the capacity test widens it -------------------------------------------------------
def squeezed(classes=12):
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid(), nn.Linear(1, classes))


class Gated(nn.Module):
    """A one-unit gate that scales the features (attention pooling, gating): no squeeze, nothing reads it."""

    def __init__(self):
        super().__init__()
        self.body, self.gate, self.head = nn.Linear(10, 32), nn.Linear(32, 1), nn.Linear(32, 12)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.head(h * torch.sigmoid(self.gate(h)))


@pytest.mark.parametrize("factory,expected", [
    (squeezed, {"layer": "2", "units": 1, "reader": "4", "widened_to": 12}),
    (lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1)), None),   # a regression output
    (Gated, None),
    (lambda: nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 2), nn.Linear(2, 12)), None),  # not 4x narrower
])
def test_a_bottleneck_is_a_narrow_hidden_linear_read_by_a_wider_one(factory, expected):
    from nandoctor.diagnoses.overfit import bottleneck
    from nandoctor.probes.instrument import Recorder
    model = factory()
    rec = Recorder(model)
    model(torch.randn(4, 10))
    rec.detach()
    found = bottleneck(rec)
    assert (found is None) == (expected is None), found
    if expected is not None:
        assert {k: found[k] for k in expected} == expected


def test_a_one_unit_squeeze_is_confirmed_by_widening_it_and_ranks_first():
    report = battery(make_patient(model=squeezed, data=blobs(classes=12)), budget=30.0)
    top = report.findings[0]
    assert top.code == "cannot-overfit-batch" and top.confirmed, [(f.code, f.status) for f in report.findings]
    assert top.evidence["bottleneck"]["layer"] == "2" and "squeezed through 1 unit" in top.title
    assert top.role == "cause" and "widened" in top.treatment["tried"]
    assert "Widen `2`" in top.fix



def test_the_overfit_summary_says_memorised_or_how_far_it_got_in_numbers():
    from nandoctor.probes.overfit import OverfitMetrics, overfit_summary
    done = OverfitMetrics(steps=120, planned_steps=120, initial_loss=2.3, tail_loss=0.01, memorised=True)
    assert overfit_summary(done) == "memorised the batch: loss 2.3 -> 0.01 in 120 steps"
    short = OverfitMetrics(steps=60, planned_steps=60, initial_loss=2.3, tail_loss=1.2, memorised=False, late_drop=0.2)
    text = overfit_summary(short)
    assert text.startswith("not memorised: loss 2.3 -> 1.2 in 60 steps, 20% of it off in the second half")
    assert "60 of its 300 steps" in text and "--budget" in text
    full = OverfitMetrics(steps=300, planned_steps=300, initial_loss=2.3, tail_loss=2.3, memorised=False, late_drop=0.0)
    assert overfit_summary(full) == "not memorised: loss 2.3 -> 2.3 in 300 steps"
    assert overfit_summary(OverfitMetrics(initial_loss=2.3, tail_loss=None)) is None
    report = battery(make_patient(), probes=["overfit"])
    assert report.probes["overfit"].metrics["summary"].startswith("memorised the batch: loss ")


def test_a_weight_decay_that_holds_the_weights_at_zero_is_confirmed_by_training_without_it():
    """SGD with weight_decay=1: every step pulls the weights back to zero; without it the same batch memorises."""
    patient = make_patient(optimizer=torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1.0)
    report = battery(patient, probes=["structure", "overfit"], budget=30)
    found = report.findings[0]
    assert found.code == "cannot-overfit-batch" and found.status == "confirmed", codes(report)
    assert found.role == "cause" and found.title.startswith("weight_decay=1 pulls the weights")
    assert found.evidence["weight_decay"] == 1.0 and "weight_decay=0" in found.treatment["tried"]


@pytest.mark.parametrize("optimizer, decay", [(torch.optim.AdamW, 0.05), (torch.optim.SGD, 5e-4)])
def test_an_ordinary_weight_decay_gets_no_cure(optimizer, decay):
    """AdamW's decoupled 0.05 (DeiT's) and SGD's 5e-4 are ordinary: the capacity finding, if any, is not blamed on them."""
    from nandoctor.diagnoses import get
    from nandoctor.records import Finding

    class Ctx:
        patient = make_patient(optimizer=optimizer, lr=1e-3, weight_decay=decay)
        evidence = None

    finding = Finding(code="cannot-overfit-batch", severity="critical", title="The model cannot memorise",
                      confidence=0.8, evidence={}, fix="")
    assert get("cannot-overfit-batch").cures(Ctx(), finding) == []

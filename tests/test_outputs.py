"""The outputs probe and the output/loss pairing diagnoses, on tiny sick patients.

Each sick patient must get its code ranked FIRST; the healthy ones must get no
finding from these diagnoses (and nothing critical at all).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from patients import battery, blobs, codes, make_patient, mlp

PAIRING_CODES = {"nll-on-raw-logits", "double-softmax", "bounded-output-activation", "probability-loss-on-logits",
                 "loss-shape-mismatch", "initial-loss-mismatch", "loss-reduction-sum"}
pytestmark = pytest.mark.filterwarnings("ignore:Using a target size")  # the [N,1] vs [N] patients, on purpose

PROBES = ["outputs", "overfit"]
CURE_BUDGET = 20  # tests that check a cure leave the treatment its share even on a loaded machine


# --- data and losses ---------------------------------------------------------------------------------
def one_hot(classes=2):
    x, y = blobs(classes=classes).tensors
    return TensorDataset(x, F.one_hot(y, classes).float())


def binary(column=True):
    x, y = blobs(classes=2).tensors
    return TensorDataset(x, y.float().unsqueeze(1) if column else y.float())


def regression(scale=1.0, column=True):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=gen)
    y = (x @ torch.randn(10, 1, generator=gen)) * scale
    return TensorDataset(x, y if column else y.squeeze(1))


def keras_categorical_crossentropy(y_pred, y_true, eps=1e-7):
    """Keras' categorical cross-entropy: normalise the outputs to sum 1, clip, take the log."""
    y_pred = (y_pred / y_pred.sum(-1, keepdim=True)).clamp(eps, 1 - eps)
    return -(y_true * torch.log(y_pred)).sum(-1).mean()


def log_loss(outputs, targets):
    return -(targets * torch.log(outputs)).sum(1).mean()


def hand_written_bce(p, t):
    """No clamp: once a sigmoid saturates to exactly 1.0 in float32, log(1 - p) is -inf."""
    return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()


def squared_error(outputs, targets):
    return ((outputs - targets) ** 2).mean()


class Tagger(nn.Module):
    """A per-position classifier: [N, T, F] -> log-probabilities [N, T, C] (classes last)."""

    def __init__(self, features=10, classes=3):
        super().__init__()
        self.net = mlp(features, classes)

    def forward(self, x):
        return torch.log_softmax(self.net(x), dim=-1)


def sequences(n=128, steps=6, features=10, classes=3):
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(classes, features, generator=gen) * 2.0
    y = torch.randint(0, classes, (n, steps), generator=gen)
    return TensorDataset(centers[y] + torch.randn(n, steps, features, generator=gen), y)


def sequence_nll(outputs, targets):
    return F.nll_loss(outputs.permute(0, 2, 1), targets)  # NLL wants the classes in dim 1


def large_logits():
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(40.0)  # confidently wrong at init
    return model


def head(classes, last=None):
    return lambda: mlp(classes=classes, last=last)


# --- the patients ------------------------------------------------------------------------------------
HEALTHY = {
    "logits+cross-entropy": lambda: make_patient(),
    "logits+bce-with-logits": lambda: make_patient(model=head(1), data=binary(), loss=nn.BCEWithLogitsLoss()),
    "sigmoid+bce": lambda: make_patient(model=head(1, nn.Sigmoid()), data=binary(), loss=nn.BCELoss()),
    "linear+mse": lambda: make_patient(model=head(1), data=regression(), loss=nn.MSELoss()),
    "log-softmax+nll": lambda: make_patient(model=head(3, nn.LogSoftmax(dim=1)), loss=nn.NLLLoss()),
    "sequence log-softmax+nll": lambda: make_patient(model=Tagger, data=sequences(), loss=sequence_nll),
    "softmax+keras-cce": lambda: make_patient(model=head(2, nn.Softmax(dim=1)), data=one_hot(),
                                              loss=keras_categorical_crossentropy),
}

SICK = {
    "raw scores into NLLLoss": ("nll-on-raw-logits", lambda: make_patient(loss=nn.NLLLoss())),
    "softmax into NLLLoss": ("nll-on-raw-logits", lambda: make_patient(model=head(3, nn.Softmax(dim=1)),
                                                                       loss=nn.NLLLoss())),
    "log-softmax over the batch into NLLLoss": ("nll-on-raw-logits", lambda: make_patient(
        model=head(3, nn.LogSoftmax(dim=0)), loss=nn.NLLLoss())),
    "softmax over the batch into CrossEntropyLoss": ("double-softmax", lambda: make_patient(
        model=head(3, nn.Softmax(dim=0)))),
    "softmax into CrossEntropyLoss": ("double-softmax", lambda: make_patient(model=head(3, nn.Softmax(dim=1)))),
    "log-softmax into CrossEntropyLoss": ("double-softmax", lambda: make_patient(model=head(3, nn.LogSoftmax(dim=1)))),
    "sigmoid into BCEWithLogitsLoss": ("double-softmax", lambda: make_patient(
        model=head(1, nn.Sigmoid()), data=binary(), loss=nn.BCEWithLogitsLoss())),
    "ReLU output into keras cce": ("bounded-output-activation", lambda: make_patient(
        model=head(2, nn.ReLU()), data=one_hot(), loss=keras_categorical_crossentropy)),
    "ReLU output into CrossEntropyLoss": ("bounded-output-activation", lambda: make_patient(model=head(3, nn.ReLU()))),
    "sigmoid regression, targets beyond 1": ("bounded-output-activation", lambda: make_patient(
        model=head(1, nn.Sigmoid()), data=regression(5.0), loss=nn.MSELoss())),
    "raw scores into BCELoss (crash)": ("probability-loss-on-logits", lambda: make_patient(
        model=head(1), data=binary(), loss=nn.BCELoss())),
    "log of raw scores": ("probability-loss-on-logits", lambda: make_patient(
        model=head(2), data=one_hot(), loss=log_loss)),
    "unclamped log of saturating sigmoid": ("probability-loss-on-logits", lambda: make_patient(
        model=head(1, nn.Sigmoid()), data=binary(), loss=hand_written_bce, lr=0.05)),
    "[N,1] vs [N] in MSELoss": ("loss-shape-mismatch", lambda: make_patient(
        model=head(1), data=regression(column=False), loss=nn.MSELoss())),
    "[N,1] vs [N] in a custom loss": ("loss-shape-mismatch", lambda: make_patient(
        model=head(1), data=regression(column=False), loss=squared_error)),
    "[N,1] vs [N] in BCEWithLogitsLoss (crash)": ("loss-shape-mismatch", lambda: make_patient(
        model=head(1), data=binary(column=False), loss=nn.BCEWithLogitsLoss())),
    "large logits at init": ("initial-loss-mismatch", lambda: make_patient(model=large_logits)),
    "summed loss, Adam": ("loss-reduction-sum", lambda: make_patient(loss=nn.CrossEntropyLoss(reduction="sum"))),
    "summed loss, SGD diverges": ("loss-reduction-sum", lambda: make_patient(
        model=head(1), data=regression(), loss=nn.MSELoss(reduction="sum"), optimizer=torch.optim.SGD, lr=0.05)),
}


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_pairings_get_no_pairing_finding(name):
    report = battery(HEALTHY[name](), probes=PROBES, budget=6)
    assert not PAIRING_CODES & set(codes(report)), codes(report)
    assert not [f for f in report.findings if f.severity == "critical"]


@pytest.mark.parametrize("name", sorted(SICK))
def test_sick_pairing_ranks_first(name):
    code, make = SICK[name]
    report = battery(make(), probes=PROBES, budget=6)
    assert codes(report)[0] == code, [(f.code, f.severity, f.confidence) for f in report.findings]


def test_nll_on_raw_logits_is_confirmed_by_log_softmax(out):
    report = battery(make_patient(loss=nn.NLLLoss()), probes=PROBES, budget=CURE_BUDGET, out=out)
    top = report.findings[0]
    assert top.code == "nll-on-raw-logits" and top.severity == "critical"
    assert top.evidence["outputs_are"] == "unbounded"
    assert top.treatment["cured"] is True and "log-softmax" in top.treatment["tried"]
    assert top.treatment["after"]["final_loss"] >= 0
    assert (out / top.treatment["plot"]).exists()


def test_relu_keras_names_the_output_layer_and_the_log():
    report = battery(SICK["ReLU output into keras cce"][1](), probes=PROBES, budget=CURE_BUDGET)
    top = report.findings[0]
    assert top.evidence["reason"] == "relu-into-log"
    assert top.evidence["last_module"]["type"] == "ReLU"
    assert top.evidence["outputs_zero_share"] > 0
    assert top.treatment["cured"] is True and "Softmax" in top.treatment["tried"]


def test_bce_crash_is_mapped_without_the_outputs_probe():
    report = battery(SICK["raw scores into BCELoss (crash)"][1](), probes=["overfit"], budget=6)
    assert codes(report)[:2] == ["probability-loss-on-logits", "training-crashed"]
    assert "between 0 and 1" in report.findings[0].evidence["exception"]["message"]


def test_saturating_sigmoid_log_is_cured_by_clamping():
    report = battery(SICK["unclamped log of saturating sigmoid"][1](), probes=PROBES, budget=CURE_BUDGET)
    top = report.findings[0]
    assert top.evidence["reason"] == "log-of-zero" and top.evidence["overfit_nonfinite_step"] is not None
    assert top.treatment["cured"] is True and "clamped" in top.treatment["tried"]


def test_summed_loss_with_adam_is_a_warning_without_treatment():
    report = battery(SICK["summed loss, Adam"][1](), probes=PROBES, budget=6)
    top = report.findings[0]
    assert top.severity == "warning" and top.treatment is None
    assert all(1.6 <= r <= 2.5 for r in top.evidence["ratios"])


def squeezing_step(model, batch, loss_fn, optimizer):
    """A user's step that fixes the [N, 1] vs [N] shapes itself."""
    inputs, targets = batch
    optimizer.zero_grad()
    loss = loss_fn(model(inputs).squeeze(1), targets)
    loss.backward()
    optimizer.step()
    return loss


def test_a_train_step_that_reshapes_is_judged_by_what_its_loss_receives():
    def make(step):
        return make_patient(model=head(1), data=regression(column=False), loss=nn.MSELoss(), train_step=step)
    assert "loss-shape-mismatch" not in codes(battery(make(squeezing_step), probes=PROBES, budget=6))
    report = battery(make(None), probes=PROBES, budget=6)
    assert codes(report)[0] == "loss-shape-mismatch"


def test_outputs_probe_leaves_the_patient_untouched():
    patient = make_patient(loss=nn.NLLLoss())
    before = [p.clone() for p in patient.new_model().parameters()]
    report = battery(patient, probes=["outputs"], budget=4)
    m = report.probes["outputs"].metrics
    assert m["outputs"]["kind"] == "unbounded" and m["loss_trace"]["applies_to_raw"] == "nll_loss"
    assert all(torch.equal(a, b) for a, b in zip(before, patient.new_model().parameters()))


def test_raw_scores_into_nll_are_caught_by_the_overfit_probe_alone():
    report = battery(make_patient(loss=nn.NLLLoss()), probes=["overfit"], budget=6)
    top = report.findings[0]
    assert top.code == "nll-on-raw-logits" and top.evidence["overfit_min_loss"] < 0


def test_the_expected_loss_at_init_counts_the_loss_s_own_weights():
    """BCEWithLogitsLoss(pos_weight=9) on 10% positives: uniform outputs score ln 2 x mean(9 y + (1 - y)), not
    ln 2; a healthy model that starts there is no initial-loss mismatch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(640, 10, generator=gen)
    y = (torch.rand(640, 1, generator=gen) < 0.1).float()
    loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([9.0]))
    report = battery(make_patient(model=lambda: mlp(classes=1), data=TensorDataset(x, y), loss=loss),
                     probes=["outputs"], budget=10)
    m = report.probes["outputs"].metrics
    assert 1.2 * math.log(2) < m["expected_initial_loss"] < 9 * math.log(2)
    assert "initial-loss-mismatch" not in codes(report), [(f.code, f.title) for f in report.findings]


class RawHead(nn.Module):
    """makemore's MLP: embeddings, a tanh layer, and an output weight drawn from torch.randn as a bare Parameter
    (no module, no reset_parameters()): the first loss is several times ln(C)."""

    def __init__(self, features=10, hidden=32, classes=3):
        super().__init__()
        self.W1 = nn.Parameter(torch.randn(features, hidden) / features ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.W2 = nn.Parameter(torch.randn(hidden, classes) * 2.0)
        self.b2 = nn.Parameter(torch.randn(classes))

    def forward(self, x):
        return torch.tanh(x @ self.W1 + self.b1) @ self.W2 + self.b2


def test_raw_output_weights_are_redrawn_and_the_start_comes_down():
    from nandoctor.treatments.rewire import _output_weights
    torch.manual_seed(0)
    model = RawHead()
    w, b, fan_in = _output_weights(model, "", torch.randn(16, 10), 3)
    assert w is model.W2 and b is model.b2 and fan_in == 32   # found by what it does, not by its name
    report = battery(make_patient(model=RawHead), budget=10)
    found = next(f for f in report.findings if f.code == "initial-loss-mismatch")
    assert found.confirmed, found.treatment
    assert "raw output weights" in found.treatment["tried"]
    assert found.treatment["after"]["initial_loss"] < 2.0 * found.evidence["expected_initial_loss"]


class TagsLast(nn.Module):
    """Per-token scores [B, T, C] from a Linear, straight into CrossEntropyLoss; T == C so nothing raises."""

    def __init__(self, vocab=40, tags=12, transpose=False):
        super().__init__()
        self.embed, self.fc, self.transpose = nn.Embedding(vocab, 16), nn.Linear(16, tags), transpose

    def forward(self, x):
        out = self.fc(self.embed(x))
        return out.transpose(1, 2) if self.transpose else out


def tag_data(n=256, length=12, vocab=40, tags=12):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (n, length), generator=gen)
    return TensorDataset(x, torch.randint(0, tags, (vocab,), generator=gen)[x])


def test_classes_on_the_last_dim_into_cross_entropy_are_found_and_cured_by_moving_the_axis():
    report = battery(make_patient(model=TagsLast, data=tag_data()), budget=30)
    top = report.findings[0]
    assert top.code == "loss-shape-mismatch" and top.status == "confirmed", [(f.code, f.status) for f in report.findings]
    assert top.evidence["classes_read_on"] == 1 and top.evidence["classes_made_on"] == 2
    assert "class axis" in top.treatment["tried"]


def test_classes_moved_to_dim_1_before_cross_entropy_are_healthy():
    report = battery(make_patient(model=lambda: TagsLast(transpose=True), data=tag_data()), budget=30)
    assert "loss-shape-mismatch" not in [f.code for f in report.findings]

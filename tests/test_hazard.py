"""numerical-hazard: each pattern as a tiny sick patient, the healthy set-ups that must get none, the cure."""

import functools
import inspect
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from nandoctor.diagnoses import get
from nandoctor.probes import ProbeContext
from nandoctor.probes.hazards import trace_hazards
from nandoctor.records import Evidence, ProbeResult
from nandoctor.treatments.hazards import hazard_count, rewritten
from patients import battery, blobs, make_patient, mlp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import zoo  # noqa: E402

BUDGET = 30.0  # the whole battery with its cures, as tests/test_zoo.py runs it
PROBES = ["hazards"]


# --- sick losses, each with its hazard on one marked line ------------------------------------------
def bce_by_hand(out, y):
    p = torch.sigmoid(out)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # hazard


def nll_of_softmax(out, y):
    return F.nll_loss(torch.log(torch.softmax(out, 1)), y)  # hazard


def masked_mean(out, y):
    mask = (y != 2).float()
    per_sample = F.cross_entropy(out, y, reduction="none")
    return (per_sample * mask).sum() / mask.sum()  # hazard


def normalised_logits(out, y):
    return F.cross_entropy(out / out.norm(), y)  # hazard


def distance_to_onehot(out, y):
    target = F.one_hot(y, 3).float()
    return torch.sqrt(((out - target) ** 2).sum(1)).mean()  # hazard


def with_pairwise_spread(out, y):
    squared = ((out[:, None] - out[None]) ** 2).sum(-1)   # [B, B], 0 on the diagonal
    spread = torch.sqrt(squared)  # hazard: its backward is NaN there (inf * 0 through the square)
    return F.cross_entropy(out, y) + 0.01 * spread.mean()


def exp_of_scores(out, y):
    return (torch.exp(out) - out * F.one_hot(y, 3)).mean()  # hazard


def dice_of_hard_predictions(out, y):
    """A Dice loss on straight-through hard predictions: both sums are 0 for an empty target predicted empty."""
    p = torch.sigmoid(out)
    p = (p > 0.5).float() + p - p.detach()
    target = F.one_hot(y, 3).float()
    return (1 - 2 * (p * target).sum(1) / (p.sum(1) + target.sum(1))).mean()  # hazard


def hazard_line(fn) -> int:
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if "# hazard" in line)


def binary_data():
    x, y = blobs(classes=2).tensors
    return TensorDataset(x, y.float().unsqueeze(1))


SICK = {  # name: (patient, the kind, the op, the loss whose marked line it is)
    "log-of-sigmoid": (lambda: make_patient(model=lambda: mlp(classes=1), data=binary_data(), loss=bce_by_hand),
                       "log-of-probability", "torch.log", bce_by_hand),
    "log-of-softmax": (lambda: make_patient(loss=nll_of_softmax), "log-of-probability", "torch.log", nll_of_softmax),
    "divide-by-mask-sum": (lambda: make_patient(loss=masked_mean), "division-by-zeroable", "torch.Tensor.div",
                           masked_mean),
    "divide-by-norm": (lambda: make_patient(loss=normalised_logits), "division-by-zeroable", "torch.Tensor.div",
                       normalised_logits),
    "sqrt-distance": (lambda: make_patient(loss=distance_to_onehot), "sqrt-at-zero", "torch.sqrt", distance_to_onehot),
    "dice-sum-of-sums": (lambda: make_patient(loss=dice_of_hard_predictions), "division-by-zeroable",
                         "torch.Tensor.div", dice_of_hard_predictions),
}


# --- the probe: what one traced step finds ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SICK))
def test_each_pattern_is_found_with_its_op_and_line(name):
    factory, kind, op, loss = SICK[name]
    hazards = trace_hazards(factory()).hazards
    mine = [h for h in hazards if h["kind"] == kind]
    assert mine, f"{name}: {hazards}"
    h = mine[0]
    assert h["op"] == op
    assert h["where"].endswith(f"test_hazard.py:{hazard_line(loss)} in {loss.__name__}")
    assert h["in"] == "loss" and "# hazard" in h["code"]


def test_log_of_sigmoid_reports_both_terms_and_how_far_each_is_from_minus_inf():
    factory = SICK["log-of-sigmoid"][0]
    found = {h["pattern"]: h for h in trace_hazards(factory()).hazards}
    assert set(found) == {"log(sigmoid(x))", "log(1 - sigmoid(x))"}
    # 1 - p reaches 0 in float32 once a logit passes ~17; p itself only near -87
    assert 10 < found["log(1 - sigmoid(x))"]["margin"] < 17.3 < found["log(sigmoid(x))"]["margin"]
    assert 0 < found["log(1 - sigmoid(x))"]["arg_min"] < 1


def test_division_reports_the_divisor_and_whether_it_is_a_count():
    by_mask = trace_hazards(SICK["divide-by-mask-sum"][0]()).hazards[0]
    by_norm = trace_hazards(SICK["divide-by-norm"][0]()).hazards[0]
    assert by_mask["producer"] == "sum" and by_mask["divisor_is_count"] and by_mask["divisor_min"] > 0
    assert by_norm["producer"] == "norm" and not by_norm["divisor_is_count"]


def test_sqrt_counts_the_exact_zeros_of_its_argument():
    spread = trace_hazards(make_patient(loss=with_pairwise_spread)).hazards
    far = trace_hazards(SICK["sqrt-distance"][0]()).hazards
    assert spread[0]["kind"] == "sqrt-at-zero" and spread[0]["zeros"] == 32   # the diagonal of 32 x 32 distances
    assert far[0]["zeros"] == 0 and far[0]["arg_min"] > 0


def test_exp_reports_its_largest_argument_and_the_overflow_point():
    h = trace_hazards(make_patient(loss=exp_of_scores)).hazards[0]
    assert h["kind"] == "exp-unbounded" and h["op"] == "torch.exp"
    assert h["overflow_at"] == pytest.approx(88.72, abs=0.01) and h["margin"] == pytest.approx(h["overflow_at"] - h["arg_max"])


def scaled_logs(out, y, scales=(1.0,)):
    total = 0.0
    for scale in scales:
        total = total - (y * torch.log(torch.sigmoid(out * scale))).mean()  # hazard
    return total


def test_a_line_run_twice_is_one_hazard_reported_at_its_call_nearest_the_edge():
    data = binary_data()
    once = trace_hazards(make_patient(model=lambda: mlp(classes=1), data=data,
                                      loss=functools.partial(scaled_logs, scales=(1.0,)))).hazards
    twice = trace_hazards(make_patient(model=lambda: mlp(classes=1), data=data,
                                       loss=functools.partial(scaled_logs, scales=(1.0, 200.0)))).hazards
    assert len(once) == len(twice) == 1 and once[0]["count"] == 1 and twice[0]["count"] == 2
    assert twice[0]["margin"] < once[0]["margin"] - 5   # logits x200 are much nearer log's -inf


class HazardInModel(nn.Module):
    """log of a softmax inside forward(), fed to NLLLoss."""

    def __init__(self):
        super().__init__()
        self.body = mlp()

    def forward(self, x):
        return torch.log(self.body(x).softmax(dim=1))


def test_a_hazard_in_the_model_names_the_module_and_the_model():
    h = trace_hazards(make_patient(model=HazardInModel, loss=nn.NLLLoss())).hazards[0]
    assert h["in"] == "model" and h["module"] == "(model)" and h["producer"] == "softmax" and h["dim"] == 1


# --- healthy set-ups: nothing to report -------------------------------------------------------------------
def stable_log_softmax(out, y):
    z = out - out.max(1, keepdim=True).values
    return F.nll_loss(z - torch.log(torch.exp(z).sum(1, keepdim=True)), y)


def guarded(out, y):
    mask = (y != 2).float()
    p = torch.softmax(out, 1)
    dist = torch.sqrt(((out - F.one_hot(y, 3)) ** 2).sum(1) + 1e-12)
    return (F.nll_loss(torch.log(p.clamp(min=1e-7)), y, reduction="none") * mask).sum() / mask.sum().clamp(min=1) \
        + 0.01 * (dist / (out.norm() + 1e-8)).mean()


class RBFHead(nn.Module):
    """A Gaussian kernel to learned centres with a learned width: exp of minus a scaled squared distance."""

    def __init__(self):
        super().__init__()
        self.body, self.centres = mlp(classes=8), nn.Parameter(torch.randn(3, 8))
        self.width = nn.Parameter(torch.ones(1))

    def forward(self, x):
        d2 = ((self.body(x)[:, None] - self.centres[None]) ** 2).sum(-1)          # [B, 3]
        return torch.exp(-d2 / (2 * self.width ** 2))


def smoothed_dice(out, y):
    p, target = torch.sigmoid(out), F.one_hot(y, 3).float()
    return (1 - (2 * (p * target).sum(1) + 1) / (p.sum(1) + target.sum(1) + 1)).mean()


def weighted_mean(out, y):
    weights = torch.ones(3)[y]   # class weights, all equal
    return (F.cross_entropy(out, y, reduction="none") * weights).sum() / weights.sum()


def step_logging_perplexity(model, batch, loss_fn, optimizer):
    inputs, targets = batch
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), targets)
    perplexity = torch.exp(loss)  # a metric: it never reaches backward()
    loss.backward()
    optimizer.step()
    return loss + 0 * perplexity.detach()


class Attention(nn.Module):
    """LayerNorm, a hand-written softmax attention (scaled scores, softmax, weighted sum), a GELU MLP."""

    def __init__(self, features=10, width=16, classes=3):
        super().__init__()
        self.embed, self.norm = nn.Linear(features, 4 * width), nn.LayerNorm(width)
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head, self.width = nn.Linear(width, classes), width

    def forward(self, x):
        h = self.norm(self.embed(x).view(x.shape[0], 4, self.width))                        # [B, 4, W]
        scores = self.q(h) @ self.k(h).transpose(1, 2) / self.width ** 0.5
        h = h + torch.softmax(scores, dim=-1) @ self.v(h)
        return self.head((h + self.mlp(h)).mean(1))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(10, 64)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu", batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.layer(self.embed(x).view(-1, 4, 16)).mean(1))


HEALTHY = {
    "cross-entropy": lambda: make_patient(),
    "log-softmax-into-nll": lambda: make_patient(model=lambda: mlp(last=nn.LogSoftmax(dim=1)), loss=nn.NLLLoss()),
    "bce-with-logits": lambda: make_patient(model=lambda: mlp(classes=1), data=binary_data(),
                                            loss=nn.BCEWithLogitsLoss()),
    "mse": lambda: make_patient(model=lambda: mlp(classes=1), data=binary_data(), loss=nn.MSELoss()),
    "stable-log-softmax-by-hand": lambda: make_patient(loss=stable_log_softmax),
    "clamped-and-eps-guarded": lambda: make_patient(loss=guarded),
    "layernorm-softmax-attention": lambda: make_patient(model=Attention),
    "gelu-transformer-layer": lambda: make_patient(model=Encoder),
    "clip-accumulate-bf16": lambda: make_patient(grad_clip=1.0, accumulate=2, precision="bf16"),
    "rbf-kernel-head": lambda: make_patient(model=RBFHead),
    "constant-weights-mean": lambda: make_patient(loss=weighted_mean),
    "smoothed-dice": lambda: make_patient(loss=smoothed_dice),
    "perplexity-logged-in-the-step": lambda: make_patient(train_step=step_logging_perplexity),
}


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_setups_show_no_hazard(name):
    trace = trace_hazards(HEALTHY[name]())
    assert trace.error is None and trace.calls > 0
    assert trace.hazards == []


@pytest.mark.parametrize("name", ["healthy-mlp", "healthy-cnn-bn", "healthy-regression", "healthy-custom-step",
                                  "healthy-bce-with-logits", "healthy-fp16-grad-scaler"])
def test_healthy_zoo_patients_get_no_finding(name):
    factory = next(f for n, _, f in zoo.ZOO if n == name)
    report = battery(factory(), probes=PROBES, budget=BUDGET)
    assert report.probes["hazards"].ok
    assert "numerical-hazard" not in [f.code for f in report.findings]


# --- the diagnosis, on hand-built evidence -------------------------------------------------------------
def evidence(*hazards, birth=None, overfit_nonfinite=None):
    ev = Evidence({"hazards": ProbeResult(name="hazards", metrics={"hazards": list(hazards),
                                                                   "hazard_count": len(hazards)})})
    if birth is not None or overfit_nonfinite is not None:
        ev["overfit"] = ProbeResult(name="overfit", metrics={"nonfinite_step": overfit_nonfinite})
        ev["nonfinite"] = ProbeResult(name="nonfinite", metrics={"birth": birth, "step": overfit_nonfinite})
    return ev


def log_hazard(margin, where="net.py:7 in loss", complement=True):
    return {"kind": "log-of-probability", "op": "torch.log", "pattern": "log(1 - sigmoid(x))", "where": where,
            "producer": "sigmoid", "producer_kind": "sigmoid", "complement": complement, "in": "loss",
            "margin": margin, "arg_min": 1e-3, "fires_now": False}


def sqrt_hazard(zeros, arg_min=0.5):
    return {"kind": "sqrt-at-zero", "op": "torch.sqrt", "pattern": "sqrt(sum(...))", "where": "net.py:9 in loss",
            "producer": "sum", "in": "loss", "arg_min": arg_min, "arg_max": 4.0, "zeros": zeros, "numel": 32,
            "fires_now": False}


def division_hazard():
    return {"kind": "division-by-zeroable", "op": "torch.Tensor.div", "pattern": "x / sum(...)",
            "where": "net.py:11 in loss", "producer": "sum", "in": "loss", "divisor_min": 12.0, "divisor_zeros": 0,
            "divisor_is_count": True, "fires_now": False}


DIAG = get("numerical-hazard")


def test_log_near_its_edge_is_critical_far_from_it_a_warning():
    near = DIAG.check(evidence(log_hazard(margin=2.0)))
    far = DIAG.check(evidence(log_hazard(margin=15.0)))
    assert near.severity == "critical" and far.severity == "warning"
    assert near.confidence > far.confidence
    assert "net.py:7" in far.title and "log(1 - sigmoid(x))" in far.title
    assert "F.logsigmoid(-x)" in far.fix and "BCEWithLogitsLoss" in far.fix


def test_sqrt_with_exact_zeros_is_critical():
    assert DIAG.check(evidence(sqrt_hazard(zeros=3))).severity == "critical"
    assert DIAG.check(evidence(sqrt_hazard(zeros=0))).severity == "warning"
    assert DIAG.check(evidence(sqrt_hazard(zeros=0, arg_min=1e-9))).severity == "critical"
    assert "torch.sqrt(d + 1e-12)" in DIAG.check(evidence(sqrt_hazard(zeros=0))).fix


def test_division_is_a_warning_with_a_clamp_in_the_fix():
    f = DIAG.check(evidence(division_hazard()))
    assert f.severity == "warning" and "d.clamp(min=1)" in f.fix and "net.py:11" in f.fix


def test_the_worst_hazard_titles_the_finding():
    f = DIAG.check(evidence(division_hazard(), log_hazard(margin=1.0)))
    assert f.evidence["kind"] == "log-of-probability" and f.severity == "critical"
    assert f.title.endswith("(+1 more)") and f.evidence["hazard_count"] == 2


def test_a_hazard_that_fired_in_training_explains_the_nan_and_one_that_did_not_explains_nothing():
    birth = {"op": "torch.log", "where": "net.py:7 in loss", "phase": "forward"}
    fired = DIAG.check(evidence(log_hazard(margin=15.0), birth=birth, overfit_nonfinite=40))
    elsewhere = DIAG.check(evidence(log_hazard(margin=15.0), birth={**birth, "where": "net.py:99 in forward"},
                                    overfit_nonfinite=40))
    quiet = DIAG.check(evidence(division_hazard()))
    assert fired.severity == "critical" and fired.evidence["fired_in_training"]["where"] == "net.py:7 in loss"
    assert "loss-nonfinite" in fired.explains and "nonfinite-source" in fired.explains
    assert elsewhere.explains == () and quiet.explains == ()


def test_no_hazard_no_finding():
    assert DIAG.check(evidence()) is None


def test_no_cure_for_a_hazard_in_the_users_own_train_step():
    ctx = ProbeContext(patient=make_patient(), seconds=1.0, step_time=0.01, evidence=Evidence())
    in_step = DIAG.check(evidence({**log_hazard(15.0), "in": "step"}))
    in_loss = DIAG.check(evidence(log_hazard(15.0)))
    assert DIAG.cures(ctx, in_step) == []
    assert [c.train is not None for c in DIAG.cures(ctx, in_loss)] == [True, False]   # the 10x LR run, then the plain one


# --- the cure: the rewrite is faithful where the original is finite, and finite where it is not ----------
def test_rewritten_copy_has_no_hazard_and_leaves_the_patient_alone():
    patient = SICK["log-of-sigmoid"][0]()
    variant = rewritten(patient, "rewrote")
    assert hazard_count(patient) == {"hazards": 2} and hazard_count(variant) == {"hazards": 0}
    assert patient.loss_fn is bce_by_hand
    assert not patient.new_model()._forward_pre_hooks   # the user's factory builds the user's model


@pytest.mark.parametrize("loss, outputs, targets", [
    (bce_by_hand, torch.tensor([[0.3], [-2.0], [30.0], [-120.0]]), torch.tensor([[1.0], [0.0], [0.0], [1.0]])),
    (nll_of_softmax, torch.tensor([[0.1, 0.2, 0.3], [200.0, 0.0, -10.0]]), torch.tensor([1, 2])),
])
def test_the_rewrite_is_the_same_loss_and_stays_finite_where_the_original_is_not(loss, outputs, targets):
    variant = rewritten(make_patient(loss=loss), "rewrote")
    mild = outputs[:1].clone().requires_grad_()
    assert variant.loss_fn(mild, targets[:1]).item() == pytest.approx(loss(mild, targets[:1]).item(), rel=1e-5)
    extreme = outputs.clone().requires_grad_()
    assert not torch.isfinite(loss(extreme, targets))
    value = variant.loss_fn(extreme, targets)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(extreme.grad).all()


# --- the whole battery ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SICK))
def test_each_pattern_is_diagnosed_first_or_critical(name):
    factory, kind, op, loss = SICK[name]
    report = battery(factory(), budget=BUDGET)
    found = [f for f in report.findings if f.code == "numerical-hazard"]
    assert found, f"{name}: {[(f.code, f.severity) for f in report.findings]}"
    f = found[0]
    assert report.findings[0] is f or f.severity == "critical"
    assert any(h["kind"] == kind and h["op"] == op and h["where"].endswith(f"test_hazard.py:{hazard_line(loss)} "
                                                                           f"in {loss.__name__}")
               for h in f.evidence["hazards"])


def test_log_of_sigmoid_is_confirmed_by_its_cure():
    report = battery(SICK["log-of-sigmoid"][0](), budget=BUDGET)
    f = report.findings[0]
    assert f.code == "numerical-hazard" and f.status == "confirmed"
    t = f.treatment
    assert t["cured"] is True and "logsigmoid(-x)" in t["tried"]
    assert t["before"]["hazards"] == 2 and t["after"]["hazards"] == 0
    # at 10x the learning rate the untreated copy turns NaN and the rewritten one does not
    assert t["before"]["stress_nonfinite_step"] is not None and t["after"]["stress_nonfinite_step"] is None
    assert f.severity == "critical"


def test_a_nan_already_born_at_the_hazard_folds_the_nan_findings_under_it():
    report = battery(make_patient(loss=with_pairwise_spread), budget=BUDGET)
    f = report.findings[0]
    assert f.code == "numerical-hazard" and f.severity == "critical"
    assert f.evidence["fired_in_training"] is not None   # born in the square's backward, a line above the sqrt
    assert f.evidence["where"].endswith(f"test_hazard.py:{hazard_line(with_pairwise_spread)} in with_pairwise_spread")
    folded = {g.code for g in report.findings if g.explained_by == "numerical-hazard"}
    assert "loss-nonfinite" in folded


def test_a_division_that_already_makes_single_samples_nan_is_critical_and_explains_their_outliers():
    """A Dice denominator: the batch's sums are not 0, but scored one by one (the data scan) the empty masks
    predicted empty give 0/0 at init. With NaN in the samples themselves, the data is the source instead."""
    def scan(nan_losses, nan_inputs=0):
        return ProbeResult(name="data_scan", metrics={"loss": {"nonfinite": {"count": nan_losses}},
                                                      "nonfinite": {"count": nan_inputs}})
    ev = evidence(division_hazard())
    ev["data_scan"] = scan(40)
    fires = DIAG.check(ev)
    assert fires.severity == "critical" and fires.evidence["state"] == "fires on samples"
    assert "sample-loss-outlier" in fires.explains
    ev["data_scan"] = scan(40, nan_inputs=5)
    dirty = DIAG.check(ev)
    assert dirty.severity == "warning" and dirty.explains == ()


def test_the_cured_copy_is_cured_without_a_gradient_too():
    """The data scan and eval-mode scores run without a gradient: the rewritten loss must guard its division
    there as well (a batch whose every label is masked out divides 0 by 0)."""
    patient = make_patient(loss=masked_mean)
    cured = rewritten(patient, "an eps under the division")
    out, y = torch.randn(4, 3), torch.full((4,), 2)
    with torch.no_grad():
        assert torch.isnan(patient.loss_fn(out, y))
        assert torch.isfinite(cured.loss_fn(out, y))


def hazard_evidence(*hazards):
    return Evidence({"hazards": ProbeResult(name="hazards", metrics={"hazards": list(hazards),
                                                                     "hazard_count": len(hazards)})})


def exp_hazard(arg_max, overflow_at=88.72):
    return {"kind": "exp-unbounded", "op": "torch.exp", "pattern": "exp(x)", "where": "model.py:12 in forward",
            "in": "model", "arg_max": arg_max, "overflow_at": overflow_at, "margin": overflow_at - arg_max,
            "fires_now": False}


def test_an_exp_far_below_its_overflow_point_is_a_note_and_near_it_a_warning():
    """A VAE's log_var.exp() at 1.3 in float32 (edge 88.7) is a note; at 30, or at 3 in float16 (edge 11.1), it
    is a warning: training reaches those values."""
    diagnosis = get("numerical-hazard")
    far = diagnosis.check(hazard_evidence(exp_hazard(1.34)))
    assert far.severity == "info" and far.evidence["state"] == "far from its edge"
    assert diagnosis.check(hazard_evidence(exp_hazard(30.0))).severity == "warning"
    assert diagnosis.check(hazard_evidence(exp_hazard(3.0, overflow_at=11.09))).severity == "warning"

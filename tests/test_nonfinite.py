"""nonfinite-source: the op where the first NaN is born, on tiny sick patients."""

import torch
from torch import nn

from patients import battery, codes, make_patient

PROBES = ["structure", "overfit", "nonfinite"]


class SqrtOfLinear(nn.Module):
    """sqrt of a Linear output: NaN for every negative pre-activation, at step 0."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 32), nn.Linear(32, 3)

    def forward(self, x):
        return self.fc2(torch.sqrt(self.fc1(x)))


class NormOfZeros(nn.Module):
    """A hand-written |gain| = sqrt(gain * gain) at gain = 0: finite forward, inf * 0 in its backward."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 32), nn.Linear(32, 3)
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) * (1 + torch.sqrt(self.gain * self.gain))


class LogInLoss(nn.Module):
    def forward(self, outputs, targets):
        return -torch.log(outputs.gather(1, targets[:, None])).mean()


def test_forward_birth_names_the_op_and_its_inputs():
    report = battery(make_patient(model=SqrtOfLinear), probes=PROBES)
    assert codes(report)[0] == "nonfinite-source"
    ev = report.findings[0].evidence
    assert ev["op"] == "torch.sqrt" and ev["phase"] == "forward" and ev["step"] == 0
    assert ev["input_stats"][0]["min"] < 0 and ev["input_stats"][0]["nan"] == 0
    assert report.findings[0].severity == "critical"


def test_a_forward_birth_is_confirmed_by_guarding_that_call_alone():
    report = battery(make_patient(model=SqrtOfLinear), probes=PROBES, budget=20)
    top = report.findings[0]
    assert top.code == "nonfinite-source" and top.status == "confirmed", top.treatment
    assert top.treatment["tried"].startswith("guarded torch.sqrt at ") and "test_nonfinite.py" in top.treatment["tried"]
    assert top.treatment["before"]["nonfinite_step"] == 0 and top.treatment["after"]["nonfinite_step"] is None
    symptom = next(f for f in report.findings if f.code == "loss-nonfinite")
    assert symptom.explained_by == "nonfinite-source" and symptom.status == "confirmed"


def test_the_guard_changes_only_the_named_op_at_the_named_line():
    from nandoctor.treatments.guards import LineGuard, guardable
    assert guardable("torch.log") and guardable("torch.Tensor.pow") and not guardable("torch.nn.functional.linear")
    x = -torch.ones(3)
    where = None
    with LineGuard("torch.sqrt", "nowhere.py:1 in f"):
        assert torch.isnan(torch.sqrt(x)).all()   # another line: untouched
    import traceback

    from nandoctor.probes.nonfinite import user_line
    where = user_line([(f.filename, f.lineno + 2, f.name) for f in traceback.extract_stack()])
    with LineGuard("torch.sqrt", where):
        y = torch.sqrt(x)   # this line is `where`
        z = torch.log(x)    # another op: untouched
    assert torch.isfinite(y).all() and torch.isnan(z).all()


def test_backward_birth_is_named_by_anomaly_detection():
    report = battery(make_patient(model=NormOfZeros), probes=PROBES)
    assert codes(report)[0] == "nonfinite-source"
    ev = report.findings[0].evidence
    assert ev["phase"] == "backward" and ev["op"].endswith("Backward0")
    assert ev["where"] and "test_nonfinite.py" in ev["where"]


def test_birth_in_the_loss_is_only_a_warning():
    report = battery(make_patient(loss=LogInLoss()), probes=PROBES)
    finding = next(f for f in report.findings if f.code == "nonfinite-source")
    assert finding.severity == "warning" and finding.evidence["born_in_loss"] is True


def test_nan_after_divergence_is_a_symptom():
    report = battery(make_patient(optimizer=torch.optim.SGD, lr=1e4), probes=PROBES)
    finding = next(f for f in report.findings if f.code == "nonfinite-source")
    assert finding.role == "symptom" and finding.evidence["after_divergence"] is True
    assert codes(report).index("nonfinite-source") < codes(report).index("loss-nonfinite")


def test_finite_run_triggers_nothing():
    report = battery(make_patient(), probes=PROBES)
    metrics = report.probes["nonfinite"].metrics
    assert metrics.triggered is False and metrics.birth is None and metrics.replayed_steps is None
    assert "nonfinite-source" not in codes(report)


def test_overflow_of_huge_inputs_is_not_blamed_on_the_op():
    from types import SimpleNamespace

    from nandoctor.diagnoses import get
    from nandoctor.records import Evidence, ProbeResult
    rec = SimpleNamespace(nonfinite_forward={"module": "0", "type": "Linear", "step": 0}, nonfinite_grad=None)
    run = SimpleNamespace(losses=[float("inf")], nonfinite_step=0)
    birth = {"op": "torch.nn.functional.linear", "module": "0", "phase": "forward", "in_model": True,
             "inputs": [{"min": -3e30, "max": 5e30, "nan": 0, "inf": 0}], "output": {"nan": 0, "inf": 12}}
    ev = Evidence({"overfit": ProbeResult(name="overfit", data={"run": run, "recorder": rec}),
                   "nonfinite": ProbeResult(name="nonfinite", metrics={"triggered": True, "birth": birth, "step": 0})})
    finding = get("nonfinite-source").check(ev)
    assert finding.severity == "warning" and finding.evidence["overflow_of_huge_inputs"] is True


def test_nan_that_comes_with_the_data_is_left_to_the_data_diagnoses():
    from patients import blobs
    data = blobs()
    data.tensors[0][:, 2] = float("nan")
    report = battery(make_patient(data=data), probes=PROBES)
    assert report.probes["nonfinite"].metrics["birth"]["phase"] == "inputs"
    assert "nonfinite-source" not in codes(report)


def test_recorder_named_module_is_reported_without_the_nonfinite_probe():
    """Only the overfit probe ran: the recorder's module (its input statistics a dict) is the evidence."""
    from types import SimpleNamespace

    from nandoctor.diagnoses import get
    from nandoctor.records import Evidence, ProbeResult
    fwd = {"module": "2", "type": "Blowup", "step": 2, "output": {"shape": [8, 16], "finite": False},
           "input": {"shape": [8, 16], "nan": 0, "inf": 0, "mean": 1.1}}
    rec = SimpleNamespace(nonfinite_forward=fwd, nonfinite_grad=None)
    run = SimpleNamespace(losses=[1.0, 1.0, float("inf")], nonfinite_step=2)
    finding = get("nonfinite-source").check(Evidence({"overfit": ProbeResult(name="overfit",
                                                                             data={"run": run, "recorder": rec})}))
    assert finding.evidence["module"] == "2" and finding.evidence["input_stats"] == [fwd["input"]]


class RowNormalised(torch.nn.Module):
    """Each input row divided by its own norm: a row of zeros (a blank record) becomes 0/0."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x / x.norm(dim=1, keepdim=True))


def test_a_nan_born_in_the_model_on_samples_outside_the_batch_is_named_with_them():
    """Training on one batch stays finite; the scan finds samples with finite inputs and a NaN loss; one checked
    forward pass on them names the division in the user's forward(), and the samples rank under it."""
    from torch.utils.data import TensorDataset
    from patients import battery, blobs, make_patient

    x, y = blobs(n=256).tensors
    probe = make_patient(model=RowNormalised, data=TensorDataset(x, y))
    blank = [i for i in range(256) if i not in set(probe.fixed_indices())][:3]
    x = x.clone()
    x[blank] = 0.0
    report = battery(make_patient(model=RowNormalised, data=TensorDataset(x, y)), budget=30)
    top = report.findings[0]
    assert top.code == "nonfinite-source", [(f.code, f.status) for f in report.findings]
    assert set(blank) <= set(top.evidence["samples"]) and top.evidence["in_model"] is True
    assert "div" in top.evidence["op"] and "test_nonfinite.py" in top.evidence["where"]
    outlier = next(f for f in report.findings if f.code == "sample-loss-outlier")
    assert outlier.explained_by == "nonfinite-source"

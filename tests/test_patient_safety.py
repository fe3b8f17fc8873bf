"""Probes leave the patient as they found it: weights, RNG state, files."""

import random

import numpy as np
import torch

from patients import battery, make_patient, mlp


def test_user_model_weights_and_rng_are_untouched(tmp_path):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    battery(make_patient(model=model), budget=10, out=tmp_path / "r")
    after = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], after[0]) and expected[1:] == after[1:]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


def test_nothing_written_outside_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    battery(make_patient(), budget=10, probes=["overfit"], out=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_same_seed_same_fresh_model():
    patient = make_patient()
    a, b = patient.new_model(), patient.new_model()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_interrupt_leaves_a_partial_report(tmp_path, monkeypatch):
    from nandoctor.probes import overfit

    def interrupted(self, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(overfit.Overfit, "run", interrupted)
    report = battery(make_patient(), budget=10, probes=["overfit"], out=tmp_path / "out")
    assert report.interrupted
    text = (tmp_path / "out" / "report.json").read_text()
    assert '"interrupted": true' in text and '"skipped"' in text


def test_a_probe_that_crashes_becomes_a_finding(tmp_path, monkeypatch):
    from nandoctor import numeric
    from nandoctor.probes import overfit

    # a bug inside nandoctor: the probe calls a helper with the wrong arguments (raised in overfit.py)
    monkeypatch.setattr(overfit, "memorised", numeric.median)
    report = battery(make_patient(), budget=10, probes=["overfit"], out=tmp_path / "out")
    assert report.probes["overfit"].status == "failed"
    assert report.probes["overfit"].error["internal"] is True
    assert "probe-failed" in [f.code for f in report.findings]
    assert "training-crashed" not in [f.code for f in report.findings]
    assert (tmp_path / "out" / "report.html").exists()


def test_factory_returning_one_shared_instance_is_never_trained(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch\nfrom torch import nn\nfrom torch.utils.data import TensorDataset\n"
        "SHARED = nn.Linear(4, 3)\n"
        "def model():\n    return SHARED\n"
        "def data():\n    return TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))\n")
    (tmp_path / "c.yaml").write_text("model: m.py:model\ndata:\n  train: m.py:data\n"
                                     "loss: torch.nn.CrossEntropyLoss\noptimizer: {_target_: torch.optim.SGD, lr: 0.5}\n")
    import nandoctor
    from nandoctor.loading import resolve_target
    shared = resolve_target("m.py:SHARED", tmp_path)
    before = shared.weight.detach().clone()
    nandoctor.diagnose(tmp_path / "c.yaml", budget=5, probes=["overfit"])
    assert torch.equal(shared.weight, before)


def test_cuda_guard_moves_assert_prone_patients_to_the_cpu():
    from nandoctor.pipeline import cpu_if_cuda_would_assert
    from patients import blobs
    bad = make_patient(data=torch.utils.data.TensorDataset(blobs()[:][0], blobs(classes=5)[:][1]))
    good = make_patient()
    bad.device = good.device = torch.device("cuda")  # never used to compute: the check runs on the CPU
    moved, note = cpu_if_cuda_would_assert(bad)
    assert moved.device.type == "cpu" and "out of bounds" in note
    kept, note = cpu_if_cuda_would_assert(good)
    assert kept.device.type == "cuda" and note is None


def test_models_that_keep_intermediate_tensors_can_be_copied():
    from torch import nn

    from nandoctor.patient import clone_module

    class KeepsActivations(nn.Module):  # seed 002 stores every intermediate result on self
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            self.hidden = self.fc(x)
            return self.hidden

    model = KeepsActivations()
    model(torch.randn(3, 4))
    copy = clone_module(model)
    assert torch.equal(copy.fc.weight, model.fc.weight) and copy.fc.weight is not model.fc.weight
    assert model.hidden.grad_fn is not None  # the original keeps its attribute

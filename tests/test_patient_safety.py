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


# --- the user's folder, the working directory, the output folder -------------------------------------------
PROJECT_NET = '''
import torch
from torch import nn

from helpers import HIDDEN  # a neighbour module, imported by name


class Net(nn.Module):
    def __init__(self, checkpoint=None):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))
        if checkpoint:
            self.load_state_dict(torch.load(checkpoint, weights_only=True))
'''


def make_project(folder):
    """A user's project: config, code, a neighbour module, a CSV and a checkpoint the model loads."""
    import hashlib

    folder.mkdir()
    (folder / "net.py").write_text(PROJECT_NET)
    (folder / "helpers.py").write_text("HIDDEN = 8\n")
    rows = ["a,b,c,y"] + [f"{i % 7},{(i * 3) % 5},{i % 2},{i % 2}" for i in range(64)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    from torch import nn
    body = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.save({f"body.{k}": v for k, v in body.state_dict().items()}, folder / "init.pt")
    (folder / "config.yaml").write_text(
        f"model: {{_target_: net.py:Net, checkpoint: {folder / 'init.pt'}}}\n"
        "data:\n  train: {_target_: nandoctor.datasets.CSVDataset, path: data.csv, target_column: y}\n"
        "  batch_size: 16\nloss: torch.nn.CrossEntropyLoss\noptimizer: {_target_: torch.optim.Adam, lr: 0.01}\n")

    def digest():
        return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                             p.stat().st_mode)
                for p in sorted(folder.rglob("*"))}
    return digest


def test_a_full_diagnosis_leaves_the_users_folder_and_the_working_directory_as_they_were(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from nandoctor.cli import app

    import sys

    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as Python runs by default: it would write __pycache__
    digest = make_project(tmp_path / "project")
    before = digest()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(app, ["diagnose", str(tmp_path / "project" / "config.yaml"), "--out", "report",
                                      "--budget", "10", "-q"])
    assert result.exit_code == 0, result.output
    assert digest() == before  # no byte, no mode, no new file (not even __pycache__)
    assert sorted(p.name for p in work.iterdir()) == ["report"]  # nothing beside --out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "work"]
    assert (work / "report" / "report.json").exists()


def old_report(out, extra=()):
    (out / "plots").mkdir(parents=True)
    (out / "report.json").write_text('{"tool": "nandoctor", "old": true}')
    (out / "report.md").write_text("# old")
    (out / "plots" / "stale.png").write_bytes(b"\x89PNG old")
    for name in extra:
        (out / name).write_text("the user's own file")


def test_an_older_report_is_replaced_as_a_whole(tmp_path):
    out = tmp_path / "out"
    old_report(out)
    battery(make_patient(), budget=8, probes=["overfit"], out=out)
    assert not (out / "plots" / "stale.png").exists()
    assert '"old"' not in (out / "report.json").read_text() and (out / "plots" / "overfit.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old folder left beside it


def test_a_folder_holding_the_users_own_files_is_never_emptied(tmp_path):
    out = tmp_path / "mine"
    old_report(out, extra=["notes.txt"])
    battery(make_patient(), budget=8, probes=["overfit"], out=out)
    assert (out / "notes.txt").read_text() == "the user's own file" and (out / "plots" / "stale.png").exists()
    assert '"old"' not in (out / "report.json").read_text() and (out / "plots" / "overfit.png").exists()


def test_a_run_that_fails_leaves_the_older_report_untouched(tmp_path, monkeypatch):
    from nandoctor import diagnoses

    out = tmp_path / "out"
    old_report(out)
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted():
        raise KeyboardInterrupt  # Ctrl-C while the diagnoses run, after the probes wrote their plots

    monkeypatch.setattr(diagnoses, "load_all", interrupted)
    try:
        battery(make_patient(), budget=8, probes=["overfit"], out=out)
    except KeyboardInterrupt:
        pass
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_out_naming_a_file_is_bad_input(tmp_path):
    from nandoctor.errors import ConfigError

    (tmp_path / "taken").write_text("a file")
    import pytest
    with pytest.raises(ConfigError, match="is a file"):
        battery(make_patient(), budget=5, probes=["overfit"], out=tmp_path / "taken")


def test_global_torch_state_and_rng_survive_a_config_run(tmp_path):
    import nandoctor

    make_project(tmp_path / "project")
    torch.manual_seed(99)
    np.random.seed(3)
    random.seed(4)
    expected = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(99)
    np.random.seed(3)
    random.seed(4)
    state = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.is_anomaly_enabled(),
             torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    nandoctor.diagnose(tmp_path / "project" / "config.yaml", budget=10)
    assert (torch.is_grad_enabled(), torch.get_default_dtype(), torch.is_anomaly_enabled(),
            torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == state
    after = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]

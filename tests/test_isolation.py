"""Process isolation, forced on the CPU: a probe whose process dies (``os.abort()``, ``os._exit(1)``,
a forward stuck where Python cannot interrupt it) becomes a finding; the other probes run on."""

import json
import textwrap

import pytest

import nandoctor
from nandoctor import isolation

NET = textwrap.dedent('''
    import os, pathlib, time
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    HERE = pathlib.Path(__file__).parent

    class Net(nn.Module):
        """Dies as configured: 'abort' in eval mode; 'exit-then-stuck': exits on its first forward ever, then
        never returns from a forward in eval mode."""
        def __init__(self, dies="never"):
            super().__init__()
            self.fc, self.dies = nn.Linear(4, 3), dies
        def forward(self, x):
            if self.dies == "abort" and not self.training:
                os.abort()
            if self.dies.startswith("exit") and not (HERE / "died-once").exists():
                (HERE / "died-once").touch()
                os._exit(1)
            if self.dies.endswith("stuck") and not self.training:
                while True:
                    time.sleep(0.05)
            return self.fc(x)

    def data(n=64):
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
''')


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("NANDOCTOR_ISOLATE", "1")

    def config(dies):
        (tmp_path / "net.py").write_text(NET)
        (tmp_path / "c.yaml").write_text(f"model: {{_target_: net.py:Net, dies: {dies}}}\n"
                                         "data: {train: net.py:data, batch_size: 16}\nloss: torch.nn.CrossEntropyLoss\n"
                                         "optimizer: {_target_: torch.optim.Adam, lr: 0.01}\n")
        return tmp_path / "c.yaml"
    yield config
    isolation.close_all()


def test_a_probe_whose_process_aborts_becomes_a_finding(isolated, tmp_path):
    report = nandoctor.diagnose(isolated("abort"), probes=["overfit", "gradients", "train_eval"], budget=40,
                                out=tmp_path / "out", treatments=False)
    scan = report.probes["train_eval"]  # the first probe to run the model in eval mode: the forward aborts there
    assert scan.status == "failed" and scan.error["type"] == "ProcessDied" and not scan.error["internal"]
    assert "SIGABRT" in scan.error["message"] and scan.error["where"].endswith("in forward")
    assert "net.py:" in scan.error["where"]  # the user's line, from faulthandler's dump
    # the probes before it ran in the same worker, and their in-memory evidence came back
    assert report.probes["overfit"].ok and report.probes["gradients"].ok
    assert report.probes["gradients"].metrics["source"] == "overfit"  # reused overfit's recording in the worker
    assert report.probes["overfit"].data["run"].steps > 0
    crash = next(f for f in report.findings if f.code == "training-crashed")
    assert crash.evidence["probe"] == "train_eval"
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["probes"]["train_eval"]["error"]["type"] == "ProcessDied"


def test_a_worker_that_exits_is_replaced_and_a_stuck_probe_is_stopped(isolated, monkeypatch):
    monkeypatch.setattr(isolation, "PROBE_GRACE", 1.0)
    report = nandoctor.diagnose(isolated("exit-then-stuck"), probes=["overfit", "train_eval"], budget=60,
                                treatments=False)
    warmup, overfit, stuck = report.probes["warmup"], report.probes["overfit"], report.probes["train_eval"]
    # the first forward ever (the warm-up's) calls os._exit(1); overfit runs in a fresh worker
    assert warmup.status == "failed" and warmup.error["type"] == "ProcessDied" and warmup.error["exit_code"] == 1
    assert overfit.ok and overfit.metrics["isolation"]["fresh_worker"]
    # train_eval's eval-mode forward never returns: stopped past its deadline, the report still written
    assert stuck.status == "failed" and stuck.error["type"] == "ProbeTimeout" and not stuck.error["internal"]
    assert "probe-failed" not in [f.code for f in report.findings]


def test_a_worker_that_cannot_start_leaves_the_probes_to_this_process(isolated, tmp_path):
    cfg = isolated("never")
    (tmp_path / "net.py").write_text("import multiprocessing\n"
                                     "if multiprocessing.parent_process() is not None:\n"
                                     "    raise RuntimeError('this module refuses to load in a worker')\n" + NET)
    report = nandoctor.diagnose(cfg, probes=["overfit"], budget=20, treatments=False)
    assert report.probes["overfit"].ok and "isolation" not in report.probes["overfit"].metrics
    assert "refuses to load in a worker" in report.patient["isolation_note"]


def test_off_by_default_on_the_cpu_and_for_python_objects(monkeypatch):
    from patients import make_patient

    monkeypatch.delenv("NANDOCTOR_ISOLATE", raising=False)
    patient = make_patient()
    assert not isolation.wanted(patient)
    monkeypatch.setenv("NANDOCTOR_ISOLATE", "1")
    assert not isolation.wanted(patient)  # no config to build it again from

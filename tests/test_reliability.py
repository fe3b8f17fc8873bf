"""Faults the doctor survives: the user's code raising, NaN/Inf mid-probe, running out of memory,
a sample that hangs, Ctrl-C. Each ends in a report that says what happened, never a dead run, and
each error is blamed on whoever raised it (the user's file and line, or nandoctor's own bug)."""

import functools
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from nandoctor import numeric, probes as probe_pkg
from nandoctor.loading import raised_by_user
from patients import battery, blobs, codes, make_patient

ROOT = Path(__file__).resolve().parents[1]


def internal_failures(report):
    return {n: r.error for n, r in report.probes.items() if r.status == "failed" and (r.error or {}).get("internal")}


def line_of(fn, text: str) -> int:
    """The line number of the first line of ``fn``'s source holding ``text``."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


# --- the user's code raising ---------------------------------------------------------------------------
class RaisesAt(Dataset):
    """Blobs whose sample ``bad`` cannot be read."""

    def __init__(self, bad=13, n=96):
        self.data, self.bad = blobs(n=n), bad

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == self.bad:
            raise OSError(f"cannot read shard for sample {i}")
        return self.data[i]


def test_a_sample_that_raises_is_named_and_the_scan_goes_on(tmp_path):
    report = battery(make_patient(data=RaisesAt(), batch_size=16), probes=["data_scan", "overfit"], budget=6)
    scan = report.probes["data_scan"]
    assert scan.ok and scan.metrics["samples_scanned"] == 96
    errors = scan.metrics["load_errors"]
    assert errors["count"] == 1 and errors["first"][0]["index"] == 13
    assert "test_reliability.py" in errors["first"][0]["where"]
    assert "sample-load-error" in codes(report)
    assert not internal_failures(report)


class DiesAtStep(nn.Module):
    def __init__(self, k=5):
        super().__init__()
        self.fc, self.k, self.calls = nn.Linear(10, 3), k, 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.k:
            raise ValueError("shape bug in my forward")
        return self.fc(x)


def test_a_forward_that_raises_at_step_k_names_the_users_line():
    report = battery(make_patient(model=lambda: DiesAtStep(5)), probes=["overfit"], budget=10, treatments=False)
    error = report.probes["overfit"].error
    assert report.probes["overfit"].status == "failed" and not error.get("internal")
    line = line_of(DiesAtStep.forward, "raise ValueError")
    assert error["where"].startswith("tests/test_reliability.py:") or "test_reliability.py" in error["where"]
    assert f":{line} in forward" in error["where"]
    crash = next(f for f in report.findings if f.code == "training-crashed")
    assert crash.evidence["where"] == error["where"] and "probe-failed" not in codes(report)


class TokenNet(nn.Module):
    """Token ids past the embedding: torch raises IndexError from inside the user's forward."""

    def __init__(self):
        super().__init__()
        self.emb, self.drop, self.fc = nn.Embedding(10, 8), nn.Dropout(0.2), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.drop(self.emb(x)).mean(1))


def test_the_users_index_error_outside_the_training_loop_is_not_nandoctors():
    data = TensorDataset(torch.randint(0, 20, (64, 5)), torch.randint(0, 3, (64,)))  # ids 10..19 do not exist
    report = battery(make_patient(model=TokenNet, data=data, batch_size=16), probes=["train_eval", "outputs"],
                     budget=10, treatments=False)
    assert not internal_failures(report)
    assert "probe-failed" not in codes(report)
    failed = [r for r in report.probes.values() if r.status == "failed"]
    assert failed and all("test_reliability.py" in r.error["where"] for r in failed)


def test_who_raised_is_decided_by_where_it_was_raised():
    from nandoctor.errors import DataError

    patient = make_patient(data=TensorDataset(torch.randn(8, 10), torch.full((8,), 7)))  # labels past 3 classes
    with pytest.raises(IndexError) as loss_error:  # torch raises, called by the patient on the user's objects
        patient.compute_loss(patient.new_model(), patient.fixed_batch())
    assert raised_by_user(loss_error.value)
    with pytest.raises(TypeError) as bug:  # raised in nandoctor's own code (numeric.py iterates a non-list)
        numeric.median(object())
    assert not raised_by_user(bug.value)
    assert raised_by_user(DataError("bad batch"))


def test_one_probe_failing_keeps_the_others_findings(monkeypatch):
    from nandoctor.probes import lr_sweep

    monkeypatch.setattr(lr_sweep, "sweep", numeric.median)  # a nandoctor bug in one probe
    patient = make_patient(loss=nn.NLLLoss())  # raw scores into NLLLoss: the outputs probe finds it
    report = battery(patient, probes=["outputs", "overfit", "lr_sweep"], budget=15, treatments=False)
    assert report.probes["lr_sweep"].status == "failed"
    assert {"nll-on-raw-logits", "probe-failed"} <= set(codes(report))


# --- NaN / Inf mid-probe ----------------------------------------------------------------------------------
class TurnsNonFinite(nn.Module):
    """A model with BatchNorm and Dropout (so every probe applies) whose outputs turn ``value`` after ``at``
    forward passes: the loss is NaN/Inf from that step on, in training, scoring and evaluation alike."""

    def __init__(self, at=3, value=math.nan):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
        self.at, self.value, self.calls = at, value, 0

    def forward(self, x):
        self.calls += 1
        out = self.net(x)
        return out * self.value if self.calls > self.at else out


PROBES = list(probe_pkg.load_all())


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("probe", PROBES)
def test_a_loss_that_turns_nonfinite_mid_probe_crashes_no_statistic(probe, value):
    setup = {"precision": {"precision": "bf16"},  # the probes that apply only to such set-ups
             "schedule": {"scheduler": functools.partial(torch.optim.lr_scheduler.StepLR, step_size=10)}}
    patient = make_patient(model=lambda: TurnsNonFinite(3, value), batch_size=8, **setup.get(probe, {}))
    needs = {"nonfinite": ["overfit"]}.get(probe, [])  # it replays what the overfit probe saw
    report = battery(patient, probes=[probe, *needs], budget=10, treatments=False)  # probes stop at the first NaN
    assert report.probes[probe].status == "ok", report.probes[probe].reason  # it ran, with NaN in its numbers
    assert not internal_failures(report), internal_failures(report)
    assert "probe-failed" not in codes(report)
    assert not [n for n in report.not_evaluated if "error" in n.get("reason", "")]
    json.dumps(report.to_json(), allow_nan=False)  # and the contract stays strict JSON


def test_numeric_summaries_skip_nonfinite_values():
    values = [1.0, math.nan, 3.0, math.inf, None, -math.inf]
    assert numeric.mean(values) == 2.0 and numeric.median(values) == 2.0 and numeric.pstdev(values) == 1.0
    assert numeric.fmax(values) == 3.0 and numeric.fmin(values) == 1.0 and numeric.count_nonfinite(values) == 4
    assert numeric.mean([math.nan, math.inf]) is None and numeric.pstdev([]) is None
    assert numeric.pstdev([1e308, -1e308]) == math.inf


def test_output_reading_ignores_rows_that_hold_nan():
    from nandoctor.probes.outputs import output_kind

    logp = torch.log_softmax(torch.randn(8, 4), dim=1)
    logp[2, 1] = math.nan
    assert output_kind(logp)["kind"] == "log-probabilities"


# --- resources: memory, hangs -----------------------------------------------------------------------------
class NeedsSmallBatches(nn.Module):
    """Runs out of memory on any batch larger than ``k`` samples (what a GPU does, simulated on the CPU)."""

    def __init__(self, k=8):
        super().__init__()
        self.fc, self.k = nn.Linear(10, 3), k

    def forward(self, x):
        if x.shape[0] > self.k:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} samples")
        return self.fc(x)


def test_out_of_memory_retries_at_a_smaller_batch_and_says_so():
    report = battery(make_patient(model=lambda: NeedsSmallBatches(8), batch_size=16), probes=["overfit"],
                     budget=10, treatments=False)
    overfit = report.probes["overfit"]
    assert overfit.ok, overfit.error
    oom = overfit.metrics["out_of_memory"]
    assert oom["user_batch_size"] == 16 and oom["succeeded_at"] == 8 and oom["retried_with_max_batch"] == [16, 8]
    assert overfit.metrics["steps"] > 0


def test_out_of_memory_at_every_batch_is_reported_not_retried_forever():
    report = battery(make_patient(model=lambda: NeedsSmallBatches(0), batch_size=16), probes=["overfit"],
                     budget=10, treatments=False)
    overfit = report.probes["overfit"]
    assert overfit.status == "failed" and overfit.error["type"] == "OutOfMemoryError"
    assert overfit.metrics["out_of_memory"]["succeeded_at"] is None
    assert len(overfit.metrics["out_of_memory"]["retried_with_max_batch"]) == 3


class HangsAt(Dataset):
    def __init__(self, bad=7, n=64):
        self.data, self.bad = blobs(n=n), bad

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == self.bad:
            time.sleep(3600)  # a stuck network read
        return self.data[i]


def test_a_sample_that_hangs_is_named_and_the_run_finishes(monkeypatch):
    monkeypatch.setenv("NANDOCTOR_SAMPLE_TIMEOUT", "1")
    start = time.perf_counter()
    report = battery(make_patient(data=HangsAt(), batch_size=64), probes=["data_scan", "overfit"], budget=20,
                     treatments=False)
    assert time.perf_counter() - start < 20
    # the fixed batch holds every sample: the warm-up waits for sample 7 once and stops, naming it and the line
    warmup = report.probes["warmup"]
    assert warmup.status == "failed" and warmup.error["type"] == "SampleTimeout" and not warmup.error.get("internal")
    assert "loading sample 7 took longer than 1 s" in warmup.error["message"]
    assert f":{line_of(HangsAt.__getitem__, 'time.sleep')} in __getitem__" in warmup.error["where"]
    # later probes do not wait for it again: the scan names it and goes on, overfit stops at once
    scan = report.probes["data_scan"]
    assert scan.ok and scan.metrics["samples_scanned"] == 64
    assert scan.metrics["load_errors"]["count"] == 1 and scan.metrics["load_errors"]["first"][0]["index"] == 7
    assert report.probes["overfit"].error["type"] == "SampleTimeout"
    assert "training-crashed" in codes(report) and "probe-failed" not in codes(report)
    assert not [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]


# --- Ctrl-C from the outside --------------------------------------------------------------------------------
SLOW_NET = textwrap.dedent('''
    import pathlib, time
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    MARK = pathlib.Path(__file__).with_name("started")

    class Net(nn.Module):
        def __init__(self, swallow=False):
            super().__init__()
            self.fc, self.swallow = nn.Linear(4, 3), swallow
        def forward(self, x):
            MARK.touch()
            if self.swallow:  # user code that swallows Ctrl-C and carries on
                while True:
                    try:
                        time.sleep(60)
                    except KeyboardInterrupt:
                        pass
            time.sleep(0.02)
            return self.fc(x)

    def data():
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g))
''')


def start_cli(tmp_path, swallow=False):
    (tmp_path / "net.py").write_text(SLOW_NET)
    (tmp_path / "c.yaml").write_text(f"model: {{_target_: net.py:Net, swallow: {str(swallow).lower()}}}\n"
                                     "data: {train: net.py:data, batch_size: 8}\nloss: torch.nn.CrossEntropyLoss\n"
                                     "optimizer: {_target_: torch.optim.SGD, lr: 0.1}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nandoctor", "diagnose", str(tmp_path / "c.yaml"), "--out",
                             str(tmp_path / "out"), "--budget", "120", "-q"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the battery
    return proc


def test_ctrl_c_writes_a_partial_report_and_exits_130(tmp_path):
    proc = start_cli(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["interrupted"] is True
    assert data["probes"]["warmup"]["status"] == "ok"  # what finished is kept
    assert any(p.get("reason") == "interrupted (Ctrl-C)" for p in data["probes"].values())


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    proc = start_cli(tmp_path, swallow=True)  # the first Ctrl-C is swallowed by the user's forward
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # still stuck in the user's code
    proc.send_signal(signal.SIGINT)
    start = time.perf_counter()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and time.perf_counter() - start < 5
    assert "interrupted twice" in err and "Traceback" not in err
    assert not list(tmp_path.glob(".out.partial-*"))  # nothing half-written left beside --out

"""The LR-sweep probe and lr-too-high / lr-too-low, on tiny patients with known safe and unsafe LRs."""

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nandoctor.diagnoses import get
from nandoctor.patient import Patient
from nandoctor.probes.lr_sweep import check_lrs, set_lr, sweep
from nandoctor.records import Evidence, ProbeResult
from patients import battery, blobs, codes, make_patient, mlp

LR_CODES = {"lr-too-high", "lr-too-low"}


def regression(n=256, features=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(features, 1, generator=gen)
    x = torch.randn(n, features, generator=gen)
    return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=gen))


def regressor(lr, **kw):
    """SGD with momentum on a small MLP regression: trains at 1e-3..3e-2, diverges from about 0.1 up."""
    return make_patient(model=lambda: mlp(8, 1, 32), data=regression(), loss=nn.MSELoss(),
                        optimizer=torch.optim.SGD, lr=lr, momentum=0.9, **kw)


# --- the sweep itself ------------------------------------------------------------------
def test_suggestion_lands_in_the_safe_range_and_divergence_above_it():
    report = battery(regressor(1e-2), probes=["lr_sweep"], budget=10)
    m = report.probes["lr_sweep"].metrics
    assert 1e-3 <= m["suggested_lr"] <= 3e-2          # the constant-LR runs train there
    assert m["divergence_lr"] is not None and m["divergence_lr"] > m["suggested_lr"]
    assert m["divergence_lr"] <= 10.0 and m["stopped"] == "diverged"
    assert set(m["suggestions"]) == {"steepest", "valley", "minimum_tenth"}


def test_same_seed_same_sweep():
    a, b = sweep(regressor(1e-2), steps=40), sweep(regressor(1e-2), steps=40)
    assert a.losses == b.losses and a.lrs == b.lrs


def test_model_and_rng_are_unchanged_after_a_sweep():
    torch.manual_seed(123)
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    patient = Patient.from_objects(model, blobs(), nn.CrossEntropyLoss(), torch.optim.Adam, lr=1e-3, device="cpu")
    rng = torch.get_rng_state()
    sweep(patient, steps=30)                      # the bare sweep, outside the pipeline's own RNG guard
    assert torch.equal(torch.get_rng_state(), rng)
    battery(patient, probes=["lr_sweep"], budget=5)
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def user_step(model, batch, loss_fn, optimizer):
    """A custom step that unpacks a dict batch: the sweep must go through it."""
    optimizer.zero_grad()
    loss = loss_fn(model(batch["x"]), batch["y"])
    loss.backward()
    optimizer.step()
    return loss


class DictData(torch.utils.data.Dataset):
    def __init__(self):
        self.inner = blobs()

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        x, y = self.inner[i]
        return {"x": x, "y": y}


def test_works_with_a_user_train_step_and_another_optimizer():
    patient = make_patient(data=DictData(), optimizer=torch.optim.RMSprop, lr=1e-3, train_step=user_step)
    report = battery(patient, probes=["lr_sweep"], budget=5)
    m = report.probes["lr_sweep"].metrics
    assert report.probes["lr_sweep"].status == "ok"
    assert m["suggested_lr"] is not None and m["optimizer"] == "RMSprop"


def test_set_lr_reaches_every_param_group():
    model = mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 5.0}], lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


def test_batches_with_nan_are_skipped_not_trained_on():
    data = blobs()
    x, y = data.tensors
    x = x.clone()
    x[5, 0] = float("nan")
    patient = make_patient(data=TensorDataset(x, y), lr=1e-3)
    run = sweep(patient, steps=40)
    assert run.skipped_batches >= 1
    assert all(math.isfinite(v) for v in run.losses[:10])


def test_the_untrained_baseline_is_training_at_lr_zero_by_forward_passes():
    """Dropout and BatchNorm in train mode: the forward-only baseline draws the same masks on the same batches."""
    from nandoctor.probes.lr_sweep import _constant_lr_run, untrained_run

    model = lambda: nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
    patient = make_patient(model=model, data=regression(), loss=nn.MSELoss(), optimizer=torch.optim.Adam, lr=1e-3)
    by_forward, by_training = untrained_run(patient, 12, None), _constant_lr_run(patient, 0.0, 12, None)
    assert by_forward.steps == 12 and by_forward.losses == pytest.approx(by_training.losses, rel=1e-5)
    moving = _constant_lr_run(patient, 1e-2, 12, None)
    assert moving.losses[5:] != pytest.approx(by_forward.losses[5:], rel=1e-3)  # the comparison can fail


def test_check_runs_compare_against_the_untrained_loss():
    check = check_lrs(regressor(1e-2), {"tiny": 1e-7, "good": 1e-2}, steps=12)
    assert abs(check["tiny"]["relative_drop"]) < 0.05      # LR 1e-7: the loss does not move
    assert check["good"]["relative_drop"] > 0.25


# --- the diagnoses on their patients -------------------------------------------------------
def test_lr_too_high_ranks_first_and_is_confirmed():
    report = battery(regressor(0.5), probes=["overfit", "lr_sweep"], budget=10)
    assert codes(report)[0] == "lr-too-high"
    top = report.findings[0]
    assert top.severity == "critical" and top.treatment and top.treatment["cured"] is True
    assert top.evidence["user_lr"] == 0.5 and top.evidence["suggested_lr"] < 0.05


def test_lr_too_low_ranks_first_above_cannot_overfit():
    report = battery(make_patient(lr=1e-6), probes=["overfit", "lr_sweep"], budget=10)
    assert codes(report)[0] == "lr-too-low"
    assert "lr-too-high" not in codes(report)
    top = report.findings[0]
    assert top.evidence["times_below_suggested"] >= 100 and top.treatment["cured"] is True


def healthy_patients():
    return {"adam-1e-3": make_patient(lr=1e-3), "sgd-0.05": make_patient(optimizer=torch.optim.SGD, lr=0.05),
            "sgd-0.01": make_patient(optimizer=torch.optim.SGD, lr=0.01), "regression-sgd-1e-2": regressor(1e-2)}


def test_healthy_patients_get_no_lr_finding_and_no_critical():
    for name, patient in healthy_patients().items():
        report = battery(patient, probes=["overfit", "lr_sweep"], budget=8)
        assert not LR_CODES & set(codes(report)), name
        assert not [f for f in report.findings if f.severity == "critical"], name


# --- the diagnoses on hand-built evidence (nothing trains) ---------------------------------
def sweep_evidence(user_lr, suggested=1e-2, divergence=1.0, user_drop=0.5, sugg_drop=0.9, overfit=None):
    check = {"user": {"lr": user_lr, "relative_drop": user_drop, "steps": 20,
                      "nonfinite_step": 3 if user_drop is None else None},
             "suggested": {"lr": suggested, "relative_drop": sugg_drop, "nonfinite_step": None, "steps": 20}}
    ev = Evidence({"lr_sweep": ProbeResult(name="lr_sweep", metrics={
        "user_lr": user_lr, "suggested_lr": suggested, "divergence_lr": divergence, "divergence_kind": "rising",
        "suggestions": {"steepest": suggested}, "drop_at_user_lr": 0.0, "check": check})})
    if overfit is not None:
        ev["overfit"] = ProbeResult(name="overfit", metrics=overfit)
    return ev


def test_lr_too_high_needs_the_check_to_fail_at_the_user_lr():
    diag = get("lr-too-high")
    assert diag.check(sweep_evidence(2.0, user_drop=-3.0)).severity == "critical"
    assert diag.check(sweep_evidence(0.5, user_drop=None)).severity == "critical"   # 50x above, NaN at the user's LR
    assert diag.check(sweep_evidence(0.5, user_drop=0.8)) is None                   # far above, but it trains
    assert diag.check(sweep_evidence(2.0, user_drop=0.8)).severity == "warning"     # past divergence, but it trains
    assert diag.check(sweep_evidence(1e-2, user_drop=-1.0)) is None                 # at the suggestion
    # below the sweep's divergence point, 5x the suggestion: the runs decide when no batch was memorised
    stuck = {"memorised": False, "initial_loss": 1.1, "tail_loss": 1.0}
    assert diag.check(sweep_evidence(5e-2, user_drop=0.02, overfit=stuck)).severity == "critical"
    assert diag.check(sweep_evidence(5e-2, user_drop=0.02, overfit={"memorised": True})) is None


def test_lr_too_low_needs_orders_of_magnitude_and_a_loss_that_barely_moves():
    diag = get("lr-too-low")
    stuck = {"memorised": False, "initial_loss": 1.1, "tail_loss": 1.09}
    assert diag.check(sweep_evidence(1e-5, user_drop=0.01, overfit=stuck)).severity == "critical"
    assert diag.check(sweep_evidence(1e-5, user_drop=0.01)).severity == "warning"   # no overfit probe
    assert diag.check(sweep_evidence(1e-3, user_drop=0.1)) is None                  # only 10x below, and it moves
    # one decade below, the runs decide: the loss barely moves at the user's LR, the suggestion trains
    assert diag.check(sweep_evidence(1e-3, user_drop=0.01, overfit=stuck)).severity == "critical"
    assert diag.check(sweep_evidence(3e-3, user_drop=0.01, overfit=stuck)) is None  # 3x below: not the LR's fault
    assert diag.check(sweep_evidence(1e-5, user_drop=0.4)) is None                  # it moves
    memorised = {"memorised": True, "initial_loss": 1.0, "tail_loss": 0.01}
    assert diag.check(sweep_evidence(1e-5, user_drop=0.01, overfit=memorised)) is None


def test_doc_pages_have_every_section():
    for code in LR_CODES:
        page = get(code).page()
        for section in ("What it detects", "Why it breaks training", "Evidence", "Fix", "Known false positives"):
            assert section in page, (code, section)


# --- the command ---------------------------------------------------------------------------
def test_lr_sweep_command_writes_the_report_with_the_plot(tmp_path):
    from typer.testing import CliRunner

    from nandoctor.cli import app

    result = CliRunner().invoke(app, ["lr-sweep", "configs/regression.yaml", "--out", str(tmp_path), "--steps", "60",
                                      "--budget", "20", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    metrics = report["probes"]["lr_sweep"]["metrics"]
    assert "suggested_lr" in metrics and "divergence_lr" in metrics and metrics["steps"] <= 60
    assert (tmp_path / "plots" / "lr_sweep.png").exists()


def test_without_a_check_the_verdicts_stay_below_critical():
    ev = sweep_evidence(2.0)
    del ev["lr_sweep"].metrics["check"]
    assert get("lr-too-high").check(ev).severity == "warning"      # past divergence, unconfirmed
    low = sweep_evidence(1e-5)
    del low["lr_sweep"].metrics["check"]
    assert get("lr-too-low").check(low) is None                     # nothing says the loss barely moves
    stuck = {"memorised": False, "initial_loss": 1.1, "tail_loss": 1.09}
    low["overfit"] = ProbeResult(name="overfit", metrics=stuck)
    assert get("lr-too-low").check(low).severity == "warning"


def test_a_suggestion_that_does_not_train_from_scratch_gives_way_to_the_cautious_rule():
    from nandoctor.curves import SweepReading
    from nandoctor.probes.lr_sweep import verify_suggestion

    patient = regressor(1e-7)
    reading = SweepReading(smoothed=[], suggested_lr=5.0, suggested_by="valley",
                           suggestions={"steepest": 1e-2, "valley": 5.0, "minimum_tenth": 0.5})
    check = check_lrs(patient, {"user": 1e-7, "suggested": 5.0}, steps=12)
    check = verify_suggestion(patient, reading, check, 12, None)
    assert reading.suggested_lr == 1e-2 and reading.suggested_by.startswith("steepest")
    assert check["suggested"]["lr"] == 1e-2 and check["suggested"]["relative_drop"] > 0.25


def test_a_loss_that_falls_and_jumps_back_at_5x_the_suggestion_is_a_candidate_its_cure_decides():
    """Adam at 0.05 on a small encoder (DETR #285's LR): one batch falls to 0.04 and jumps back to 0.19; the check at
    the user's LR still trains. A note that the cure (the same training at the suggestion) raises."""
    diag = get("lr-too-high")
    jumpy = {"memorised": False, "initial_loss": 1.39, "min_loss": 0.041, "tail_loss": 0.189}
    found = diag.check(sweep_evidence(5e-2, user_drop=0.6, overfit=jumpy))
    assert found.severity == "info" and found.evidence["candidate_only"]
    assert "jumps back to 0.189" in found.title
    steady = {"memorised": False, "initial_loss": 1.39, "min_loss": 0.15, "tail_loss": 0.189}
    assert diag.check(sweep_evidence(5e-2, user_drop=0.6, overfit=steady)) is None   # slow, not unstable
    assert diag.check(sweep_evidence(2e-2, user_drop=0.6, overfit=jumpy)) is None    # only 2x the suggestion

"""fp16-overflow and lr-schedule-collapse: pure checks on hand-built evidence and synthetic LR traces, the two
probes on tiny patients, and the battery's confirmed cures. The zoo (benchmarks/zoo.py, tests/test_zoo.py) holds
the same sick and healthy patients for the ranking check."""

import functools
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.optim import lr_scheduler

import nandoctor
from nandoctor import diagnoses
from nandoctor.diagnoses.schedule import read_schedule
from nandoctor.probes import ProbeContext
from nandoctor.probes.precision import Precision
from nandoctor.probes.schedule import Schedule, trace_schedule
from nandoctor.records import Evidence, ProbeResult
from patients import make_patient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from zoo import ZOO  # noqa: E402

FP16 = diagnoses.get("fp16-overflow")
COLLAPSE = diagnoses.get("lr-schedule-collapse")
T = COLLAPSE.thresholds


# --- lr-schedule-collapse: the pure reading of an LR trace --------------------------------------------


def trace(scheduler, interval="step", lr=0.1, n=256, batch_size=32, accumulate=1, steps=1000):
    from patients import blobs
    patient = make_patient(data=blobs(n=n), lr=lr, batch_size=batch_size, scheduler=scheduler,
                           scheduler_interval=interval, accumulate=accumulate)
    lrs, ended = trace_schedule(patient, steps)
    spe = math.ceil(patient.epoch_batches / accumulate)
    return lrs, {"steps_per_epoch": spe, "configured_lr": lr, "ended": ended, "scheduler": "x", "interval": interval}


P = functools.partial
SICK = {
    "StepLR(1, 0.1) per batch": (P(lr_scheduler.StepLR, step_size=1, gamma=0.1), "step", "collapse"),
    "cosine T_max=10 epochs, stepped per batch": (P(lr_scheduler.CosineAnnealingLR, T_max=10), "step", "collapse"),
    "OneCycleLR total_steps=20": (P(lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=20), "step", "schedule-ends"),
    "warm-up that never warms": (P(lr_scheduler.LinearLR, start_factor=1e-5, total_iters=10**7), "step",
                                 "stays-near-zero"),
}
HEALTHY = {
    "OneCycleLR over 20 epochs": (P(lr_scheduler.OneCycleLR, max_lr=0.1, epochs=20, steps_per_epoch=8), "step"),
    "cosine over the run": (P(lr_scheduler.CosineAnnealingLR, T_max=2000), "step"),
    "cosine over 50 epochs, per epoch": (P(lr_scheduler.CosineAnnealingLR, T_max=50), "epoch"),
    "linear warm-up": (P(lr_scheduler.LinearLR, start_factor=1e-3, total_iters=100), "step"),
    "StepLR(30 epochs) per epoch": (P(lr_scheduler.StepLR, step_size=30, gamma=0.1), "epoch"),
    "exponential 0.99 per step": (P(lr_scheduler.ExponentialLR, gamma=0.99), "step"),
}


@pytest.mark.parametrize("name", SICK)
def test_collapsing_schedules_are_read(name):
    scheduler, interval, kind = SICK[name]
    lrs, m = trace(scheduler, interval)
    read = read_schedule(lrs, m, None, T)
    assert read is not None and read["kind"] == kind, read
    assert read["step"] <= read["early_steps"]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_schedules_are_not(name):
    scheduler, interval = HEALTHY[name]
    lrs, m = trace(scheduler, interval)
    assert read_schedule(lrs, m, None, T) is None


def test_per_epoch_stepping_of_the_same_schedule_is_healthy():
    """StepLR(step_size=1, gamma=0.1) meant per epoch: collapses per batch, not per epoch on a large set."""
    sick = P(lr_scheduler.StepLR, step_size=10, gamma=0.1)
    lrs, m = trace(sick, "step", n=4096)
    assert read_schedule(lrs, m, None, T)["kind"] == "collapse"
    lrs, m = trace(sick, "epoch", n=4096)
    assert read_schedule(lrs, m, None, T) is None


def test_schedule_far_past_the_divergence_point():
    lrs, m = trace(P(lr_scheduler.OneCycleLR, max_lr=5.0, epochs=20, steps_per_epoch=8), "step", lr=0.1)
    read = read_schedule(lrs, m, divergence_lr=0.3, t=T)
    assert read["kind"] == "past-divergence" and read["lr"] >= 3 * 0.3
    assert read_schedule(lrs, m, divergence_lr=10.0, t=T) is None


def test_accumulation_counts_optimizer_steps():
    lrs, m = trace(P(lr_scheduler.StepLR, step_size=1, gamma=0.5), "step", lr=1.0, accumulate=4, steps=4)
    assert lrs == [1.0, 0.5, 0.25, 0.125]  # one scheduler step per optimizer step, not per batch
    lrs, m = trace(P(lr_scheduler.StepLR, step_size=1, gamma=0.5), "epoch", lr=1.0, n=64, batch_size=16,
                   accumulate=2, steps=5)
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25]  # 4 batches per epoch = 2 optimizer steps


def test_schedule_finding_names_the_step_and_advises_interval_epoch():
    lrs, m = trace(P(lr_scheduler.StepLR, step_size=1, gamma=0.1), "step")
    m.update(scheduler="StepLR", interval="step")
    finding = COLLAPSE.check(Evidence({"schedule": ProbeResult(name="schedule", metrics=m, data={"lrs": lrs})}))
    assert finding.severity == "critical" and finding.evidence["step"] == 4
    assert "interval: epoch" in finding.fix


# --- fp16-overflow: hand-built evidence ---------------------------------------------------------------


def run_metrics(**kw):
    base = {"steps": 40, "nonfinite_step": None, "grad_nonfinite_step": None, "error": None, "act_max": 30.0,
            "act_max_module": "fc1", "overflow": None, "grad_scaler": False, "skipped_steps": 0,
            "initial_loss": 1.1, "final_loss": 0.1}
    return {**base, **kw}


def fp16_evidence(precision="fp16", mine=None, ref=None):
    metrics = {"precision": precision, "grad_scaler": False, "as_configured": mine or run_metrics(),
               "fp32": ref or run_metrics()}
    return Evidence({"precision": ProbeResult(name="precision", metrics=metrics)})


OVERFLOW = {"module": "fc1", "type": "Linear", "step": 0}


def test_fp16_overflow_when_fp16_breaks_and_fp32_does_not():
    mine = run_metrics(nonfinite_step=0, overflow=OVERFLOW, steps=1)
    finding = FP16.check(fp16_evidence(mine=mine, ref=run_metrics(act_max=4e5)))
    assert finding.severity == "critical" and finding.confidence >= 0.9
    assert "fc1 (Linear) outputs inf" in finding.title and finding.evidence["fp32_act_max_over_fp16_max"] > 1


def test_fp16_gradient_overflow_without_a_scaler():
    finding = FP16.check(fp16_evidence(mine=run_metrics(grad_nonfinite_step=3)))
    assert finding.severity == "critical" and "gradients are non-finite at step 3" in finding.title


def test_grad_scaler_skipping_most_steps_after_its_calibration_is_an_overflow_its_calibration_is_not():
    def scaled(steps, calibration, after, scale_min=64.0):
        return run_metrics(grad_scaler=True, grad_nonfinite_step=0, steps=steps, skipped_steps=calibration + after,
                           calibration_steps=calibration, skipped_after_calibration=after, scale_min=scale_min)
    # every GradScaler halves its scale from 2**16 at the start: 9 skips, then it trains; however long the run
    for steps in (20, 27, 60):
        assert FP16.check(fp16_evidence(mine=scaled(steps, calibration=9, after=0))) is None
    # it settled, then skipped most of what followed: the gradients keep leaving fp16
    assert FP16.check(fp16_evidence(mine=scaled(40, calibration=9, after=20))).severity == "critical"
    # the scale fell below 1: the gradients overflow fp16 unscaled (NaN activations skip every step)
    assert FP16.check(fp16_evidence(mine=scaled(27, calibration=27, after=0, scale_min=0.5))).severity == "critical"


def test_the_precision_probe_plans_a_grad_scaler_s_calibration_on_top_of_its_minimum():
    from nandoctor.probes.precision import CALIBRATION, MIN_STEPS
    scaled = Precision().need(ProbeContext(make_patient(precision="fp16"), 10.0, 0.01, Evidence()))
    plain = Precision().need(ProbeContext(make_patient(precision="fp16", grad_scaler=False), 10.0, 0.01,
                                          Evidence()))
    assert scaled.min == MIN_STEPS + CALIBRATION and plain.min == MIN_STEPS
    assert 2.0 ** 16 / 2.0 ** CALIBRATION < 1.0   # that many skips take the default init_scale below 1


def test_not_fp16_overflow_when_fp32_breaks_too_or_in_bf16():
    broken = run_metrics(nonfinite_step=5)
    assert FP16.check(fp16_evidence(mine=broken, ref=run_metrics(nonfinite_step=6))) is None
    assert FP16.check(fp16_evidence(precision="bf16", mine=broken)) is None


def test_fp16_headroom_warning():
    finding = FP16.check(fp16_evidence(ref=run_metrics(act_max=40000.0)))
    assert finding.severity == "warning"
    assert FP16.check(fp16_evidence(ref=run_metrics(act_max=100.0))) is None


# --- the probes on tiny patients ------------------------------------------------------------------------


def ctx_for(patient, seconds=5.0):
    return ProbeContext(patient=patient, seconds=seconds, step_time=0.01, evidence=Evidence())


def test_probes_skip_quickly_when_there_is_nothing_to_measure():
    plain = make_patient()
    assert Precision().run(ctx_for(plain)).status == "skipped"
    assert Schedule().run(ctx_for(plain)).status == "skipped"
    plateau = make_patient(scheduler=lr_scheduler.ReduceLROnPlateau)
    assert "loss" in Schedule().run(ctx_for(plateau)).reason


def raw_units_patient(**kw):
    from zoo import RawUnits, blobs, ds
    return nandoctor.Patient.from_objects(RawUnits, ds(*blobs()), torch.nn.CrossEntropyLoss(), lr=1e-3,
                                          device="cpu", precision="fp16", **kw)


def test_precision_probe_sees_the_overflow_and_fp32_does_not():
    result = Precision().run(ctx_for(raw_units_patient(grad_scaler=False)))
    mine, ref = result.metrics["as_configured"], result.metrics["fp32"]
    assert mine["nonfinite_step"] == 0 and mine["overflow"]["module"] == "fc1"
    assert ref["nonfinite_step"] is None and ref["act_max"] > 65504  # fp32 holds what fp16 cannot


def test_precision_probe_records_the_scale_trajectory():
    result = Precision().run(ctx_for(make_patient(precision="fp16")))
    mine = result.metrics["as_configured"]
    assert mine["grad_scaler"] and mine["scales"] and mine["scale_initial"] <= 65536.0
    assert mine["nonfinite_step"] is None and result.metrics["fp32"]["grad_scaler"] is False


# --- the battery: ranked first and confirmed by the cure ------------------------------------------------


def zoo_patient(name):
    return next(factory for n, _, factory in ZOO if n == name)()


@pytest.mark.parametrize("name, code, cure", [
    ("fp16-overflow", "fp16-overflow", "bf16"),
    ("steplr-per-batch", "lr-schedule-collapse", "without StepLR"),
])
def test_sick_patients_are_confirmed_by_their_cure(name, code, cure):
    report = nandoctor.diagnose(zoo_patient(name), budget=20)
    top = report.findings[0]
    assert top.code == code, [(f.code, f.severity) for f in report.findings]
    assert top.treatment["cured"] and cure in top.treatment["tried"]


def test_probe_hooks_still_read_gradients_under_a_grad_scaler_and_accumulation():
    patient = make_patient(precision="fp16", accumulate=2, grad_clip=1.0)
    report = nandoctor.diagnose(patient, budget=10, probes=["gradients"])
    norms = report.probes["gradients"].metrics["total_grad_norms"]
    assert norms and all(math.isfinite(n) and 0 < n <= 1.0 + 1e-3 for n in norms)  # unscaled, clipped
    assert not any(f.severity == "critical" for f in report.findings)


def test_a_decay_that_spends_the_lr_within_a_few_epochs_is_read():
    """StepLR(step_size=10, gamma=0.5) meant per epoch, stepped per batch: past the first two epochs it has not
    fallen a thousandfold yet, but 99% of everything the LR will ever add up to is spent by epoch 5."""
    lrs, m = trace(P(lr_scheduler.StepLR, step_size=10, gamma=0.5), "step", n=640)
    read = read_schedule(lrs, m, None, T)
    assert read is not None and read["kind"] == "spent", read
    assert read["step"] <= T["spent_epochs"] * m["steps_per_epoch"]
    lrs, m = trace(P(lr_scheduler.StepLR, step_size=10, gamma=0.5), "epoch", n=640)
    assert read_schedule(lrs, m, None, T) is None   # the same schedule per epoch: healthy

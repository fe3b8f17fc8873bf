"""Hand-built report documents (report.json as the pipeline writes it) and their evidence.json, for the
letter's tests: nothing trains. ``seed000`` is the NLLLoss-on-raw-scores patient after its cure;
``healthy`` a set-up with nothing wrong."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

PLAN = {"budget_seconds": 120.0, "step_seconds": 0.0135, "tier": 2,
        "steps": {"steps": {"overfit": 300, "lr_sweep": 100, "treatments": 300}},
        "probes": {"warmup": {"seconds_allowed": 110.3, "seconds_used": 0.13},
                   "outputs": {"seconds_allowed": 3.6, "seconds_used": 0.03},
                   "overfit": {"seconds_allowed": 12.8, "seconds_used": 5.04, "planned_steps": 300, "min_steps": 30},
                   "lr_sweep": {"seconds_allowed": 8.6, "seconds_used": 2.73, "planned_steps": 100, "min_steps": 30},
                   "init": {"seconds_allowed": 0.0, "seconds_used": 0.0, "planned_steps": 120, "min_steps": 15,
                            "inconclusive": "needs 15 steps (2.1 s at 0.135 s a step); run with --budget 150"}}}
PATIENT = {"model": "Net", "loss": "NLLLoss", "optimizer": "Adam", "lr": 1e-06, "batch_size": 16,
           "parameters": 45787, "trainable_parameters": 45787, "train_samples": 400, "device": "cpu"}


def _curve(start: float, end: float, n: int = 300) -> list[float]:
    return [start + (end - start) * (1 - math.exp(-4 * i / n)) for i in range(n)]


def seed000() -> dict:
    nll = {"code": "nll-on-raw-logits", "severity": "critical", "confidence": 0.9,
           "title": "NLLLoss is fed raw scores, not log-probabilities",
           "evidence": {"reason": "raw", "loss": "NLLLoss", "outputs_are": "unbounded", "outputs_shape": [16, 3],
                        "outputs_min": -0.20451, "outputs_max": -0.064301, "outputs_zero_share": 0.0,
                        "last_module": {"name": "fc3", "type": "Linear", "is_output": True},
                        "overfit_initial_loss": 0.110642, "overfit_min_loss": -3.2, "overfit_final_loss": -3.2,
                        "overfit_nonfinite_step": None},
           "fix": "Add nn.LogSoftmax(dim=1) as the last layer, or use nn.CrossEntropyLoss on the raw scores.",
           "probes": ["outputs", "overfit"], "plots": ["plots/overfit.png"],
           "treatment": {"tried": "appended log-softmax(dim=1) to the model's output", "cured": True,
                         "before": {"initial_loss": 0.110642, "final_loss": -3.2, "tail_loss": -3.1, "steps": 300,
                                    "nonfinite_step": None, "accuracy": 0.5625, "error": None},
                         "after": {"initial_loss": 1.065637, "final_loss": 0.41, "tail_loss": 0.42, "steps": 300,
                                   "nonfinite_step": None, "accuracy": 0.875, "error": None},
                         "judged_by": "the loss stays at or above zero and falls below the untreated run's start",
                         "curves": {"before": _curve(0.11, -3.2), "after": _curve(1.07, 0.41)},
                         "plot": "plots/treatment-nll-on-raw-logits.png",
                         "remaining": ["lr-too-low"], "remaining_status": {"lr-too-low": "confirmed"}},
           "status": "confirmed", "explained_by": None}
    low = {"code": "lr-too-low", "severity": "critical", "confidence": 0.95,
           "title": "The learning rate 1e-06 is 441x below the suggested 0.000441; the loss barely moves",
           "evidence": {"user_lr": 1e-06, "suggested_lr": 0.000441, "times_below_suggested": 440.6,
                        "check_user": {"lr": 1e-06, "end_loss": 0.118179}, "check_suggested": {"lr": 0.000441,
                                                                                               "end_loss": 0.05},
                        "optimizer": "Adam"},
           "fix": "Raise the learning rate to about 0.00044 (the LR sweep's suggestion).",
           "probes": ["lr_sweep"], "plots": ["plots/lr_sweep.png"], "after_cure": "nll-on-raw-logits",
           "treatment": {"tried": "ran at the suggested LR 0.000441 instead of 1e-06", "cured": True,
                         "before": {"lr": 1e-06, "steps": 20, "start_loss": 0.1177, "end_loss": 0.1182},
                         "after": {"lr": 0.000441, "steps": 20, "start_loss": 0.1177, "end_loss": 0.05},
                         "judged_by": "the end loss drops by a third more than at your LR",
                         "curves": {"before": _curve(0.118, 0.1182, 20), "after": _curve(0.118, 0.05, 20)},
                         "plot": "plots/treatment-lr-too-low.png"},
           "status": "confirmed", "explained_by": None}
    stuck = {"code": "cannot-overfit-batch", "severity": "critical", "confidence": 0.75,
             "title": "The model cannot memorise a single batch (loss 0.1106 -> -3.2 in 300 steps)",
             "evidence": {"initial_loss": 0.110642, "final_loss": -3.2, "steps": 300, "accuracy": 0.5625},
             "fix": "Check that every layer is trainable.", "probes": ["overfit"], "plots": ["plots/overfit.png"],
             "treatment": None, "status": "suspected", "explained_by": "nll-on-raw-logits"}
    imbalance = {"code": "class-imbalance", "severity": "warning", "confidence": 0.71,
                 "title": "Class 2 has 4 samples, 54x fewer than class 0 (216)",
                 "evidence": {"samples_per_class": {"0": 216, "1": 180, "2": 4}, "ratio": 54.0,
                              "samples_scanned": 400},
                 "fix": "Weight the loss by inverse class frequency.", "probes": ["data_scan"],
                 "plots": ["plots/data-sample-loss.png"], "treatment": None, "status": "suspected",
                 "explained_by": None}
    probes = {
        "warmup": {"status": "ok", "seconds": 0.13, "metrics": {}},
        "outputs": {"status": "ok", "seconds": 0.03, "metrics": {"outputs_min": -0.2}},
        "overfit": {"status": "ok", "seconds": 5.0, "metrics": {"steps": 300, "initial_loss": 0.110642,
                                                                "final_loss": -3.2, "min_loss": -3.2, "lr": 1e-06,
                                                                "nonfinite_step": None, "accuracy": 0.5625},
                    "plots": ["plots/overfit.png"]},
        "data_scan": {"status": "ok", "seconds": 2.8, "metrics": {
            "samples_scanned": 400, "loss": {"init": {"worst": [{"index": 123, "loss": 0.9}, {"index": 7, "loss": 0.5}]}},
            "magnitude": {"worst": [{"index": 3, "magnitude": 5.0}]}}, "plots": ["plots/data-sample-loss.png"]},
        "lr_sweep": {"status": "ok", "seconds": 2.7, "metrics": {
            "summary": "suggested LR 0.000441 (valley); diverges at 0.00132; your LR 1e-06",
            "suggested_lr": 0.000441, "divergence_lr": 0.001322, "user_lr": 1e-06, "best_loss": -0.08,
            "suggestions": {"steepest": 0.000911, "valley": 0.000475}}, "plots": ["plots/lr_sweep.png"]},
        "init": {"status": "inconclusive", "seconds": 0.0, "metrics": {},
                 "reason": "needs 15 steps (2.1 s at 0.135 s a step); run with --budget 150"},
    }
    return {"tool": "nandoctor", "version": "0.1.0", "config": "sample_runs/seed000_nll_raw_scores/config.yaml",
            "verdict": "critical", "elapsed_seconds": 41.3, "findings": [nll, low, stuck, imbalance],
            "probes": probes, "plan": copy.deepcopy(PLAN), "patient": dict(PATIENT),
            "not_evaluated": [{"code": "bad-init", "missing": ["init"], "reason": "probe inconclusive"}],
            "interrupted": False}


def healthy() -> dict:
    doc = seed000()
    doc.update(verdict="healthy", findings=[], not_evaluated=[])
    doc["patient"].update(loss="CrossEntropyLoss", lr=1e-3)
    doc["probes"]["overfit"]["metrics"].update(final_loss=0.01, min_loss=0.01)
    doc["probes"]["lr_sweep"]["metrics"].update(user_lr=1e-3, best_loss=0.3)
    doc["probes"]["init"] = {"status": "ok", "seconds": 1.0, "metrics": {}}
    del doc["plan"]["probes"]["init"]["inconclusive"]
    return doc


def evidence() -> dict:
    """The curves behind the plots: an LR sweep whose loss runs off to -1e24 past the divergence."""
    lrs = [1e-7 * (1e8 ** (i / 99)) for i in range(100)]
    losses = [0.126 - 0.2 * (i / 60) if lr < 1.3e-3 else -10.0 ** min(24, (i - 60) * 1.5) for i, lr in enumerate(lrs)]
    rows = [[float(i), 0.16 + 0.01 * (i % 7), 0.15 + 0.01 * (i % 5), 1.0 + (i % 3)] for i in range(400)]
    return {"tool": "nandoctor", "evidence": 1, "probes": {
        "lr_sweep": {"lrs": lrs, "losses": losses, "smoothed": losses},
        "overfit": {"steps": list(range(300)), "losses": _curve(0.11, -3.2),
                    "grad_norms": {"fc3": {"steps": list(range(300)), "values": [0.5] * 300},
                                   "fc1": {"steps": list(range(300)), "values": [0.05] * 300}}},
        "data_scan": {"rows": rows}}}


def write(folder: Path, doc: dict, with_evidence: bool = True) -> Path:
    """A saved report folder: report.json (and evidence.json); returns the report.json path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    if with_evidence:
        (folder / "evidence.json").write_text(json.dumps(evidence()), encoding="utf-8")
    return folder / "report.json"

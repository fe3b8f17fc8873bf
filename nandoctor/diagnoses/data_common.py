"""Shared readers of the data scan's evidence, for the data diagnoses (no diagnosis is defined here)."""

from __future__ import annotations

import math

from nandoctor.records import Evidence, ProbeResult

SCAN = "data_scan"
SHOWN = 20   # sample indices / columns shown in a finding's evidence (report.json's probe metrics keep more)

# What a loss says when it crashes on its targets (labels out of range or of the wrong dtype).
LABEL_ERROR_PATTERNS = (
    (r"Target -?\d+ is out of bounds", "range"),
    (r"t >= 0 && t < n_classes", "range"),
    (r"all elements of target should be between 0 and 1", "range"),
    (r"expected target dtype to be \w+", "dtype"),
    (r"expected scalar type \w+ but found \w+", "dtype"),
    (r"Found dtype \w+ but expected \w+", "dtype"),
    (r"result type \w+ can't be cast to the desired output type \w+", "dtype"),
    (r"Expected floating point type for target", "dtype"),
    (r"(nll_loss|cross_entropy|binary_cross_entropy)\w*\" not implemented for '\w+'", "dtype"),
)
LOSS_FILES = ("torch/nn/functional.py", "torch/nn/modules/loss.py")


def scan(ev: Evidence) -> ProbeResult | None:
    """The data scan's result when it ran (ok), else None."""
    return ev.ok(SCAN)


def plot(result: ProbeResult, name: str) -> list[str]:
    return [p for p in result.plots if p.endswith(f"/{name}.png")]


def column_name(m: dict, j: int) -> str:
    """A feature's name (CSV column) or ``feature j`` / ``channel j``."""
    names = (m.get("inputs") or {}).get("feature_names")
    if names and j < len(names):
        return names[j]
    return f"{'channel' if (m.get('inputs') or {}).get('layout') == 'channels' else 'feature'} {j}"


def features(m: dict) -> list[dict]:
    """One dict per feature/channel with the scan's numbers (mean, std, min, max, median, robust_scale, ...)."""
    f = m.get("features") or {}
    n = len(f.get("mean") or [])
    return [{k: (v[j] if isinstance(v, list) and j < len(v) else None) for k, v in f.items()} | {"j": j}
            for j in range(n)]


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def coverage(m: dict) -> dict:
    """How much of the set the numbers come from (goes into every data finding's evidence)."""
    return {"samples_scanned": m.get("samples_scanned"), "samples_total": m.get("samples_total"),
            "sampling": m.get("sampling")}


def training_trouble(ev: Evidence) -> str | None:
    """Why training looks broken (non-finite or not learning), from any probe that trained; else None."""
    for name in ("warmup", "overfit"):
        r = ev.get(name)
        if r is None or not r.ok:
            continue
        losses = (r.metrics.get("losses") if name == "warmup" else None) or []
        if any(not finite(x) for x in losses):
            return f"{name}: non-finite loss"
        if name == "overfit" and r.metrics.get("nonfinite_step") is not None:
            return "overfit: non-finite loss at step %s" % r.metrics.get("nonfinite_step")
        if name == "overfit" and r.metrics.get("memorised") is False:
            return "overfit: the model cannot memorise one batch"
    s = scan(ev)
    if s is not None:
        t = s.metrics.get("training") or {}
        if t.get("stopped") == "nonfinite":
            return "data scan's short training: non-finite loss"
    return None

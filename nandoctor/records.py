"""The records that flow through the pipeline: probe results, findings, the report.

Probes return ``ProbeResult`` (numbers and curves, never a verdict); diagnoses
turn the collected ``Evidence`` into ``Finding`` records; the ``Report`` holds
them ranked. ``to_json`` of each is the SPEC section 3 contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

SEVERITIES = ("info", "warning", "critical")  # ascending


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def jsonable(value: Any) -> Any:
    """Numbers, strings, lists and dicts only; NaN/Inf become strings; tensors become lists."""
    try:
        import torch
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().tolist() if value.numel() > 1 else value.detach().cpu().item()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        value = value.item()  # numpy scalar
    elif hasattr(value, "tolist") and hasattr(value, "dtype"):
        value = value.tolist()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return round(value, 6) if abs(value) >= 1e-4 or value == 0 else float(f"{value:.6g}")
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, Metrics):
        return value.to_json()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    return str(value)


@dataclass
class Metrics:
    """A probe's measurements, typed: each probe declares a dataclass of what it measured.

    A diagnosis reads them by field (``m.initial_loss``) or, as a mapping, by name
    (``m.get("initial_loss")``); either way a name the probe does not declare is an error, not
    a silent ``None``, so a typo in a diagnosis or a probe fails loudly. Values a probe did not
    measure this time are ``None``. ``warnings`` is filled by the pipeline for every probe.
    """

    warnings: list | None = None   # distinct warnings the user's code raised during the probe
    summary: str | None = None     # the probe's answer in one line, where it has one (the terminal shows it)
    out_of_memory: dict | None = None  # the probe ran out of memory: the smaller batches it was retried with
    isolation: dict | None = None      # it ran in a worker process: the worker and what that cost

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def _check(self, key: str) -> str:
        if key not in self.names():
            raise KeyError(f"{type(self).__name__} has no field {key!r} (it has: {', '.join(self.names())})")
        return key

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, self._check(key))
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        return getattr(self, self._check(key))

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, self._check(key), value)

    def __contains__(self, key: str) -> bool:
        return getattr(self, self._check(key)) is not None

    def setdefault(self, key: str, value: Any) -> Any:
        if getattr(self, self._check(key)) is None:
            setattr(self, key, value)
        return getattr(self, key)

    def update(self, other: dict | None = None, **kwargs) -> None:
        for key, value in {**(other or {}), **kwargs}.items():
            self[key] = value

    def keys(self):
        return [k for k in self.names() if getattr(self, k) is not None]

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def __iter__(self):
        return iter(self.keys())

    def __bool__(self) -> bool:
        return bool(self.keys())

    def to_json(self) -> dict:
        """Every declared field, unmeasured ones as null (so the report's keys do not depend on the run); {} if none."""
        if not self.keys():
            return {}
        return {k: jsonable(getattr(self, k)) for k in self.names()
                if k not in ("warnings", "summary", "out_of_memory", "isolation") or getattr(self, k) is not None}


@dataclass
class ProbeResult:
    """What one probe measured. ``metrics`` go into report.json; ``data`` stays in memory for diagnoses."""

    name: str
    status: str = "ok"  # ok | failed | skipped | inconclusive (its evidence would be too short to judge)
    seconds: float = 0.0
    metrics: "Metrics | dict" = field(default_factory=dict)  # the probe's typed Metrics (a dict for untyped probes)
    data: dict = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    error: dict | None = None  # {"type", "message", "where"} when the probe (or the user's code in it) raised
    reason: str | None = None  # why it was skipped

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        out = {"status": self.status, "seconds": round(self.seconds, 3), "metrics": jsonable(self.metrics)}
        if self.plots:
            out["plots"] = list(self.plots)
        if self.error:
            out["error"] = jsonable(self.error)
        if self.reason:
            out["reason"] = self.reason
        return out


class Evidence(dict):
    """Probe name -> ``ProbeResult``, plus the patient's static facts under ``facts``."""

    def __init__(self, *args, facts: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.facts: dict = facts or {}

    def ok(self, name: str) -> ProbeResult | None:
        """The probe's result if it ran successfully, else None."""
        result = self.get(name)
        return result if result is not None and result.ok else None


@dataclass
class Finding:
    code: str
    severity: str
    confidence: float
    title: str
    evidence: dict
    fix: str
    probes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    treatment: dict | None = None
    treatment_note: str | None = None  # why a cure exists but was not tried or judged (the budget)
    role: str = "cause"  # cause | symptom: a cause outranks the symptoms it explains
    explains: tuple[str, ...] = ()
    generic: bool = False  # a catch-all symptom (cannot-overfit-batch, loss-nonfinite, training-crashed)
    observed: bool = False  # a direct observation of the set-up (ranked with the confirmed unless refuted)
    priority: float = 0.0  # set by ranking
    explained_by: str | None = None  # the code of the finding that accounts for this one (set by ranking)
    after_cure: str | None = None    # found only on the copy cured of this code (cures compose)
    gone_after: str | None = None    # no longer found on the copy cured of this code (folded under it)
    cure: Any = field(default=None, repr=False, compare=False)  # the cure that confirmed it (in memory only)

    @property
    def confirmed(self) -> bool | None:
        """True when a cure was tried and worked, False when it was tried and did not, None when untried
        (or when the cure could not be judged)."""
        if not self.treatment or self.treatment.get("judged") is False:
            return None
        return bool(self.treatment.get("cured"))

    @property
    def status(self) -> str:
        """confirmed | refuted | suspected | inconclusive (SPEC 0.2)."""
        if self.treatment and self.treatment.get("judged") is False:
            return "inconclusive"
        return {True: "confirmed", False: "refuted", None: "suspected"}[self.confirmed]

    def to_json(self) -> dict:
        out = {"code": self.code, "severity": self.severity, "confidence": round(float(self.confidence), 3),
               "title": self.title, "evidence": jsonable(self.evidence), "fix": self.fix,
               "probes": list(self.probes), "plots": list(self.plots), "treatment": jsonable(self.treatment)}
        out["status"] = self.status
        out["explained_by"] = self.explained_by
        if self.after_cure:
            out["after_cure"] = self.after_cure
        if self.treatment_note:
            out["treatment_note"] = self.treatment_note
        return out


@dataclass
class Report:
    config: str
    verdict: str
    elapsed_seconds: float
    findings: list[Finding]
    probes: dict[str, ProbeResult]
    version: str = ""
    plan: dict = field(default_factory=dict)
    not_evaluated: list[dict] = field(default_factory=list)
    interrupted: bool = False
    patient: dict = field(default_factory=dict)
    out_dir: str | None = None
    evidence: Evidence | None = field(default=None, repr=False)  # in memory only, for notebooks and tests

    def to_json(self) -> dict:
        return {
            "tool": "nandoctor", "version": self.version, "config": self.config, "verdict": self.verdict,
            "elapsed_seconds": round(self.elapsed_seconds, 2),
            "findings": [f.to_json() for f in self.findings],
            "probes": {name: r.to_json() for name, r in self.probes.items()},
            "plan": jsonable(self.plan), "patient": jsonable(self.patient),
            "not_evaluated": jsonable(self.not_evaluated), "interrupted": self.interrupted,
        }

    def worst(self) -> str | None:
        return max((f.severity for f in self.findings), key=severity_rank, default=None)

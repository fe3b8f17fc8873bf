"""Diagnoses: pure functions from evidence to findings, one registered unit each.

A diagnosis is a subclass of ``Diagnosis`` that sets ``code``; one that can be proven by a cure
describes it in ``cures()`` (data, judged by a pure function) and the runner in ``treatments``
trains it. Defining it is
registering it: every module in this package is imported by ``load_all()``, so
adding a diagnosis means adding one file (code, title, thresholds, the evidence
it needs, the decision and its doc page together) plus its test.

The doc page (``doc``) has the sections *What it detects*, *Why it breaks
training*, *Evidence*, *Fix* and *Known false positives*; ``nandoctor explain
CODE`` prints it.
"""

from __future__ import annotations

import importlib
import pkgutil
import textwrap
from typing import ClassVar

from nandoctor.records import Evidence, Finding

REGISTRY: dict[str, "Diagnosis"] = {}

DOC_SECTIONS = ("What it detects", "Why it breaks training", "Evidence", "Fix", "Known false positives")


class Diagnosis:
    """Base class. Subclasses set the class attributes and implement ``check``."""

    code: ClassVar[str] = ""
    title: ClassVar[str] = ""
    severity: ClassVar[str] = "warning"   # default severity of its findings
    role: ClassVar[str] = "cause"         # cause | symptom
    requires: ClassVar[tuple[str, ...]] = ()   # probe names whose evidence it reads
    explains: ClassVar[tuple[str, ...]] = ()   # symptom codes this cause accounts for
    fix: ClassVar[str] = ""
    thresholds: ClassVar[dict[str, float]] = {}  # named thresholds; documented in the doc page
    doc: ClassVar[str] = ""
    accepts_failed: ClassVar[bool] = False  # evaluate even when a required probe failed (crash evidence)
    fallback: ClassVar[tuple[str, ...]] = ()  # when a required probe ran but was inconclusive or failed, judge from these
    generic: ClassVar[bool] = False  # a catch-all symptom: ranked below every specific finding of warning or above
    observed: ClassVar[bool] = False  # its evidence is a direct observation of the set-up (a layer built in forward(),
    #                                   a parameter the optimizer lacks, a NaN in the data), not a threshold on a
    #                                   curve: ranked with the confirmed findings unless its cure refutes it

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.code:
            if cls.code in REGISTRY and type(REGISTRY[cls.code]) is not cls:
                raise RuntimeError(f"diagnosis code {cls.code!r} is defined twice")
            REGISTRY[cls.code] = cls()

    # --- to implement ----------------------------------------------------------------
    def check(self, ev: Evidence) -> Finding | list[Finding] | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def cures(self, ctx, finding: Finding) -> list:
        """The cures to try for ``finding``, as data (``treatments.Cure``: a patient variant, what to
        measure, a pure judge), the most likely first; ``treatments`` runs them until one cures.
        ``ctx`` gives the patient and the evidence. Nothing trains, plots or reads the clock here."""
        return []

    def gone_with(self, finding: Finding, cause_treatment: dict) -> str | None:
        """For a symptom: whether the cure that confirmed its cause removed it too, read from that cure's two
        arms (``treatment.before``/``after`` and the ``protocol`` they were trained by). The rule that
        says so (for the report), or None when those runs cannot tell. Pure: nothing trains here."""
        return None

    # --- helpers for subclasses --------------------------------------------------------
    def finding(self, confidence: float, evidence: dict, *, title: str | None = None,
                severity: str | None = None, fix: str | None = None, probes=None, plots=None) -> Finding:
        return Finding(code=self.code, severity=severity or self.severity,
                       confidence=max(0.0, min(1.0, float(confidence))), title=title or self.title,
                       evidence=evidence, fix=fix or self.fix, probes=list(probes or self.requires),
                       plots=list(plots or []), role=self.role, explains=tuple(self.explains),
                       generic=self.generic, observed=self.observed)

    def page(self) -> str:
        """The doc page as printed by ``nandoctor explain``."""
        head = f"{self.code} — {self.title}\n(severity: {self.severity}, role: {self.role}, " \
               f"evidence from: {', '.join(self.requires) or 'whichever probes ran'})\n"
        body = textwrap.dedent(self.doc).strip()
        if self.thresholds:
            body += "\n\n## Thresholds\n" + "\n".join(f"- `{k}` = {v}" for k, v in self.thresholds.items())
        return head + "\n" + body + "\n"


def load_all() -> dict[str, Diagnosis]:
    """Import every module in this package (which registers its diagnoses) and return the registry."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return REGISTRY


def get(code: str) -> Diagnosis | None:
    return load_all().get(code)

"""Ranking: the most likely root cause first.

1. Each finding gets a priority: severity x confidence, a cause weighs more than a
   symptom.
2. Differential diagnosis sorts by what the cures showed before the priority: a finding
   confirmed by its cure outranks every suspected one, and one whose cure was tried and
   did not help (``refuted``) drops below them. ``info`` findings stay last. A finding that is
   a direct observation of the set-up (``observed``: a layer built in ``forward()``, a
   parameter the optimizer lacks, NaN in the data) ranks with the confirmed ones until a cure
   refutes it, and may lead the symptoms it explains; refuted, it ranks with the suspected ones (the
   cure showed that the defect is not what breaks this training, not that it is not there).
3. Within each of those tiers, catch-all symptoms (``generic``: cannot-overfit-batch,
   loss-nonfinite, training-crashed) go below every specific finding of warning or above:
   they are what is left when nothing more specific explains the failure.
4. A cause is moved above every symptom it explains (``Diagnosis.explains``), even one of
   higher severity: a diverging loss is a symptom, a wrong loss pairing is a cause. A refuted
   cause does not move, and a suspected cause does not jump over a confirmed symptom.
5. Each symptom is folded under the best-ranked cause above it that explains it
   (``explained_by``; the cause whose cure removed it, ``treatment.via``, where there is one),
   unless that cause was refuted or the symptom is still found after its
   cure (``treatment.remaining``); a finding that is gone once the top
   cause is cured (``gone_after``, from the battery run again on the cured copy) is folded
   under that cause.
6. The verdict is the worst severity found; ``healthy`` when nothing at warning or above.
"""

from __future__ import annotations

from nandoctor.records import Finding, severity_rank

SEVERITY_WEIGHT = {"critical": 3.0, "warning": 2.0, "info": 1.0}
ROLE_WEIGHT = {"cause": 1.0, "symptom": 0.7}
CONFIRMED_WEIGHT = {True: 1.35, None: 1.0, False: 0.8}
TIER = {True: 0, None: 1, False: 2}   # confirmed, suspected (or inconclusive), refuted


def priority(f: Finding) -> float:
    return (SEVERITY_WEIGHT.get(f.severity, 1.0) * (0.4 + 0.6 * f.confidence)
            * ROLE_WEIGHT.get(f.role, 1.0) * CONFIRMED_WEIGHT[f.confirmed])


def tier(f: Finding) -> int:
    if f.severity == "info":
        return 3
    if f.observed and f.confirmed is None:
        return 0  # seen in the set-up itself (no threshold to doubt): with the confirmed, until a cure refutes it
    if f.observed and f.confirmed is False:
        return 1  # a refuted cure shows it is not what breaks this training, not that the defect is not there
    return TIER[f.confirmed]


def _proven(f: Finding) -> bool:
    return bool(f.confirmed) or (f.observed and f.confirmed is None)


def _may_lead(cause: Finding, symptom: Finding) -> bool:
    """``cause`` may be moved above ``symptom``, which it explains."""
    if cause.severity == "info" or cause.confirmed is False:
        return False
    return not (symptom.confirmed and not _proven(cause))


def rank(findings: list[Finding]) -> list[Finding]:
    for f in findings:
        f.priority = round(priority(f), 4)
        f.explained_by = f.gone_after
    specific = any(not f.generic and f.severity != "info" for f in findings)
    ordered = sorted(findings, key=lambda f: (tier(f), f.after_cure is not None, specific and f.generic,
                                              -f.priority, f.code))
    # causes above the symptoms they explain: repeat until stable (the relation is small and acyclic)
    for _ in range(len(ordered)):
        moved = False
        for i, symptom in enumerate(ordered):
            causes = [j for j, c in enumerate(ordered) if j > i and symptom.code in c.explains and _may_lead(c, symptom)]
            if causes:
                j = causes[0]
                ordered.insert(i, ordered.pop(j))
                moved = True
                break
        if not moved:
            break
    # each symptom folded under the best-ranked cause above it that explains it
    for i, f in enumerate(ordered):
        if f.explained_by is not None:
            continue
        eligible = [c for c in ordered[:i] if f.code in c.explains and c.code != f.code
                    and c.confirmed is not False and c.severity != "info"
                    and f.code not in ((c.treatment or {}).get("remaining") or ())]
        via = (f.treatment or {}).get("via")  # confirmed with the cure of this cause: folded under it
        cause = next((c for c in eligible if c.code == via), eligible[0] if eligible else None)
        if cause is not None:
            f.explained_by = cause.code
    return ordered


def verdict(findings: list[Finding]) -> str:
    worst = max((severity_rank(f.severity) for f in findings), default=0)
    return {2: "critical", 1: "warning", 0: "healthy"}[worst]

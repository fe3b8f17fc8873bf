"""Ranking: the most likely root cause first.

1. Each finding gets a priority: severity x confidence, a cause weighs more than a
   symptom, a diagnosis confirmed by its cure more than a suspected one, and one
   whose cure was tried and failed less.
2. Catch-all symptoms (``generic``: cannot-overfit-batch, loss-nonfinite,
   training-crashed) go below every specific finding of warning or above: they are
   what is left when nothing more specific explains the failure.
3. A cause is moved above every symptom it explains (``Diagnosis.explains``), even
   one of higher severity: a diverging loss is a symptom, a wrong loss pairing is a cause.
4. The verdict is the worst severity found; ``healthy`` when nothing at warning or above.
"""

from __future__ import annotations

from nandoctor.records import Finding, severity_rank

SEVERITY_WEIGHT = {"critical": 3.0, "warning": 2.0, "info": 1.0}
ROLE_WEIGHT = {"cause": 1.0, "symptom": 0.7}
CONFIRMED_WEIGHT = {True: 1.35, None: 1.0, False: 0.8}


def priority(f: Finding) -> float:
    return (SEVERITY_WEIGHT.get(f.severity, 1.0) * (0.4 + 0.6 * f.confidence)
            * ROLE_WEIGHT.get(f.role, 1.0) * CONFIRMED_WEIGHT[f.confirmed])


def rank(findings: list[Finding]) -> list[Finding]:
    for f in findings:
        f.priority = round(priority(f), 4)
    specific = any(not f.generic and f.severity != "info" for f in findings)
    ordered = sorted(findings, key=lambda f: (specific and f.generic, -f.priority, f.code))
    # causes above the symptoms they explain: repeat until stable (the relation is small and acyclic)
    for _ in range(len(ordered)):
        moved = False
        for i, symptom in enumerate(ordered):
            causes = [j for j, c in enumerate(ordered) if j > i and symptom.code in c.explains
                      and c.severity != "info"]
            if causes:
                j = causes[0]
                ordered.insert(i, ordered.pop(j))
                moved = True
                break
        if not moved:
            break
    return ordered


def verdict(findings: list[Finding]) -> str:
    worst = max((severity_rank(f.severity) for f in findings), default=0)
    return {2: "critical", 1: "warning", 0: "healthy"}[worst]

"""report.md: the ranked diagnosis for humans, readable in a terminal or on a code host."""

from __future__ import annotations

import json
from pathlib import Path

from nandoctor.records import jsonable

ICON = {"critical": "🔴", "warning": "🟠", "info": "🔵"}


def fmt(value) -> str:
    value = jsonable(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) < 300 else text[:297] + "..."
    return str(value)


STATUS_WORDS = {"confirmed": "confirmed by its cure", "refuted": "refuted: its cure was tried and did not help",
                "suspected": "suspected", "inconclusive": "inconclusive: its cure could not be judged in time"}


def status_of(finding) -> str:
    words = STATUS_WORDS[finding.status]
    if finding.explained_by:
        words += f"; explained by {finding.explained_by}"
    if finding.after_cure:
        words += f"; found after the cure for {finding.after_cure}"
    return words


def healthy_sentence(report) -> str:
    """What "no finding" means for this run: every probe ran, or only those that did say so."""
    unjudged = [n for n, r in report.probes.items() if r.status == "inconclusive"]
    if not unjudged:
        return "No problem found: the set-up trains as it should on every probe that ran."
    return (f"No problem found by the probes that ran; {', '.join(unjudged)} could not reach the steps their "
            f"verdicts need in this budget, so what they check is not judged.")


def render(report) -> str:
    lines = [f"# nandoctor report: {report.verdict.upper()}", ""]
    facts = report.patient
    lines += [f"- config: `{report.config}`",
              f"- model: `{facts.get('model')}` ({facts.get('parameters', '?')} parameters, "
              f"{facts.get('trainable_parameters', '?')} trainable); loss: `{facts.get('loss')}`; "
              f"optimizer: `{facts.get('optimizer')}` lr={fmt(facts.get('lr'))}; batch size {facts.get('batch_size')}",
              f"- {len(report.findings)} finding(s) in {report.elapsed_seconds:.1f} s "
              f"(budget {fmt(report.plan.get('budget_seconds'))} s, step {fmt(report.plan.get('step_seconds'))} s)"]
    if facts.get("device_note"):
        lines.append(f"- device: {facts['device_note']}")
    if report.interrupted:
        lines.append("- **interrupted**: this is a partial report")
    lines.append("")
    if report.plan.get("note"):
        lines += [f"- **inconclusive**: {report.plan['note']}"]
        lines.append("")
    if not report.findings:
        lines += [healthy_sentence(report), ""]
    for i, f in enumerate(report.findings, 1):
        lines += [f"## {i}. {ICON.get(f.severity, '')} `{f.code}` — {f.title}", "",
                  f"**{f.severity}**, confidence {f.confidence:.2f}, {status_of(f)}. "
                  f"Probes: {', '.join(f.probes) or '—'}.", "",
                  f"**Fix:** {f.fix}", "", "| evidence | value |", "|---|---|"]
        for k, v in f.evidence.items():
            lines.append(f"| {k} | {fmt(v).replace('|', '/')} |")
        if f.treatment:
            t = f.treatment
            lines += ["", f"**Treatment tried:** {t.get('tried')} → "
                          f"{'cured' if t.get('cured') else 'not cured'}"
                          f" (before: {fmt(t.get('before'))}; after: {fmt(t.get('after'))})"]
            if t.get("remaining") is not None:
                still = ", ".join(f"`{c}` ({t.get('remaining_status', {}).get(c, '?')})" for c in t["remaining"])
                lines += ["", f"**Still wrong after this cure:** {still or 'nothing found'}"]
            if t.get("plot"):
                lines += ["", f"![treatment]({t['plot']})"]
        for p in f.plots:
            lines += ["", f"![{f.code}]({p})"]
        lines.append("")
    lines += ["## Probes", "", "| probe | status | seconds | notes |", "|---|---|---|---|"]
    for name, r in report.probes.items():
        note = r.reason or (f"{r.error.get('type')}: {r.error.get('message')}" if r.error else "") \
            or str(r.metrics.get("summary") or "")
        lines.append(f"| {name} | {r.status} | {r.seconds:.2f} | {note.replace('|', '/')} |")
    if report.not_evaluated:
        lines += ["", "Not evaluated (missing evidence): " +
                  ", ".join(f"`{n['code']}`" for n in report.not_evaluated)]
    lines.append("")
    return "\n".join(lines)


def write(report, out: Path) -> Path:
    path = out / "report.md"
    path.write_text(render(report), encoding="utf-8")
    return path

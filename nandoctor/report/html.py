"""report.html: one self-contained page (plots embedded as base64), every user string escaped."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from nandoctor.report.markdown import fmt, healthy_sentence, status_of

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .verdict{display:inline-block;padding:.15em .6em;border-radius:.4em;color:#fff}
.critical{background:#c62828}.warning{background:#ef6c00}.info{background:#1565c0}.healthy{background:#2e7d32}
.finding{border:1px solid #ddd;border-left:6px solid #999;border-radius:6px;padding:.6em 1em;margin:1em 0}
.finding.sev-critical{border-left-color:#c62828}.finding.sev-warning{border-left-color:#ef6c00}
.finding.sev-info{border-left-color:#1565c0}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px} img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.fix{background:#f1f8e9;padding:.4em .8em;border-radius:4px} .muted{color:#777;font-size:13px}
"""


def _img(out: Path, rel: str) -> str:
    """A plot embedded as base64: only PNG files inside the report folder (a report re-rendered from a
    report.json naming ``../../some/file`` never embeds a file from elsewhere)."""
    path = out / str(rel)
    try:
        inside = path.resolve().is_relative_to(Path(out).resolve())
    except (OSError, ValueError):
        inside = False
    if not inside or path.suffix.lower() != ".png" or not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(rel)}" src="data:image/png;base64,{data}">'


def render(report, out: Path) -> str:
    e = lambda v: escape(fmt(v))  # noqa: E731 - local shorthand
    facts = report.patient
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>nandoctor: {escape(report.verdict)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>nandoctor report <span class='verdict {escape(report.verdict)}'>{escape(report.verdict)}</span></h1>",
             f"<p class=muted>config <code>{escape(report.config)}</code> · model <code>{e(facts.get('model'))}</code> "
             f"({e(facts.get('parameters'))} parameters) · loss <code>{e(facts.get('loss'))}</code> · optimizer "
             f"<code>{e(facts.get('optimizer'))}</code> lr={e(facts.get('lr'))} · batch {e(facts.get('batch_size'))}"
             f" · {report.elapsed_seconds:.1f} s of a {e(report.plan.get('budget_seconds'))} s budget</p>"]
    if facts.get("device_note"):
        parts.append(f"<p class=muted>device: {escape(str(facts['device_note']))}</p>")
    if report.interrupted:
        parts.append("<p><b>Interrupted:</b> this is a partial report.</p>")
    if report.plan.get("note"):
        parts.append(f"<p><b>Inconclusive:</b> {escape(str(report.plan['note']))}</p>")
    if not report.findings:
        parts.append(f"<p>{escape(healthy_sentence(report))}</p>")
    for i, f in enumerate(report.findings, 1):
        rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{e(v)}</td></tr>" for k, v in f.evidence.items())
        parts.append(f"<div class='finding sev-{escape(f.severity)}'><h2>{i}. <code>{escape(f.code)}</code> "
                     f"{escape(f.title)}</h2><p><span class='verdict {escape(f.severity)}'>{escape(f.severity)}</span> "
                     f"confidence {f.confidence:.2f} · {escape(status_of(f))} · probes: {escape(', '.join(f.probes))}</p>"
                     f"<p class=fix><b>Fix:</b> {escape(f.fix)}</p><table>{rows}</table>")
        if f.treatment:
            t = f.treatment
            parts.append(f"<p><b>Treatment tried:</b> {escape(str(t.get('tried')))} → "
                         f"<b>{'cured' if t.get('cured') else 'not cured'}</b>. before: {e(t.get('before'))}; "
                         f"after: {e(t.get('after'))}</p>")
            if t.get("plot"):
                parts.append(_img(out, t["plot"]))
        parts.extend(_img(out, p) for p in f.plots)
        parts.append("</div>")
    parts.append("<h2>Probes</h2><table><tr><th>probe</th><th>status</th><th>seconds</th><th>notes</th></tr>")
    for name, r in report.probes.items():
        note = r.reason or (f"{r.error.get('type')}: {r.error.get('message')}" if r.error else "") \
            or str(r.metrics.get("summary") or "")
        parts.append(f"<tr><td>{escape(name)}</td><td>{escape(r.status)}</td><td>{r.seconds:.2f}</td>"
                     f"<td>{escape(note)}</td></tr>")
    parts.append("</table>")
    shown = {p for f in report.findings for p in f.plots}
    extra = [p for r in report.probes.values() for p in r.plots if p not in shown]
    if extra:
        parts.append("<h2>All probe plots</h2>" + "".join(_img(out, p) for p in extra))
    if report.not_evaluated:
        parts.append("<p class=muted>Not evaluated (missing evidence): " +
                     ", ".join(escape(n["code"]) for n in report.not_evaluated) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(report, out: Path) -> Path:
    path = out / "report.html"
    path.write_text(render(report, out), encoding="utf-8")
    return path

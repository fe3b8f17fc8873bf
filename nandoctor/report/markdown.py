"""report.md: the doctor's letter in Markdown that pastes cleanly into a GitHub issue.

The same letter as report.html (``letter.letter``): the verdict sentence, each top-level finding with
what we saw, its plot, the fix as a snippet, the cure's before/after table, the symptoms it explains and
what is still wrong after the fix; the appendix folded in ``<details>``. User strings are escaped so
that none becomes markup (``<``, ``>``, table bars) and code spans always close.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from nandoctor.records import jsonable
from nandoctor.report.figures import plot_name
from nandoctor.report.letter import STATUS_WORDS, letter  # noqa: F401  (STATUS_WORDS re-exported)
from nandoctor.report.letter import healthy_sentence as _healthy

ICON = {"critical": "🔴", "warning": "🟠", "info": "🔵", "healthy": "🟢"}


def fmt(value) -> str:
    value = jsonable(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) < 300 else text[:297] + "..."
    return str(value)


def healthy_sentence(report) -> str:
    """What "no finding" means for this run (a ``Report`` or a report.json document)."""
    return _healthy(report if isinstance(report, dict) else report.to_json())


def status_of(finding) -> str:
    words = STATUS_WORDS.get(finding.status, finding.status)
    if finding.explained_by:
        words += f"; explained by {finding.explained_by}"
    if finding.after_cure:
        words += f"; found after the cure for {finding.after_cure}"
    return words


def t(value) -> str:
    """Text: no HTML, no line breaks."""
    s = " ".join(str(value).split())
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cell(value) -> str:
    return t(value).replace("|", "\\|") or " "


def code(value) -> str:
    """An inline code span that closes whatever backticks the text holds."""
    s = " ".join(str(value).split())
    if not s:
        return ""
    fence = "`" * (max((len(m) for m in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def block(text: str, lang: str) -> list[str]:
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return [f"{fence}{lang}", *text.splitlines(), fence]


def _table(head: list[str], rows) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


def render(report) -> str:
    """The letter for ``report``: a report.json document (dict) or a ``Report``."""
    L = letter(report if isinstance(report, dict) else report.to_json())
    lines = [f"# nandoctor report: {L['verdict'].upper()}", "", f"**{t(L['sentence'])}**", "",
             f"{ICON.get(L['verdict'], '')} config {code(L['config'])} · {t(L['patient'])}"
             + (f" · {t(L['run'])}" if L["run"] else ""), ""]
    for note in L["notes"]:
        lines += [f"> {t(note)}", ""]
    for f in L["findings"]:
        lines += _finding(f)
    lines += _appendix(L)
    return "\n".join(lines) + "\n"


def _finding(f: dict) -> list[str]:
    lines = [f"## {f['n']}. {ICON.get(f['severity'], '')} {t(f['title'])}", "",
             f"**{t(f['severity'])}** · **{t(f['status'])}** · {code(f['code'])} · confidence {t(f['confidence'])}"
             + (f" · found after the cure for {code(f['after_cure'])}" if f["after_cure"] else ""), "",
             f"**What we saw.** {t(f['saw'])}", ""]
    if plot_name(f["plot"]):
        lines += [f"![{t(f['code'])}]({f['plot']})", ""]
    lines += [f"**The fix.** {t(f['fix'])}", ""]
    if f["snippet"]:
        lines += block(f["snippet"]["code"], f["snippet"]["lang"]) + [""]
    c = f["cure"]
    if c:
        lines += [f"**The cure, tried on a copy:** {t(c['tried'])} → **{t(c['verdict'])}**"
                  + (f". Rule: {t(c['judged_by'])}" if c["judged_by"] else ""), ""]
        if c["note"]:
            lines += [f"_{t(c['note'])}_", ""]
        if c["rows"]:
            lines += _table(["", *c["columns"]], c["rows"]) + [""]
        if c["attempts"]:
            lines += ["Cures tried in turn: " + "; ".join(f"{t(a)} ({b})" for a, b in c["attempts"]), ""]
        if plot_name(c["plot"]):
            lines += [f"![before and after the cure]({c['plot']})", ""]
    elif f["treatment_note"]:
        lines += [f"_Cure: {t(f['treatment_note'])}_", ""]
    if f["folded"]:
        lines += ["**Symptoms it explains:**", ""]
        lines += [f"- {code(g['code'])} {t(g['title'])} ({t(g['status'])})" for g in f["folded"]] + [""]
    r = f["remaining"]
    if r:
        lines += ["**What is still wrong after the fix:**", ""]
        if r["codes"]:
            lines += [f"- {code(c_)} {t(title)} ({t(status)})" for c_, status, title in r["codes"]]
        elif r["note"]:
            lines += [f"- _{t(r['note'])}_"]
        else:
            lines += ["- nothing: the battery, run again on the cured copy, found no other problem"]
        lines.append("")
    return lines


def _appendix(L: dict) -> list[str]:
    lines = ["<details>", "<summary>Appendix: every probe, its plan, its plots and the evidence</summary>", "",
             "### Probes", ""]
    lines += _table(["probe", "status", "seconds", "plan", "notes"],
                    [(p["name"], p["status"], p["seconds"], p["plan"], p["reason"] or p["error"] or p["summary"])
                     for p in L["probes"]]) + [""]
    for p in L["probes"]:
        lines += [f"#### {t(p['name'])} ({t(p['status'])}, {t(p['seconds'])} s)", ""]
        if p["reason"]:
            lines += [f"Inconclusive: {t(p['reason'])}", ""]
        if p["error"]:
            lines += [f"Error: {t(p['error'])}", ""]
        shown = [plot for plot in p["plots"] if plot_name(plot)]
        lines += [f"![{t(p['name'])}]({plot})" for plot in shown] + ([""] if shown else [])
        if p["metrics"]:
            lines += _table(["measurement", "value"], p["metrics"]) + [""]
    lines += ["### The evidence of every finding", ""]
    for e in L["evidence"]:
        lines += [f"#### {code(e['code'])} {t(e['title'])}", "",
                  f"{t(e['status'])}" + (f"; explained by {code(e['explained_by'])}" if e["explained_by"] else ""), ""]
        if e["rows"]:
            lines += _table(["evidence", "value"], e["rows"]) + [""]
    if L["not_evaluated"]:
        lines += ["Not evaluated: " + ", ".join(f"{code(n['code'])} ({t(n['reason'])})" for n in L["not_evaluated"]), ""]
    lines += ["</details>", ""]
    return lines


def write(report, out: Path) -> Path:
    path = Path(out) / "report.md"
    path.write_text(render(report), encoding="utf-8")
    return path

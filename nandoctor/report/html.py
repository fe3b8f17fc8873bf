"""report.html: the doctor's letter as one self-contained page.

Rendered from a Jinja2 template (``templates/letter.html``) with autoescaping on, so every string from
the user's set-up (class names, messages, file names) is text, never markup. Plots are embedded as
data URIs and a Content-Security-Policy forbids every request: the page loads nothing from anywhere.
The CSS reads at laptop width and on a phone, and prints.
"""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from pathlib import Path

from nandoctor.report.letter import letter

CSS = """
:root{--ink:#1d232a;--muted:#5f6b76;--line:#dde3e8;--crit:#b3261e;--warn:#b45309;--info:#1d4ed8;--ok:#1f7a3a}
*{box-sizing:border-box}
body{font:16px/1.55 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Liberation Sans","DejaVu Sans",sans-serif;color:var(--ink);
 max-width:60rem;margin:0 auto;padding:1.5rem 1.25rem 3rem;background:#fff}
h1{font-size:1.35rem;line-height:1.35;margin:.3rem 0 .6rem}h2{font-size:1.25rem;margin:0 0 .4rem}
h3{font-size:1rem;margin:1.1rem 0 .3rem;color:#2c3a47}
.kicker{margin:0;color:var(--muted);font-size:.85rem;letter-spacing:.04em;text-transform:uppercase}
.muted{color:var(--muted);font-size:.9rem}.note{background:#fff7e6;border-left:4px solid var(--warn);padding:.4rem .7rem}
.badge{display:inline-block;padding:.05rem .55rem;border-radius:1rem;color:#fff;font-size:.8rem;vertical-align:middle;
 text-transform:uppercase;letter-spacing:.03em;background:#6b7785}
.critical{background:var(--crit)}.warning{background:var(--warn)}.info{background:var(--info)}.healthy{background:var(--ok)}
.badge.status-confirmed{background:var(--ok)}.badge.status-refuted{background:#7a4d8c}.badge.status-suspected{background:#6b7785}
.badge.status-inconclusive{background:#8a6d1d}
.finding{border:1px solid var(--line);border-left:6px solid #9aa5b1;border-radius:8px;padding:1rem 1.2rem;margin:1.2rem 0}
.finding.sev-critical{border-left-color:var(--crit)}.finding.sev-warning{border-left-color:var(--warn)}
.finding.sev-info{border-left-color:var(--info)}.healthy-box{border-left-color:var(--ok)}
.tags{margin:.2rem 0 .4rem}.n{color:var(--muted)}
code{font:.88em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f3f5f7;padding:.05em .3em;border-radius:4px;
 overflow-wrap:anywhere}
pre.snippet{line-height:1.4;background:#f3f5f7;border:1px solid var(--line);border-radius:6px;padding:.7rem .9rem;overflow-x:auto;white-space:pre}
pre.snippet code{background:none;padding:0;overflow-wrap:normal}
table{border-collapse:collapse;font-size:.9rem;margin:.4rem 0;min-width:50%}
th,td{border:1px solid var(--line);padding:.25rem .55rem;text-align:left;vertical-align:top;overflow-wrap:break-word}
thead th{background:#f6f8fa;white-space:nowrap}table.cure td{font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto}figure{margin:.6rem 0}img{max-width:100%;height:auto;border:1px solid #eef1f4;border-radius:4px}
figcaption{color:var(--muted);font-size:.8rem}
td.status-ok{color:var(--ok)}td.status-failed{color:var(--crit)}td.status-inconclusive,td.status-skipped{color:var(--warn)}
.appendix{margin-top:2.5rem;border-top:2px solid var(--line);padding-top:1rem}.probe{margin:1rem 0 1.4rem}
details summary{cursor:pointer;color:var(--muted)}footer{margin-top:2rem}a{color:var(--info)}
@media (max-width:640px){body{font-size:15px;padding:1rem .75rem 2rem}h1{font-size:1.25rem}
 .finding{padding:.75rem .8rem}table{font-size:.82rem}}
@media print{body{max-width:none;padding:0;font-size:11pt}.finding{break-inside:avoid;page-break-inside:avoid}
 .appendix{break-before:page;page-break-before:always}details::details-content{content-visibility:visible;display:block}
 details>summary{list-style:none}a{color:inherit;text-decoration:none}
 img{max-height:9cm;width:auto}.badge{border:1px solid #000;color:#000;background:none!important}
 pre.snippet{white-space:pre-wrap}}
"""


@lru_cache(maxsize=1)
def _template():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("nandoctor.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=False, keep_trailing_newline=True)
    env.filters["ticks"] = ticks
    return env.get_template("letter.html")


def ticks(value) -> "Markup":
    """Text with its `backticked` names set as code: the text is escaped first, then only the code tags
    are added, so nothing of the user's becomes markup."""
    from markupsafe import Markup, escape
    escaped = str(escape(str(value)))
    return Markup(re.sub(r"`([^`<>]+)`", r"<code>\1</code>", escaped))


def data_uri(out: Path, rel) -> str:
    """A plot as a data URI: only PNG files inside the report folder (a report re-rendered from a
    report.json naming ``../../some/file`` never embeds a file from elsewhere); "" when there is none."""
    if not isinstance(rel, str):
        return ""
    path = Path(out) / rel
    try:
        inside = path.resolve().is_relative_to(Path(out).resolve())
    except (OSError, ValueError):
        inside = False
    if not inside or path.suffix.lower() != ".png" or not path.is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render(report, out: Path) -> str:
    """The page for ``report``: a report.json document (dict) or a ``Report``."""
    doc = report if isinstance(report, dict) else report.to_json()
    cache: dict[str, str] = {}

    def img(rel) -> str:
        key = str(rel)
        if key not in cache:
            cache[key] = data_uri(Path(out), rel)
        return cache[key]

    from markupsafe import Markup
    # the style sheet is ours, a constant: the one string not escaped (quotes in font names must stay quotes)
    return _template().render(L=letter(doc), css=Markup(CSS.strip()), img=img)


def write(report, out: Path) -> Path:
    path = Path(out) / "report.html"
    path.write_text(render(report, out), encoding="utf-8")
    return path

"""Write every report format into the output folder."""

from __future__ import annotations

from pathlib import Path

from nandoctor.report import html, json_report, markdown


def write_all(report, out: Path, json_only: bool = False) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_report.write(report, out)
    if not json_only:
        markdown.write(report, out)
        html.write(report, out)

"""Write every report format into the output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from nandoctor.report import html, json_report, markdown


def write_all(report, out: Path, elapsed: Callable[[], float] | None = None) -> None:
    """report.md and report.html, then report.json last, its ``elapsed_seconds`` read from ``elapsed``
    once the other files are written (so the contract's number counts the whole run)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markdown.write(report, out)
    html.write(report, out)
    if elapsed is not None:
        report.elapsed_seconds = elapsed()
    json_report.write(report, out)

"""report.json: the contract of SPEC section 3."""

from __future__ import annotations

import json
from pathlib import Path


def document(report) -> dict:
    """The report as report.json holds it (the letter is rendered from exactly this)."""
    return json.loads(json.dumps(report.to_json(), ensure_ascii=False))


def write(report, out: Path) -> Path:
    path = out / "report.json"
    path.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path

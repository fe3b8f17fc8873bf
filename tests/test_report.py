"""The report files: escaping, self-containment, the budget plan."""

import json

from nandoctor.records import Finding, ProbeResult, Report
from nandoctor.report import html, markdown
from patients import battery, make_patient


def test_html_escapes_user_strings_and_embeds_nothing_external(tmp_path):
    evil = "<script>alert('x')</script>"
    report = Report(config=evil, verdict="critical", elapsed_seconds=1.0, version="0",
                    findings=[Finding(code="c", severity="critical", confidence=0.9, title=evil,
                                      evidence={"layer": evil}, fix=evil)],
                    probes={"p": ProbeResult(name="p", status="failed",
                                             error={"type": "E", "message": evil})},
                    patient={"model": evil})
    page = html.render(report, tmp_path)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page
    assert "c" in markdown.render(report)


def test_plan_fits_the_budget_and_is_reported(tmp_path):
    report = battery(make_patient(), budget=8, out=tmp_path / "o")
    plan = json.loads((tmp_path / "o" / "report.json").read_text())["plan"]
    assert plan["budget_seconds"] == 8
    assert plan["step_seconds"] > 0
    # each probe is allowed at most what is left of the budget when it starts
    used = 0.0
    for name, probe in plan["probes"].items():
        assert probe["seconds_allowed"] <= 8 - used + 0.05, name
        used += probe["seconds_used"]
    assert report.probes["warmup"].status == "ok"

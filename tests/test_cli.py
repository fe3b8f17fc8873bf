"""End to end through the CLI: the three reports, the plots, exit codes, --help, explain."""

import json
from pathlib import Path

from typer.testing import CliRunner

from nandoctor.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_healthy_config_writes_all_reports(tmp_path):
    out = tmp_path / "rep"
    result = runner.invoke(app, ["diagnose", str(ROOT / "configs/classification.yaml"), "--out", str(out),
                                 "--budget", "25", "--probes", "overfit", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    assert data["tool"] == "nandoctor" and data["verdict"] == "healthy"
    assert {"version", "config", "elapsed_seconds", "findings", "probes"} <= set(data)
    assert data["probes"]["overfit"]["status"] == "ok"
    assert (out / "report.md").read_text().startswith("# nandoctor report: HEALTHY")
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="http' not in html
    assert (out / "plots" / "overfit.png").stat().st_size > 1000
    # the letter written again from the saved report is the same letter, to the byte
    again = runner.invoke(app, ["report", str(out / "report.json"), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    for name in ("report.md", "report.html", "plots/overfit.png"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


def test_fail_on_exits_1_when_a_finding_matches(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text((ROOT / "configs/classification.yaml").read_text()
                   .replace("examples.py", str(ROOT / "configs/examples.py")).replace("lr: 1.0e-3", "lr: 1.0e-9"))
    args = ["diagnose", str(cfg), "--out", str(tmp_path / "o"), "--budget", "15", "--probes", "overfit", "-q"]
    assert runner.invoke(app, args + ["--fail-on", "warning"]).exit_code == 1
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, args + ["--fail-on", "bogus"]).exit_code == 2


def test_help_teaches():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("diagnose", "scan-data", "lr-sweep", "explain"):
        assert word in result.output
    assert "Example" in runner.invoke(app, ["diagnose", "--help"]).output


def test_explain_prints_a_page_and_lists_codes():
    result = runner.invoke(app, ["explain", "cannot-overfit-batch"])
    assert result.exit_code == 0 and "## Fix" in result.output
    listing = runner.invoke(app, ["explain", "--list"])
    assert "cannot-overfit-batch" in listing.output
    bad = runner.invoke(app, ["explain", "cannot-overfit"])
    assert bad.exit_code == 2 and "Did you mean" in bad.output

"""The seed sample runs: their real cause ranks first (restricted probes, small budget)."""

from pathlib import Path

import pytest

import nandoctor

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"


@pytest.mark.parametrize("sample,code", [
    ("seed000_nll_raw_scores", "nll-on-raw-logits"),
    ("seed001_relu_output", "bounded-output-activation"),
])
def test_sample_run_ranks_its_cause_first(sample, code):
    report = nandoctor.diagnose(SAMPLES / sample / "config.yaml", probes=["outputs", "overfit"], budget=8,
                                treatments=False)
    assert report.findings[0].code == code, [f.code for f in report.findings]
    assert report.findings[0].severity == "critical"


def test_committed_sample_reports_rank_the_cause_first():
    import json
    for sample, code in (("seed000_nll_raw_scores", "nll-on-raw-logits"),
                         ("seed001_relu_output", "bounded-output-activation")):
        report = json.loads((SAMPLES / sample / "report" / "report.json").read_text())
        assert report["findings"][0]["code"] == code
        assert report["findings"][0]["status"] == "confirmed"

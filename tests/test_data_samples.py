"""The seed 004 sample runs: each config's patient, data scan only, small budget; the expected code first."""

from pathlib import Path

import pytest

import nandoctor

RUNS = Path(__file__).resolve().parents[1] / "sample_runs"


@pytest.mark.parametrize("run, code, probes", [
    ("seed004_csv_missing_values", "data-nonfinite", ["data_scan"]),
    ("seed004_csv_saved_index", "csv-index-column", ["data_scan"]),
    ("seed004_label_dtype", "target-out-of-range", ["data_scan"]),
    ("seed004_label_dtype", "target-out-of-range", ["overfit"]),  # from the crash message alone
])
def test_seed004_sample_run_ranks_its_code_first(run, code, probes):
    report = nandoctor.diagnose(RUNS / run / "config.yaml", probes=probes, budget=8, treatments=False)
    assert report.findings[0].code == code


def test_committed_reports_rank_the_expected_code_first():
    import json
    expected = {"seed004_csv_missing_values": "data-nonfinite", "seed004_csv_saved_index": "csv-index-column",
                "seed004_label_dtype": "target-out-of-range"}
    for run, code in expected.items():
        report = json.loads((RUNS / run / "report" / "report.json").read_text())
        assert report["findings"][0]["code"] == code
        assert report["probes"]["data_scan"]["metrics"]["samples_scanned"] > 0

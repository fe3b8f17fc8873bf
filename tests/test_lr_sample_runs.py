"""The LR sample runs (and the demo) diagnosed from their configs: the expected code ranks first."""

import pytest

import nandoctor
from patients import codes

CASES = [("sample_runs/lr_too_high/config.yaml", "lr-too-high"),
         ("sample_runs/lr_too_low/config.yaml", "lr-too-low"),
         ("sample_runs/demo/config.yaml", "lr-too-high")]


@pytest.mark.parametrize("config,code", CASES, ids=[c for _, c in CASES])
def test_sample_run_ranks_its_code_first(config, code):
    report = nandoctor.diagnose(config, probes=["overfit", "lr_sweep"], budget=15)
    assert codes(report)[0] == code
    assert report.findings[0].treatment["cured"] is True

"""The example configs of the training set-ups load, train as configured and come out healthy."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nandoctor.cli import app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

EXAMPLES = {
    "scheduler.yaml": {"scheduler": "OneCycleLR", "scheduler_interval": "step"},
    "mixed_precision.yaml": {"precision": "bf16", "grad_clip": 1.0, "accumulate": 2},
    "collate.yaml": {"collate_fn": "pad_batch"},
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_config_is_diagnosed_healthy(name, tmp_path):
    result = CliRunner().invoke(app, ["diagnose", str(CONFIGS / name), "--out", str(tmp_path), "--budget", "10",
                                      "--probes", "overfit,precision,schedule", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    for key, value in EXAMPLES[name].items():
        assert report["patient"][key] == value
    assert report["probes"]["overfit"]["status"] == "ok" and report["probes"]["overfit"]["metrics"]["memorised"]
    assert report["verdict"] != "critical", report["findings"]

"""The seed 002 sample run: a ResNet whose forward() builds its shortcut Conv2d on every call."""

from pathlib import Path

import nandoctor
from patients import codes

CONFIG = Path(__file__).resolve().parent.parent / "sample_runs" / "seed002_layer_in_forward" / "config.yaml"


def test_seed002_ranks_the_layer_built_in_forward_first():
    report = nandoctor.diagnose(CONFIG, probes=["structure"], budget=20, treatments=False)
    assert codes(report)[0] == "unregistered-module"
    top = report.findings[0]
    group = top.evidence["unregistered"][0]
    assert group["name"] == "adjBlock" and group["fresh_each_call"] is True
    assert ["weight", [64, 32, 1, 1]] in group["shapes"]
    assert top.evidence["call_to_call_change"] > 0.1

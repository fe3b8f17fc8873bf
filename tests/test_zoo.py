"""The whole battery on every patient of the diagnostic zoo (benchmarks/zoo.py).

Each sick patient must get its own code ranked first, each healthy one no critical
finding: the same check an outside harness makes, on every catalog code at once.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import nandoctor  # noqa: E402
from zoo import ZOO, judge  # noqa: E402

BUDGET = 30.0  # per patient; these tiny models finish every probe well inside it


@pytest.mark.parametrize("name, accepted, factory", ZOO, ids=[z[0] for z in ZOO])
def test_top_finding(name, accepted, factory):
    report = nandoctor.diagnose(factory(), budget=BUDGET)
    ok, top = judge(report, accepted)
    ranked = [(f.code, f.severity) for f in report.findings]
    assert ok, f"{name}: expected {sorted(accepted) or 'no critical finding'}, got {ranked}"
    broken = [n for n in report.not_evaluated if str(n.get("reason", "")).startswith("diagnosis error")]
    assert not broken, f"{name}: diagnoses that raised (a misread field of the typed evidence?): {broken}"

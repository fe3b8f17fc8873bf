"""The whole battery on every patient of the diagnostic zoo (benchmarks/zoo.py).

Each sick patient must get its own code ranked first, each healthy one no critical
finding: the same check an outside harness makes, on every catalog code at once. The suite
runs one patient per code and a few healthy ones; ``make bench`` runs the whole zoo.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import nandoctor  # noqa: E402
from zoo import ZOO, judge  # noqa: E402

BUDGET = 30.0  # per patient; these tiny models finish every probe well inside it


HEALTHY_IN_SUITE = 5  # the healthy patients the suite runs (the benchmark runs every one)


def representative(zoo):
    """The suite's share of the zoo: the first patient of each diagnosis code and the first healthy ones;
    the whole zoo (its variations on the same causes too) is ``benchmarks/bench_accuracy.py``'s."""
    seen, healthy, out = set(), 0, []
    for entry in zoo:
        name, accepted, _ = entry
        if not accepted:
            healthy += 1
            if healthy <= HEALTHY_IN_SUITE:
                out.append(entry)
        elif not set(accepted) <= seen:
            seen |= set(accepted)
            out.append(entry)
    return out


SUITE = representative(ZOO)


@pytest.mark.parametrize("name, accepted, factory", SUITE, ids=[z[0] for z in SUITE])
def test_top_finding(name, accepted, factory):
    report = nandoctor.diagnose(factory(), budget=BUDGET)
    ok, top = judge(report, accepted)
    ranked = [(f.code, f.severity) for f in report.findings]
    assert ok, f"{name}: expected {sorted(accepted) or 'no critical finding'}, got {ranked}"
    broken = [n for n in report.not_evaluated if str(n.get("reason", "")).startswith("diagnosis error")]
    assert not broken, f"{name}: diagnoses that raised (a misread field of the typed evidence?): {broken}"

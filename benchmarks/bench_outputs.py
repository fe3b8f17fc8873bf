"""Output/loss pairing: how fast and how well the static outputs probe finds the cause.

Two measurements, each against a baseline run in the same process:

1. accuracy: on the tiny sick patients of tests/test_outputs.py, the share that get their
   pairing code ranked first with the outputs probe, against the overfit probe alone (the
   foundation battery), and the healthy patients that get a pairing finding (false positives);
2. speed: seconds the outputs probe takes against the overfit probe on the same patient
   (the seed 000 sample), i.e. what it costs to name the cause before any training.

Run: python benchmarks/bench_outputs.py  (make bench)
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import nandoctor  # noqa: E402
from test_outputs import HEALTHY, PAIRING_CODES, SICK  # noqa: E402

BUDGET = 6.0   # seconds per patient: the probes size themselves to it


def first_codes(probes: list[str]) -> tuple[int, int]:
    """(sick patients whose code ranks first, healthy patients with a pairing finding)."""
    hits = 0
    for name, (code, make) in SICK.items():
        report = nandoctor.diagnose(make(), probes=probes, budget=BUDGET, treatments=False)
        hits += bool(report.findings) and report.findings[0].code == code
    false_pos = 0
    for name, make in HEALTHY.items():
        report = nandoctor.diagnose(make(), probes=probes, budget=BUDGET, treatments=False)
        false_pos += bool(PAIRING_CODES & {f.code for f in report.findings})
    return hits, false_pos


def probe_seconds(config: Path, probe: str, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        report = nandoctor.diagnose(config, probes=[probe], budget=60, treatments=False)
        best = min(best, report.probes[probe].seconds)
    return best


def main() -> None:
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    # 1. accuracy, with and without the outputs probe
    t0 = time.perf_counter()
    with_hits, with_fp = first_codes(["outputs", "overfit"])
    base_hits, base_fp = first_codes(["overfit"])
    n_sick, n_healthy = len(SICK), len(HEALTHY)
    print(f"sick patients with their code ranked first: outputs+overfit {with_hits}/{n_sick}, "
          f"overfit alone (baseline) {base_hits}/{n_sick}; ratio {with_hits / max(base_hits, 1):.1f}x "
          f"(baseline {'finds none' if base_hits == 0 else base_hits})")
    print(f"healthy patients with a pairing finding: {with_fp}/{n_healthy} (baseline {base_fp}/{n_healthy})")
    # 2. speed: the static probe against one overfit probe on the seed 000 sample
    config = ROOT / "sample_runs" / "seed000_nll_raw_scores" / "config.yaml"
    outputs_s, overfit_s = probe_seconds(config, "outputs"), probe_seconds(config, "overfit")
    print(f"seed000: outputs probe {outputs_s:.3f} s, overfit probe {overfit_s:.3f} s "
          f"-> ratio {outputs_s / overfit_s:.3f} (the cause is named at {100 * outputs_s / overfit_s:.1f}% "
          f"of the cost of one overfit run)")
    print(f"[{time.perf_counter() - t0:.1f} s]")


if __name__ == "__main__":
    main()

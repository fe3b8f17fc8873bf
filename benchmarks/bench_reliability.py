"""What the reliability guards cost, against baselines measured in the same run (CPU).

1. The loading watchdog: a DataLoader pass over a Python map-style dataset through ``watched(...)``
   (a timer armed and disarmed around every sample) against the same pass without it. (A plain
   TensorDataset is not watched: indexing tensors cannot hang.)
2. Process isolation: a worker's start (spawn, imports, building the patient from the config)
   in plain training steps of the same patient; then, per probe, its wall time run in the worker
   against the same probe run in this process with the same allowance, and the round-trip
   overhead (sending the context and the earlier results, pickling the result back).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from nandoctor import isolation, probes as probe_pkg, watchdog  # noqa: E402
from nandoctor.config import load_config  # noqa: E402
from nandoctor.faults import run_guarded  # noqa: E402
from nandoctor.loading import build_patient  # noqa: E402
from nandoctor.probes import ProbeContext  # noqa: E402
from nandoctor.records import Evidence  # noqa: E402

CONFIG = ROOT / "configs" / "classification.yaml"
PROBES = ("warmup", "structure", "outputs", "overfit", "gradients", "lr_sweep")
SECONDS = 2.0      # allowance of each probe, the same in both runs
REPEATS = 5


class Rows(Dataset):
    """A map-style dataset in Python (a list of samples): what most users' datasets look like."""

    def __init__(self, n: int):
        self.rows = [(torch.randn(16), i % 3) for i in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def loading_overhead() -> None:
    data = Rows(4096)

    def one_pass(dataset) -> float:
        t0 = time.perf_counter()
        for _ in DataLoader(dataset, batch_size=64):
            pass
        return time.perf_counter() - t0

    plain = statistics.median(one_pass(data) for _ in range(REPEATS))
    with watchdog.limit(30):
        guarded = statistics.median(one_pass(watchdog.watched(data)) for _ in range(REPEATS))
    print(f"watchdog: DataLoader pass {guarded / plain:.2f}x the unwatched pass "
          f"({1e6 * (guarded - plain) / len(data):.1f} us per sample; {1e3 * plain:.0f} ms plain)")


def step_seconds(patient) -> float:
    model = patient.new_model()
    opt = patient.make_optimizer(model)
    batch = patient.fixed_batch()
    patient.step(model, opt, batch)
    t0 = time.perf_counter()
    for _ in range(20):
        patient.step(model, opt, batch)
    return (time.perf_counter() - t0) / 20


def battery_pass(run_one) -> dict[str, tuple[float, float]]:
    """name -> (wall seconds, round-trip overhead) of every probe in PROBES, one after the other."""
    out, evidence = {}, Evidence()
    for name in PROBES:
        t0 = time.perf_counter()
        evidence[name] = result = run_one(name, evidence)
        out[name] = (time.perf_counter() - t0, (result.metrics.get("isolation") or {}).get("overhead_seconds", 0.0))
    return out


def isolation_cost() -> None:
    patient = build_patient(load_config(CONFIG), device="cpu")
    step = step_seconds(patient)
    registry = probe_pkg.load_all()

    def ctx(evidence):
        return ProbeContext(patient=patient, seconds=SECONDS, step_time=step, evidence=evidence)

    here = [battery_pass(lambda n, ev: run_guarded(registry[n], ctx(ev))) for _ in range(2)]
    worker = isolation.Worker(isolation.recipe(patient))
    try:
        assert worker.ready(), worker.startup_error
        there = [battery_pass(lambda n, ev: worker.run(registry[n], ctx(ev))) for _ in range(2)]
    finally:
        worker.close()
    first_extra = sum(there[0][n][0] - there[1][n][0] for n in PROBES)
    print(f"isolation: worker start {worker.startup_seconds:.2f} s = {worker.startup_seconds / step:.0f} training "
          f"steps of {1e3 * step:.1f} ms, and {first_extra:.2f} s more on its first pass (first calls in a fresh "
          "interpreter)")
    for n in PROBES:
        (wall, trip), (base, _) = there[1][n], here[1][n]
        print(f"  {n:<10} isolated/in-process {wall / base:.2f}x  ({wall:.3f} s vs {base:.3f} s, "
              f"round trip {1e3 * trip:.0f} ms)")
    total_iso, total = sum(there[1][n][0] for n in PROBES), sum(here[1][n][0] for n in PROBES)
    print(f"  all probes, warm: {total_iso / total:.3f}x; mean round trip "
          f"{1e3 * statistics.mean(there[1][n][1] for n in PROBES):.0f} ms per probe")


if __name__ == "__main__":
    torch.set_num_threads(1)
    loading_overhead()
    isolation_cost()

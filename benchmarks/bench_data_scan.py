"""Data-scan benchmark: `nandoctor scan-data` against a plain batch_size=1 loop, whole processes.

The seeds' advice for a loss that is NaN from the first step: "set batch_size=1, shuffle off,
and walk through the data sample by sample". This benchmark times, in one run and on the same
map-style dataset of N >= 200,000 samples (a Python ``__getitem__``, a few planted NaN samples):

- baseline: a fresh Python process that builds the dataset and the model and loops a
  ``DataLoader(batch_size=1, shuffle=False)`` over every sample: forward, loss, finite checks
  (eval mode, no_grad: the cheapest honest version of the advice);
- ours: a fresh ``python -m nandoctor scan-data CONFIG`` process (warm-up, short training,
  per-feature statistics, per-sample losses of two models, gradient norms, plots, report).

Both times include interpreter start-up and imports. It checks that both find the same bad
samples and prints the speed ratio, and the peak memory (max RSS) of our scan at several
dataset sizes, which must not grow with the size (the dataset makes its samples on the fly).

Run: python benchmarks/bench_data_scan.py [--n 200000] [--sizes 50000,200000,800000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 10.0       # the target: at least 10x faster than the batch_size=1 loop
FLAT_MEMORY = 1.15        # peak memory at the largest size at most this times the smallest: "does not grow"

DATASET = '''
"""A map-style dataset of N samples made on the fly from a small table (memory constant in N),
with NaN planted in a few samples, and a small MLP classifier."""
import torch
from torch import nn
from torch.utils.data import Dataset

TABLE_ROWS = 1024


def bad_indices(n, count=24):
    gen = torch.Generator().manual_seed(123)
    return sorted(set(torch.randint(0, n, (count,), generator=gen).tolist()))


class Rows(Dataset):
    def __init__(self, n=200000, features=64, classes=10):
        gen = torch.Generator().manual_seed(0)
        self.table = torch.randn(TABLE_ROWS, features, generator=gen)
        self.labels = torch.randint(0, classes, (TABLE_ROWS,), generator=gen)
        self.n, self.features = n, features
        self.bad = set(bad_indices(n))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = self.table[i % TABLE_ROWS]
        if i in self.bad:
            x = x.clone()
            x[i % self.features] = float("nan")
        return x, self.labels[i % TABLE_ROWS]


def in_memory(n=200000, features=64, classes=10):
    """The same kind of samples held in memory as tensors (what CSVDataset gives for a CSV file)."""
    from torch.utils.data import TensorDataset
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    for i in bad_indices(n):
        x[i, i % features] = float("nan")
    return TensorDataset(x, y)


def mlp(features=64, hidden=128, classes=10):
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))
'''

BASELINE = '''
import json, sys
import torch
from torch import nn
from torch.utils.data import DataLoader
sys.path.insert(0, sys.argv[1])
import rows

torch.manual_seed(0)
make = rows.Rows if sys.argv[4] == "Rows" else rows.in_memory
data, model, loss_fn = make(n=int(sys.argv[2])), rows.mlp(), nn.CrossEntropyLoss()
model.eval()
bad = []
with torch.no_grad():
    for i, (x, y) in enumerate(DataLoader(data, batch_size=1, shuffle=False)):
        loss = loss_fn(model(x), y)
        if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(loss)):
            bad.append(i)
json.dump(bad, open(sys.argv[3], "w"))
'''

CONFIG = '''
model: {_target_: rows.py:mlp}
data:
  train: {_target_: rows.py:%s, n: %d}
  batch_size: 64
loss: torch.nn.CrossEntropyLoss
optimizer: {_target_: torch.optim.Adam, lr: 1.0e-3}
'''


def run(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit status) of one whole child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode()[-2000:])
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def ours(folder: Path, kind: str, n: int, env: dict) -> tuple[float, float, dict]:
    cfg = folder / f"config_{kind}_{n}.yaml"
    cfg.write_text(CONFIG % (kind, n))
    out = folder / f"report_{kind}_{n}"
    seconds, rss, rc = run([sys.executable, "-m", "nandoctor", "scan-data", str(cfg), "--out", str(out),
                            "--budget", "600", "--quiet"], env)
    assert rc == 0, f"scan-data exited {rc}"
    report = json.loads((out / "report.json").read_text())
    return seconds, rss, report


def compare(folder: Path, kind: str, n: int, env: dict) -> bool:
    """Time the baseline loop and our scan on one dataset; print the ratio; True when both found the same."""
    from rows import bad_indices
    base_s, base_rss, rc = run([sys.executable, str(folder / "baseline.py"), str(folder), str(n),
                                str(folder / "bad.json"), kind], env)
    assert rc == 0, "the baseline loop failed"
    base_bad = json.loads((folder / "bad.json").read_text())
    our_s, our_rss, report = ours(folder, kind, n, env)
    m = report["probes"]["data_scan"]["metrics"]
    our_bad = m["nonfinite"]["indices"]
    same = base_bad == our_bad == bad_indices(n)
    ratio = base_s / our_s
    label = {"Rows": "Python __getitem__ dataset", "in_memory": "in-memory tensor dataset (as CSVDataset)"}[kind]
    print(f"== {label}: {n} samples, {len(base_bad)} planted NaN samples")
    print(f"   baseline batch_size=1 loop : {base_s:7.2f} s  peak RSS {base_rss:7.1f} MiB")
    print(f"   nandoctor scan-data        : {our_s:7.2f} s  peak RSS {our_rss:7.1f} MiB  "
          f"({m['samples_scanned']} samples scanned: {m['sampling']}; loading by {m['loading']})")
    print(f"   speed ratio (baseline / ours): {ratio:.1f}x  (target >= {TARGET_RATIO:.0f}x: "
          f"{'met' if ratio >= TARGET_RATIO else 'not met'})")
    print(f"   same bad samples found: {'yes' if same else 'NO'} ({len(our_bad)}: {our_bad[:6]} ...)")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="samples in the timed datasets (>= 200,000)")
    parser.add_argument("--sizes", default="50000,200000,800000", help="dataset sizes for the memory check")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    import torch
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "rows.py").write_text(DATASET)
        (folder / "baseline.py").write_text(BASELINE)
        sys.path.insert(0, str(folder))
        # 1. speed: the same dataset through both, for a Python dataset and an in-memory one
        same = [compare(folder, kind, args.n, env) for kind in ("Rows", "in_memory")]
        # 2. peak memory of our scan at several sizes of the Python dataset (its samples are made on the fly)
        peaks = {}
        for n in [int(s) for s in args.sizes.split(",") if s]:
            seconds, rss, rep = ours(folder, "Rows", n, env)
            peaks[n] = rss
            scanned = rep["probes"]["data_scan"]["metrics"]["samples_scanned"]
            print(f"memory: {n:>9} samples -> peak RSS {rss:7.1f} MiB ({scanned} scanned, {seconds:.1f} s)")
        growth = max(peaks.values()) / min(peaks.values())
        print(f"peak memory, largest / smallest size: {growth:.2f}x "
              f"({'flat' if growth <= FLAT_MEMORY else 'GROWS'}: threshold {FLAT_MEMORY}x)")
        if not all(same):
            sys.exit("the scan and the loop found different bad samples")


if __name__ == "__main__":
    main()

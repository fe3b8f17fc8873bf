"""Data-scan benchmark: `nandoctor scan-data` against a plain batch_size=1 loop, whole processes.

The seeds' advice for a loss that is NaN from the first step: "set batch_size=1, shuffle off,
and walk through the data sample by sample". This benchmark times, in one run, on the same
dataset of N >= 200,000 samples with a few planted NaN samples (two kinds: a Python
``__getitem__`` that makes its samples on the fly, and tensors in memory as CSVDataset gives):

- baseline "training loop": a fresh Python process that follows the advice literally: a
  ``DataLoader(batch_size=1, shuffle=False)`` through the training step (forward, loss, a finite
  check that records the sample and skips its step, backward, optimizer step);
- baseline "forward-only loop": the cheapest version of it (eval mode, no_grad, forward and loss);
- ours: a fresh ``python -m nandoctor scan-data CONFIG`` process (warm-up, short training,
  per-feature statistics, per-sample losses of two models, gradient norms, plots, report).

All times include interpreter start-up and imports; every process gets one intra-op thread. It
checks that every process finds the same bad samples, prints the speed ratios, and prints the peak
memory (max RSS) of our scan at several dataset sizes of the on-the-fly dataset, which must not
grow with the size.

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

folder, n, out, kind, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
torch.manual_seed(0)
data = rows.Rows(n=n) if kind == "Rows" else rows.in_memory(n=n)
model, loss_fn = rows.mlp(), nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
bad = []
if mode == "train":  # the seeds' advice: train with batch_size=1, shuffle off, watch the loss of each sample
    model.train()
    for i, (x, y) in enumerate(DataLoader(data, batch_size=1, shuffle=False)):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(loss)):
            bad.append(i)
            continue  # skip the step, or one NaN sample makes every later loss NaN
        loss.backward()
        optimizer.step()
else:  # the cheapest version: forward and loss only
    model.eval()
    with torch.no_grad():
        for i, (x, y) in enumerate(DataLoader(data, batch_size=1, shuffle=False)):
            loss = loss_fn(model(x), y)
            if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(loss)):
                bad.append(i)
json.dump(bad, open(out, "w"))
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


def compare(folder: Path, kind: str, n: int, env: dict, modes: tuple[str, ...]) -> bool:
    """Time both baseline loops and our scan on one dataset; print the ratios; True when all found the same."""
    from rows import bad_indices
    label = {"Rows": "Python __getitem__ dataset", "in_memory": "in-memory tensor dataset (as CSVDataset)"}[kind]
    print(f"== {label}: {n} samples, {len(bad_indices(n))} planted NaN samples")
    our_s, our_rss, report = ours(folder, kind, n, env)
    m = report["probes"]["data_scan"]["metrics"]
    our_bad = m["nonfinite"]["indices"]
    print(f"   nandoctor scan-data            : {our_s:7.2f} s  peak RSS {our_rss:6.1f} MiB  "
          f"({m['samples_scanned']} samples scanned: {m['sampling']}; loading by {m['loading']})")
    same = our_bad == bad_indices(n)
    names = {"train": "batch_size=1 training loop", "eval": "batch_size=1 forward-only loop"}
    for mode, what in ((m, names[m]) for m in modes):
        base_s, base_rss, rc = run([sys.executable, str(folder / "baseline.py"), str(folder), str(n),
                                    str(folder / "bad.json"), kind, mode], env)
        assert rc == 0, "the baseline loop failed"
        base_bad = json.loads((folder / "bad.json").read_text())
        same &= base_bad == our_bad
        ratio = base_s / our_s
        print(f"   baseline {what:<22}: {base_s:7.2f} s  peak RSS {base_rss:6.1f} MiB  -> ours is {ratio:.1f}x faster"
              f"  (target >= {TARGET_RATIO:.0f}x: {'met' if ratio >= TARGET_RATIO else 'not met'})")
    print(f"   same bad samples found by every process: {'yes' if same else 'NO'} ({len(our_bad)}: {our_bad[:6]} ...)")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="samples in the timed datasets (>= 200,000)")
    parser.add_argument("--sizes", default="50000,200000,800000", help="dataset sizes for the memory check")
    args = parser.parse_args()
    # one intra-op thread for every process: batch-1 loops cannot use more, and on a shared machine torch's
    # thread pool only adds contention (this handicaps our batched scan, if anything)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    import torch
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 torch thread per process, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "rows.py").write_text(DATASET)
        (folder / "baseline.py").write_text(BASELINE)
        sys.path.insert(0, str(folder))
        # 1. speed: the same dataset through both, for a Python dataset and an in-memory one
        # (the training loop, the slow one, only on the Python dataset: it is the seeds' case and keeps the run short)
        same = [compare(folder, "Rows", args.n, env, ("train", "eval")),
                compare(folder, "in_memory", args.n, env, ("eval",))]
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

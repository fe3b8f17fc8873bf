"""Data-scan benchmark: `nandoctor scan-data` against a plain batch_size=1 loop, whole processes.

The seeds' advice for a loss that is NaN from the first step: "set batch_size=1, shuffle off,
and walk through the data sample by sample". This benchmark times, in one run, on the same
dataset of N >= 200,000 samples (two kinds: a Python ``__getitem__`` that makes its samples on the
fly, and tensors in memory as CSVDataset gives) with 24 NaN samples spread over the whole set and
7 planted bad rows of mixed kinds in its first samples (NaN, Inf, rows scaled by 1e6 whose label
agrees with the model, a row scaled by 1e6 and one with a 1e5 feature whose labels do not, a label
out of range):

- baseline "training loop": a fresh Python process that follows the advice literally: a
  ``DataLoader(batch_size=1, shuffle=False)`` through the training step (forward, loss, a check that
  records the sample and skips its step when the input or the loss is not finite or the loss raises,
  backward, optimizer step), recording every sample's loss;
- baseline "forward-only loop": the cheapest version of it (eval mode, no_grad, forward and loss);
- ours: a fresh ``python -m nandoctor scan-data CONFIG`` process (warm-up, short training,
  per-feature statistics, per-sample losses of two models, input magnitudes, gradient norms, plots,
  report).

All times include interpreter start-up and imports; every process gets one intra-op thread; the CPU
time (user + system) of each process is printed beside its wall time, being less sensitive to what
else runs on the machine. A
batch_size=1 loop costs the same for every sample, so by default it walks the first
``--baseline-samples`` samples (the planted rows are among them) and its whole-process time for N
samples is extrapolated: its wall time plus its per-sample loop time for the samples it did not walk
(``--baseline-samples 0`` walks all N). It prints the speed ratios; how many of the 7 planted rows
each tool names (the baselines: a non-finite input or loss, a loss that raises, or a loss at least
100x the median sample's; ours: the sample indices of the report's findings); checks that every
process finds the same NaN/Inf samples; and prints the peak memory (max RSS) of our scan at several
sizes of the on-the-fly dataset, which must not grow with the size.

Run: python benchmarks/bench_data_scan.py [--n 200000] [--baseline-samples 5000] [--sizes 50000,500000]
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
TARGET_RATIO = 10.0       # the target: at least 10x faster than the batch_size=1 training loop
FLAT_MEMORY = 1.15        # peak memory at the largest size at most this times the smallest: "does not grow"
LOSS_RATIO = 100.0        # a baseline names a sample whose loss is this many times the median (our threshold too)

DATASET = '''
"""A map-style dataset of N samples made on the fly from a small table (memory constant in N), with
NaN planted in a few samples and 7 bad rows of mixed kinds in the first samples, and a small MLP."""
import torch
from torch import nn
from torch.utils.data import Dataset

TABLE_ROWS = 1024
FEATURES, CLASSES = 64, 10
PLANTED_AT = (500, 1200, 1900, 2600, 3300, 4000, 4700)  # inside the samples the baselines walk
KINDS = ("NaN in one feature", "Inf in one feature", "scaled by 1e6, label agrees",
         "scaled by 1e6, label agrees", "scaled by 1e6, wrong label", "one feature 1e5, wrong label",
         "label out of range")


def bad_indices(n, count=24):
    gen = torch.Generator().manual_seed(123)
    return sorted(set(torch.randint(0, n, (count,), generator=gen).tolist()) - set(PLANTED_AT))


def mlp(features=FEATURES, hidden=128, classes=CLASSES):
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def fresh_model():
    """The model nandoctor starts from (its factory under seed 0), to plant labels that agree with it."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return mlp().eval()


def table():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(TABLE_ROWS, FEATURES, generator=gen), torch.randint(0, CLASSES, (TABLE_ROWS,), generator=gen)


def short_trainings(x, y, runs=5, steps=50):
    """Copies of the fresh model trained as nandoctor's short training does (Adam, lr 1e-3, random batches of
    64), with different draws: a scaled row's label "agrees" when every copy predicts it too."""
    models = []
    for seed in range(1, runs + 1):
        gen = torch.Generator().manual_seed(seed)
        model = fresh_model().train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(steps):
            pick = torch.randint(0, x.shape[0], (64,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[pick]), y[pick]).backward()
            opt.step()
        models.append(model.eval())
    return models


def make_planted():
    """{index: (kind, x, y)} for the 7 planted rows (saved once by the benchmark, loaded by every process)."""
    x, y = table()
    trained = short_trainings(x, y)
    with torch.no_grad():
        logits = fresh_model()(x * 1e6)
        votes = torch.stack([m(x * 1e6).argmax(1) for m in trained])  # [runs, rows]
    top2 = logits.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]) / top2[:, 0].abs()
    sure = (votes == logits.argmax(1)).all(0)  # every trained copy agrees with the fresh model
    agree = iter((margin * sure).argsort(descending=True).tolist())
    rows = {}
    for k, (i, kind) in enumerate(zip(PLANTED_AT, KINDS)):
        r = i % TABLE_ROWS
        xi, yi = x[r].clone(), y[r].clone()
        if kind.startswith("NaN"):
            xi[k] = float("nan")
        elif kind.startswith("Inf"):
            xi[k] = float("inf")
        elif kind == "scaled by 1e6, label agrees":
            r = next(agree)
            xi, yi = x[r] * 1e6, logits[r].argmax()
        elif kind == "scaled by 1e6, wrong label":
            xi, yi = x[r] * 1e6, logits[r].argmin()
        elif kind.startswith("one feature"):
            xi[k] = 1e5
            with torch.no_grad():
                yi = fresh_model()(xi[None])[0].argmin()
        else:
            yi = torch.tensor(CLASSES)
        rows[i] = (kind, xi, yi)
    return rows


def planted(n):
    """The planted rows that fall inside a set of ``n`` samples."""
    import os
    rows = torch.load(os.path.join(os.path.dirname(__file__), "planted.pt"))
    return {i: r for i, r in rows.items() if i < n}


class Rows(Dataset):
    def __init__(self, n=200000):
        self.table, self.labels = table()
        self.n = n
        self.bad = set(bad_indices(n))
        self.planted = planted(n)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.planted:
            return self.planted[i][1], self.planted[i][2]
        x = self.table[i % TABLE_ROWS]
        if i in self.bad:
            x = x.clone()
            x[i % FEATURES] = float("nan")
        return x, self.labels[i % TABLE_ROWS]


def in_memory(n=200000):
    """The same samples held in memory as tensors (what CSVDataset gives for a CSV file)."""
    from torch.utils.data import TensorDataset
    data = Rows(n)
    x = data.table.repeat(-(-n // TABLE_ROWS), 1)[:n].clone()
    y = data.labels.repeat(-(-n // TABLE_ROWS))[:n].clone()
    for i in data.bad:
        x[i, i % FEATURES] = float("nan")
    for i, (_, xi, yi) in data.planted.items():
        x[i], y[i] = xi, yi
    return TensorDataset(x, y)
'''

BASELINE = '''
import json, sys, time
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
sys.path.insert(0, sys.argv[1])
import rows

folder, n, out, kind, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
walk = int(sys.argv[6])
torch.manual_seed(0)
data = rows.Rows(n=n) if kind == "Rows" else rows.in_memory(n=n)
walk = min(walk or n, n)
model, loss_fn = rows.mlp(), nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
bad, raised, losses = [], [], {}
t0, c0 = time.perf_counter(), time.process_time()
if mode == "train":  # the seeds' advice: train with batch_size=1, shuffle off, watch the loss of each sample
    model.train()
    for i, (x, y) in enumerate(DataLoader(Subset(data, range(walk)), batch_size=1, shuffle=False)):
        optimizer.zero_grad()
        try:
            loss = loss_fn(model(x), y)
        except Exception:
            raised.append(i)
            continue
        if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(loss)):
            bad.append(i)
            continue  # skip the step, or one NaN sample makes every later loss NaN
        losses[i] = float(loss.detach())
        loss.backward()
        optimizer.step()
else:  # the cheapest version: forward and loss only
    model.eval()
    with torch.no_grad():
        for i, (x, y) in enumerate(DataLoader(Subset(data, range(walk)), batch_size=1, shuffle=False)):
            try:
                loss = loss_fn(model(x), y)
            except Exception:
                raised.append(i)
                continue
            if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(loss)):
                bad.append(i)
            else:
                losses[i] = float(loss)
loop, loop_cpu = time.perf_counter() - t0, time.process_time() - c0
median = sorted(losses.values())[len(losses) // 2]
extreme = [i for i, v in losses.items() if v >= float(sys.argv[7]) * median]
json.dump({"nonfinite": bad, "named": sorted(bad + raised + extreme), "loop_seconds": loop, "loop_cpu": loop_cpu,
           "walked": walk}, open(out, "w"))
'''

CONFIG = '''
model: {_target_: rows.py:mlp}
data:
  train: {_target_: rows.py:%s, n: %d}
  batch_size: 64
loss: torch.nn.CrossEntropyLoss
optimizer: {_target_: torch.optim.Adam, lr: 1.0e-3}
'''


def run(cmd: list[str], env: dict) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in MiB, exit status) of one whole child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode()[-2000:])
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def ours(folder: Path, kind: str, n: int, env: dict) -> tuple[float, float, float, dict]:
    """(wall seconds, CPU seconds, peak RSS, report.json) of one ``nandoctor scan-data`` process."""
    cfg = folder / f"config_{kind}_{n}.yaml"
    cfg.write_text(CONFIG % (kind, n))
    out = folder / f"report_{kind}_{n}"
    seconds, cpu, rss, rc = run([sys.executable, "-m", "nandoctor", "scan-data", str(cfg), "--out", str(out),
                                 "--budget", "600", "--quiet"], env)
    assert rc == 0, f"scan-data exited {rc}"
    report = json.loads((out / "report.json").read_text())
    return seconds, cpu, rss, report


def named_by_report(report: dict) -> set[int]:
    """Every sample index a finding of the report names."""
    return {int(i) for f in report["findings"] for i in (f.get("evidence") or {}).get("sample_indices") or []}


def baseline(folder: Path, kind: str, n: int, mode: str, walk: int, env: dict) -> tuple[float, float, dict]:
    """(whole-process wall and CPU seconds for n samples, the loop's record); extrapolated when it walked fewer
    samples: plus its per-sample loop time for the samples it did not walk."""
    out = folder / "baseline.json"
    wall, cpu, _, rc = run([sys.executable, str(folder / "baseline.py"), str(folder), str(n), str(out), kind, mode,
                            str(walk), str(LOSS_RATIO)], env)
    assert rc == 0, "the baseline loop failed"
    rec = json.loads(out.read_text())
    rest = (n - rec["walked"]) / rec["walked"]
    return wall + rec["loop_seconds"] * rest, cpu + rec["loop_cpu"] * rest, rec


def compare(folder: Path, kind: str, n: int, walk: int, env: dict) -> tuple[bool, float]:
    """Time both baseline loops and our scan on one dataset; print the ratios and the planted rows each names.
    Returns (all found the same non-finite samples, our peak RSS)."""
    import rows
    label = {"Rows": "Python __getitem__ dataset", "in_memory": "in-memory tensor dataset (as CSVDataset)"}[kind]
    planted = rows.planted(n)
    print(f"== {label}: {n} samples, {len(rows.bad_indices(n))} NaN samples spread over the set and "
          f"{len(planted)} planted bad rows in its first {max(planted) + 1}")
    assert not walk or max(planted) < walk, "the baselines must walk every planted row"
    our_s, our_cpu, our_rss, report = ours(folder, kind, n, env)
    m = report["probes"]["data_scan"]["metrics"]
    our_bad = m["nonfinite"]["indices"]
    per = m.get("per_sample") or {}
    print(f"   nandoctor scan-data                  : {our_s:7.2f} s  (CPU {our_cpu:6.2f} s)  "
          f"peak RSS {our_rss:6.1f} MiB  "
          f"({m['samples_scanned']} samples scanned: {m['sampling']}; loading by {m['loading']}; a loss for "
          f"{per.get('losses', 0)} samples, a gradient norm for {per.get('grad_norms_for', 'none')})")
    nonfinite = sorted(set(rows.bad_indices(n)) | {i for i, (k, _, _) in planted.items() if "NaN" in k or "Inf" in k})
    same = our_bad == nonfinite
    names = {"nandoctor": named_by_report(report)}  # tool -> the sample indices it names
    for mode, what in (("train", "batch_size=1 training loop"), ("eval", "batch_size=1 forward-only loop")):
        base_s, base_cpu, rec = baseline(folder, kind, n, mode, walk, env)
        walked = rec["walked"]
        same &= rec["nonfinite"] == [i for i in our_bad if i < walked]
        names[what.split(" ", 1)[1]] = set(rec["named"])
        how = "all" if walked == n else f"{walked} walked in {rec['loop_seconds']:.1f} s, extrapolated"
        ratio = base_s / our_s
        target = f"  (target >= {TARGET_RATIO:.0f}x: {'met' if ratio >= TARGET_RATIO else 'NOT MET'})" \
            if mode == "train" else ""
        print(f"   baseline {what:<28}: {base_s:7.2f} s  (CPU {base_cpu:6.2f} s; {how})  -> ours is {ratio:.1f}x "
              f"faster, {base_cpu / our_cpu:.1f}x in CPU time{target}")
    print(f"   planted bad rows named (of {len(planted)}): "
          + ", ".join(f"{tool} {len(found & set(planted))}" for tool, found in names.items()))
    print(f"      {'index':>6}  {'planted row':<30}  " + "  ".join(f"{t:<18}" for t in names))
    for i, (kind_, _, _) in sorted(planted.items()):
        marks = "  ".join(f"{'named' if i in found else '-':<18}" for found in names.values())
        print(f"      {i:>6}  {kind_:<30}  {marks}")
    print(f"   same NaN/Inf samples found by every process: {'yes' if same else 'NO'} "
          f"({len(our_bad)}: {our_bad[:6]} ...)")
    return same, our_rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="samples in the timed datasets (>= 200,000)")
    parser.add_argument("--baseline-samples", type=int, default=5_000,
                        help="samples the batch_size=1 loops walk (their time is extrapolated to --n); 0: all")
    parser.add_argument("--sizes", default="50000,500000",
                        help="further dataset sizes for the memory check (the --n run is one of them)")
    args = parser.parse_args()
    # one intra-op thread for every process: batch-1 loops cannot use more, and on a shared machine torch's
    # thread pool only adds contention (this handicaps our batched scan, if anything)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    import torch
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 torch thread per process, "
          f"load average {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "rows.py").write_text(DATASET)
        (folder / "baseline.py").write_text(BASELINE)
        sys.path.insert(0, str(folder))
        import rows
        torch.save(rows.make_planted(), folder / "planted.pt")
        # 1. speed and planted rows: the same dataset through every tool, a Python dataset and an in-memory one
        same = [compare(folder, "in_memory", args.n, args.baseline_samples, env)[0]]
        ok, rss = compare(folder, "Rows", args.n, args.baseline_samples, env)
        same.append(ok)
        # 2. peak memory of our scan at several sizes of the Python dataset (its samples are made on the fly)
        peaks = {args.n: rss}
        print(f"memory: {args.n:>9} samples -> peak RSS {rss:7.1f} MiB (the run above)")
        for n in sorted({int(s) for s in args.sizes.split(",") if s} - {args.n}):
            seconds, _, rss, rep = ours(folder, "Rows", n, env)
            peaks[n] = rss
            scanned = rep["probes"]["data_scan"]["metrics"]["samples_scanned"]
            print(f"memory: {n:>9} samples -> peak RSS {rss:7.1f} MiB ({scanned} scanned, {seconds:.1f} s)")
        growth = max(peaks.values()) / min(peaks.values())
        print(f"peak memory, largest / smallest size: {growth:.2f}x "
              f"({'flat' if growth <= FLAT_MEMORY else 'GROWS'}: threshold {FLAT_MEMORY}x)")
    print(f"benchmark wall time {time.perf_counter() - t0:.0f} s")
    if not all(same):
        sys.exit("the scan and the loops found different NaN/Inf samples")


if __name__ == "__main__":
    main()

"""The whole battery on realistic patients (``realistic_patients.py``): GPT, transformer encoder,
ResNet-18, U-Net, GRU tagger and tabular MLP, each healthy and sick.

Prints one line per run: right or wrong (``OK``/``XX``), the expected codes, the ranked codes with
their severities, the warnings a healthy patient got, the LR sweep's suggestion, whether the
overfit probe memorised its batch, the elapsed time against the budget (the promise: within
budget + 5 s), the probes that did not finish ``ok`` with their reasons, and the model's bare
step time with the instrumented/bare ratio: the ``Recorder`` as the overfit probe attached it in
that run (activations on every k-th step for the steps it was planned), and with every step
measured (alternating blocks of 2k steps, or of the probe's whole run where it is fast; median).
Then a summary: passed N of M, the worst overrun of the budget.

``--stability NAME`` runs one patient three times, the third beside two busy CPU processes,
and says whether the ranked codes stayed the same.

    python benchmarks/bench_realistic.py --only gpt unet --budget 120 --dump out/
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's nandoctor, not an installed one

import torch  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.pipeline import DEFAULT_BUDGET  # noqa: E402
from nandoctor.probes.instrument import Recorder  # noqa: E402
from nandoctor.probes.overfit import MAX_STEPS, activation_every, probe_recorder  # noqa: E402
from realistic_patients import BY_NAME, REALISTIC  # noqa: E402
from zoo import judge  # noqa: E402

PROMISE = 5.0       # seconds a run may exceed its budget
TIMING_REPEATS = 3  # alternating bare/instrumented blocks
TIMING_BLOCKS = 2   # a timed block holds this many activation periods (k steps each), at least 3 steps
TIMING_WARMUP = 2   # untimed steps before the first block
BLOCK_SECONDS = 0.25  # a block of a fast model's steps holds up to the probe's run, this long at most


# --- step time ------------------------------------------------------------------------------


def _block(patient, model, optimizer, batch, steps: int) -> float:
    """Seconds per step over ``steps`` steps on the same batch."""
    start = time.perf_counter()
    for _ in range(steps):
        patient.step(model, optimizer, batch)
    return (time.perf_counter() - start) / steps


def step_times(patient, every: int, planned: int) -> tuple[float, float, float]:
    """(median bare step seconds, instrumented / bare with activations on every ``every``-th step,
    instrumented / bare with every step measured), from alternating blocks.

    A block holds at least 2k steps; on a model whose step is short it holds what the probe ran,
    ``planned`` steps (up to ``BLOCK_SECONDS`` of them): the probe attaches one Recorder for its whole
    run, and a block of a few milliseconds would time the attaching more than the steps."""
    model = patient.new_model()
    optimizer = patient.make_optimizer(model)
    batch = patient.fixed_batch()
    start = time.perf_counter()
    for _ in range(TIMING_WARMUP):
        patient.step(model, optimizer, batch)
    warm = (time.perf_counter() - start) / TIMING_WARMUP
    steps = max(3, TIMING_BLOCKS * every, min(planned, int(BLOCK_SECONDS / max(warm, 1e-6))) // every * every)
    makers = {"bare": lambda: None, "probe": lambda: probe_recorder(model, planned), "full": lambda: Recorder(model)}
    times: dict[str, list[float]] = {k: [] for k in makers}
    for _ in range(TIMING_REPEATS):
        for k, make in makers.items():
            recorder = make()
            if recorder is not None:
                recorder.attach_optimizer(optimizer)
            try:
                times[k].append(_block(patient, model, optimizer, batch, steps))
            finally:
                if recorder is not None:
                    recorder.detach()
    base = statistics.median(times["bare"])
    return base, statistics.median(times["probe"]) / base, statistics.median(times["full"]) / base


# --- reading a report -------------------------------------------------------------------------


def metric(report, probe: str, key: str):
    result = report.probes.get(probe)
    return None if result is None else result.metrics.get(key)


def not_ok(report) -> list[str]:
    """``name=status(reason)`` for every probe that did not finish ok."""
    out = []
    for name, result in report.probes.items():
        if result.status == "ok":
            continue
        why = result.reason or (result.error or {}).get("type") or ""
        out.append(f"{name}={result.status}({why})" if why else f"{name}={result.status}")
    return out


def explained_by(finding, ranked) -> str:
    """``", under CAUSE"`` when a finding ranked above it explains it (a folded symptom), else ``""``."""
    for cause in ranked:
        if cause is finding:
            return ""
        if finding.code in cause.explains and cause.severity != "info":
            return f", under {cause.code}"
    return ""


def describe(name: str, accepted: set[str], report, elapsed: float, budget: float) -> tuple[bool, str]:
    ok, _ = judge(report, accepted)
    ranked = ", ".join(f"{f.code}({f.severity}{explained_by(f, report.findings)})" for f in report.findings)
    ranked = ranked or "none"
    parts = [f"{'OK' if ok else 'XX'} {name}", f"expected {'/'.join(sorted(accepted)) or 'healthy'}",
             f"ranked [{ranked}]"]
    if not accepted:
        warnings = [f.code for f in report.findings if f.severity == "warning"]
        parts.append(f"warnings {', '.join(warnings) if warnings else 'none'}")
    lr = metric(report, "lr_sweep", "suggested_lr")
    parts.append(f"suggested lr {lr:.3g}" if isinstance(lr, (int, float)) else "suggested lr none")
    memorised = metric(report, "overfit", "memorised")
    parts.append(f"memorised {'-' if memorised is None else ('yes' if memorised else 'no')}")
    parts.append(f"{elapsed:.1f}s of {budget:.0f}s ({elapsed - budget:+.1f})")
    parts.append(f"not ok: {'; '.join(not_ok(report)) or 'none'}")
    return ok, " | ".join(parts)


# --- runs -------------------------------------------------------------------------------------


def diagnose_once(factory, budget: float):
    patient = factory()
    start = time.perf_counter()
    report = nandoctor.diagnose(patient, budget=budget)
    return report, time.perf_counter() - start


def dump(report, folder: Path | None, name: str) -> None:
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(report.to_json(), indent=1, default=str))


def run_all(names: list[str], budget: float, repeat: int, folder: Path | None) -> None:
    passed = runs = 0
    worst = float("-inf")
    for name in names:
        accepted, factory = BY_NAME[name]
        for k in range(repeat):
            report, elapsed = diagnose_once(factory, budget)
            ok, line = describe(name, accepted, report, elapsed, budget)
            passed, runs, worst = passed + ok, runs + 1, max(worst, elapsed - budget)
            if k == 0:
                planned = metric(report, "overfit", "planned_steps") or MAX_STEPS
                every = activation_every(planned)
                bare, ratio, full = step_times(factory(), every, planned)
            print(f"{line} | step {bare:.3f}s, instrumented {ratio:.2f}x as the overfit probe "
                  f"(every={every}), {full:.2f}x every step", flush=True)
            dump(report, folder, name if repeat == 1 else f"{name}.{k}")
    print(f"passed {passed} of {runs}; max(elapsed - budget) = {worst:+.1f}s "
          f"({'within' if worst <= PROMISE else 'OVER'} the +{PROMISE:.0f}s promise)")


def stability(name: str, budget: float, folder: Path | None) -> None:
    """Three runs of one patient; the third with two busy CPU processes beside it."""
    accepted, factory = BY_NAME[name]
    codes = []
    for k, busy_count in enumerate((0, 0, 2)):
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy_count)]
        try:
            report, elapsed = diagnose_once(factory, budget)
        finally:
            for process in busy:
                process.kill()
                process.wait()
        codes.append([(f.code, f.severity) for f in report.findings])
        _, line = describe(name, accepted, report, elapsed, budget)
        print(f"run {k + 1} ({busy_count} busy processes): {line}", flush=True)
        dump(report, folder, f"{name}.stability{k + 1}")
    same_codes = all([c for c, _ in run] == [c for c, _ in codes[0]] for run in codes)
    same_severities = all(run == codes[0] for run in codes)
    print(f"ranked codes identical over the three runs: {'yes' if same_codes else 'no'}; "
          f"with their severities: {'yes' if same_severities else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds per diagnosis")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME", help="these patients only")
    parser.add_argument("--repeat", type=int, default=1, help="diagnoses per patient")
    parser.add_argument("--stability", metavar="NAME", help="three runs of one patient, the third on a busy CPU")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--dump", type=Path, default=None, help="write each report.json here as NAME.json")
    parser.add_argument("--list", action="store_true", help="print the patients' names and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(name for name, _, _ in REALISTIC))
        return
    if args.threads:
        torch.set_num_threads(args.threads)  # two shared cores: more threads than cores only spin
    unknown = [n for n in (args.only or []) + ([args.stability] if args.stability else []) if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown patient(s) {unknown}; --list shows the names")
    if args.stability:
        stability(args.stability, args.budget, args.dump)
    else:
        run_all(args.only or [name for name, _, _ in REALISTIC], args.budget, args.repeat, args.dump)


if __name__ == "__main__":
    main()

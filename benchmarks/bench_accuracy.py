"""Diagnostic accuracy: the whole battery on every patient of the zoo.

Prints, per patient, the expected code, the top-ranked code and the time, then the
top-1 accuracy. ``--budget`` is per patient (default 30 s); ``--only NAME`` filters.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nandoctor  # noqa: E402
from zoo import ZOO, judge  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=30.0)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    rows, right = [], 0
    chosen = [z for z in ZOO if not args.only or z[0] in args.only]
    for name, accepted, factory in chosen:
        t0 = time.perf_counter()
        report = nandoctor.diagnose(factory(), budget=args.budget)
        ok, top = judge(report, accepted)
        right += ok
        second = report.findings[1].code if len(report.findings) > 1 else "-"
        rows.append((name, "/".join(sorted(accepted)) or "healthy", top, second, ok, time.perf_counter() - t0))
        print(f"{'OK ' if ok else 'XX '} {name:<22} expected {rows[-1][1]:<40} top {top:<28} "
              f"next {second:<26} {rows[-1][-1]:6.1f}s", flush=True)
    print(f"top-1 accuracy: {right}/{len(chosen)} = {right / max(1, len(chosen)):.0%}")


if __name__ == "__main__":
    main()

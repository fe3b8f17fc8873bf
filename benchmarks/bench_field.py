"""The whole battery on every patient of the field zoo (``field_zoo.py``): faults ported from public reports.

One row per patient: right or wrong (``OK``/``XX``; ``gap`` for a patient the tool is known not to handle
yet), the expected codes, the top three findings with their severity and status (confirmed by a cure,
refuted by one, suspected), and the seconds the run took. Then the totals:

- top-1: sick patients whose first finding is an accepted code (and, where two faults meet, the other
  one among the top three);
- top-3: sick patients with an accepted code among the first three findings;
- healthy patients given a critical finding (a false alarm), and given a warning;
- the share of critical findings whose cure confirmed them.

Each total is given over every patient and without the known gaps (``known_gap``).

    OMP_NUM_THREADS=1 python benchmarks/bench_field.py --json field.json
    python benchmarks/bench_field.py --only unet lstm --budget 30
    python benchmarks/bench_field.py --shard 0/2 --json a.json & python benchmarks/bench_field.py --shard 1/2 \
        --json b.json; wait; python benchmarks/bench_field.py --merge a.json b.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's nandoctor, not an installed one

import torch  # noqa: E402

import nandoctor  # noqa: E402
from field_zoo import FIELD_ZOO, judge, status_of  # noqa: E402
from nandoctor.records import jsonable  # noqa: E402

SHORT_STATUS = {"confirmed": "conf", "refuted": "refu", "treatment-failed": "refu", "suspected": "susp",
                "inconclusive": "inco"}
SHOWN = 3  # findings per row


def finding_text(finding) -> str:
    return f"{finding.code}({finding.severity[:4]},{SHORT_STATUS.get(status_of(finding), status_of(finding))})"


def run_one(patient, budget: float) -> dict:
    t0 = time.perf_counter()
    row = {"name": patient.name, "expected": patient.expected(), "accepted": sorted(patient.accepted),
           "also_expected": sorted(patient.also_expected), "healthy": patient.healthy,
           "known_gap": patient.known_gap, "source": patient.source}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = nandoctor.diagnose(patient.factory(), budget=budget)
    except Exception as exc:  # the tool itself crashed: a bug to report, not a wrong diagnosis
        row.update(ok=False, top="crash", error=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc(limit=6), findings=[], seconds=time.perf_counter() - t0)
        return row
    ok, top = judge(report, patient)
    codes = [f.code for f in report.findings]
    row.update(
        ok=ok, top=top, seconds=time.perf_counter() - t0, verdict=report.verdict,
        top3_hit=bool(patient.accepted & set(codes[:SHOWN])),
        findings=[{"code": f.code, "severity": f.severity, "status": status_of(f), "title": f.title,
                   "confidence": round(float(f.confidence), 3), "evidence": jsonable(f.evidence),
                   "treatment": jsonable(f.treatment), "explained_by": getattr(f, "explained_by", None)}
                  for f in report.findings],
        not_evaluated=jsonable(report.not_evaluated),
        probes={name: r.status for name, r in report.probes.items()})
    return row


def print_row(row: dict) -> None:
    mark = "OK " if row["ok"] else ("gap" if row["known_gap"] else "XX ")
    if row["top"] == "crash":
        got = f"CRASH {row['error'][:90]}"
    else:
        shown = [f"{f['code']}({f['severity'][:4]},{SHORT_STATUS.get(f['status'], f['status'])})"
                 for f in row["findings"][:SHOWN]]
        got = " > ".join(shown) or "no findings"
    print(f"{mark} {row['name']:<46} expected {row['expected']:<44} got {got:<96} {row['seconds']:5.1f}s",
          flush=True)


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} = {part / whole:.0%}" if whole else "0/0"


def totals(rows: list[dict], label: str) -> None:
    sick = [r for r in rows if not r["healthy"]]
    healthy = [r for r in rows if r["healthy"]]
    top1 = sum(r["ok"] for r in sick)
    top3 = sum(r.get("top3_hit", False) for r in sick)
    two_fault = [r for r in sick if len(r["also_expected"]) >= 2]
    crit = [r for r in healthy if any(f["severity"] == "critical" for f in r["findings"])]
    warn = [r for r in healthy if any(f["severity"] == "warning" for f in r["findings"])]
    criticals = [f for r in rows for f in r["findings"] if f["severity"] == "critical"]
    confirmed = sum(f["status"] == "confirmed" for f in criticals)
    crashes = [r for r in rows if r["top"] == "crash"]
    print(f"\n{label}")
    print(f"  top-1 (sick, two-fault rule applied) {share(top1, len(sick))}")
    print(f"  top-3 (an accepted code in the first three) {share(top3, len(sick))}")
    print(f"  two faults met: both in the top three, one first {share(sum(r['ok'] for r in two_fault), len(two_fault))}")
    print(f"  healthy with a critical finding {share(len(crit), len(healthy))}"
          + (f"  ({', '.join(r['name'] for r in crit)})" if crit else ""))
    print(f"  healthy with a warning {share(len(warn), len(healthy))}")
    print(f"  critical findings confirmed by their cure {share(confirmed, len(criticals))}")
    if crashes:
        print(f"  the tool crashed on {len(crashes)}: {', '.join(r['name'] for r in crashes)}")
    raised = {r["name"]: sorted({n.get("code") for n in r.get("not_evaluated") or []
                                 if str(n.get("reason", "")).startswith("diagnosis error")}) for r in rows}
    raised = {name: codes for name, codes in raised.items() if codes}
    print(f"  patients where a diagnosis raised (reported under not_evaluated) {share(len(raised), len(rows))}"
          + (f"  ({'; '.join(f'{n}: {chr(44).join(c)}' for n, c in raised.items())})" if raised else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per patient (default 30)")
    parser.add_argument("--only", nargs="*", default=None, help="run the patients whose name contains one of these")
    parser.add_argument("--json", type=Path, default=None, help="write every row (with the findings' evidence) here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the test suite)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="run every N-th patient from the K-th (0-based), to run N processes side by side")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="print the rows and totals of runs written by --json (the shards of one run)")
    args = parser.parse_args()
    if args.merge:
        rows = [row for path in args.merge for row in json.loads(path.read_text())]
        order = {p.name: i for i, p in enumerate(FIELD_ZOO)}
        rows.sort(key=lambda r: order.get(r["name"], len(order)))
        print(f"field zoo: {len(rows)} patients from {len(args.merge)} run(s)\n")
        for row in rows:
            print_row(row)
        all_totals(rows)
        return
    torch.set_num_threads(args.threads)
    chosen = [p for p in FIELD_ZOO if not args.only or any(s in p.name for s in args.only)]
    if args.shard:
        k, n = (int(v) for v in args.shard.split("/"))
        if not 0 <= k < n:
            parser.error(f"--shard {args.shard}: K counts from 0 and must be below N (0/{n} ... {n - 1}/{n})")
        chosen = chosen[k::n]
    print(f"field zoo: {len(chosen)} patients, budget {args.budget:g} s each, {args.threads} torch thread(s)\n")
    rows, t0 = [], time.perf_counter()
    for patient in chosen:
        rows.append(run_one(patient, args.budget))
        print_row(rows[-1])
    all_totals(rows)
    print(f"\n{len(rows)} patients in {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


def all_totals(rows: list[dict]) -> None:
    """The totals over every patient, then without the known gaps (when there are any)."""
    totals(rows, "all patients")
    gaps = [r for r in rows if r["known_gap"]]
    if gaps:
        totals([r for r in rows if not r["known_gap"]], f"without the {len(gaps)} known gap(s) "
                                                       f"({', '.join(sorted({r['known_gap'].split(' ')[0] for r in gaps}))})")


if __name__ == "__main__":
    main()

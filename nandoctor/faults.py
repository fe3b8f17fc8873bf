"""The faults a probe survives, and whose fault each one is.

``run_guarded(probe, ctx)`` runs one probe so that nothing it meets ends the run:

- an exception becomes a ``failed`` result whose error says who raised it: the user's set-up
  (their file and line: a ``training-crashed`` finding) or nandoctor itself (``internal: True``:
  a ``probe-failed`` finding), decided by ``loading.raised_by_user`` from where it was raised;
- running out of memory (``torch.OutOfMemoryError``, a CPU allocation failure) frees what it can
  and runs the probe again with every batch capped at the user's batch size, then half, then a
  quarter; ``metrics["out_of_memory"]`` says what was tried and what worked;
- a sample whose ``__getitem__`` hangs stops the probe with its index (``nandoctor.watchdog``);
- Ctrl-C (``KeyboardInterrupt``) is never swallowed: the pipeline turns it into a partial report.
"""

from __future__ import annotations

import dataclasses
import gc

import torch

from nandoctor import watchdog
from nandoctor.loading import raised_by_user
from nandoctor.probes.training import error_record
from nandoctor.records import ProbeResult

OOM_CAPS = (1.0, 0.5, 0.25)   # retries after running out of memory: batches capped at these shares of the user's
OOM_TYPES = ("OutOfMemoryError", "MemoryError")
OOM_WORDS = ("out of memory", "can't allocate memory", "not enough memory")


def failure(probe, exc: BaseException) -> ProbeResult:
    """A probe's exception as a ``failed`` result, marked internal unless the user's set-up raised it."""
    return probe.result(status="failed", error={**error_record(exc), "internal": not raised_by_user(exc)})


def attempt(probe, ctx) -> ProbeResult:
    """``probe.run(ctx)`` once, its exceptions as results, its sample loads watched, stopped at its hard stop."""
    from nandoctor.probes import Inconclusive

    try:
        with watchdog.deadline(ctx.hard_stop), watchdog.limit(watchdog.timeout_for(ctx.seconds)):
            return probe.run(ctx)
    except KeyboardInterrupt:
        raise
    except Inconclusive as exc:  # its evidence would be too short to judge: never a verdict
        return probe.result(status="inconclusive", reason=str(exc))
    except watchdog.Overrun:
        return probe.result(status="inconclusive",
                            reason=f"stopped at its deadline ({ctx.seconds:.1f} s planned): the user's code ran far "
                                   f"slower than the warm-up measured; run with a larger --budget")
    except Exception as exc:  # a crash in the probe: a finding, never a dead run
        return failure(probe, exc)


def out_of_memory(result: ProbeResult) -> bool:
    """Did the probe fail for lack of memory (raised, or the user's step that it recorded)?"""
    error = result.error or {}
    if result.status != "failed":
        return False
    message = str(error.get("message", "")).lower()
    return error.get("type") in OOM_TYPES or any(w in message for w in OOM_WORDS)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_guarded(probe, ctx) -> ProbeResult:
    """Run ``probe`` on ``ctx`` with the faults above survived (see the module docstring)."""
    result = attempt(probe, ctx)
    if not out_of_memory(result):
        return result
    patient, tried = ctx.patient, []
    first_error = result.error
    for share in OOM_CAPS:
        cap = max(1, int(patient.batch_size * share))
        if tried and cap >= tried[-1]:
            continue
        free_memory(patient.device)
        capped = patient.variant(f"batches of at most {cap} samples (out of memory)",
                                 batch_size=min(patient.batch_size, cap), max_batch=cap)
        result = attempt(probe, dataclasses.replace(ctx, patient=capped))
        tried.append(cap)
        if not out_of_memory(result):
            break
    result.metrics["out_of_memory"] = {
        "error": (first_error or {}).get("message"), "user_batch_size": patient.batch_size,
        "retried_with_max_batch": tried, "succeeded_at": tried[-1] if not out_of_memory(result) else None,
        "note": "the numbers of this probe come from smaller batches than configured"
                if not out_of_memory(result) else "ran out of memory even at the smallest batch tried"}
    return result

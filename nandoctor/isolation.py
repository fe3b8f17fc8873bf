"""Process isolation for probes: a crash that takes its process with it becomes a finding, not a dead run.

A CUDA device-side assert poisons the CUDA context of the whole process; a segfault in an extension,
an ``os.abort()`` or ``os._exit()`` in the user's code ends it. ``run_probe(probe, ctx)`` (what the
pipeline calls for every probe) runs the probe in a worker process when isolation is on, and in this
process otherwise (``faults.run_guarded`` in both cases: exceptions as findings, out-of-memory retries,
the loading watchdog).

When: ``NANDOCTOR_ISOLATE=1`` forces it on, ``=0`` off; by default (``auto``) it is on for CUDA devices.
Only a patient built from a config file can be isolated (the worker builds the same patient again
from it); a patient made of Python objects, or a treatment's variant of one, always runs here.

How: one worker per run, started with ``spawn`` (a fresh interpreter: no CUDA context inherited),
builds the patient once and runs the probes it is sent one after the other, keeping their full
results for the probes after them (gradients reads overfit's recording, as in one process). Each
result comes back pickled; what in ``data`` cannot be pickled stays in the worker (the metrics always
come back). When the worker dies during a probe, that probe is ``failed`` with the exit code or
signal and, from faulthandler's dump, the user's line where it died (not ``internal``: a
``training-crashed`` finding); the next probe gets a fresh worker, given the earlier results. A
probe that runs past its deadline by more than ``PROBE_GRACE`` is stopped the same way. After a
CUDA error the worker exits once its result is sent (its context cannot be trusted any more). The
worker ignores Ctrl-C (the parent stops it) and exits when idle for ``IDLE_EXIT`` seconds or when its
parent is gone.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import pickle
import re
import signal
import tempfile
import threading
import time
import warnings
import weakref
from pathlib import Path

from nandoctor.faults import run_guarded
from nandoctor.records import ProbeResult

ENV = "NANDOCTOR_ISOLATE"
STARTUP_GRACE = 120.0    # seconds a fresh worker may take to start (imports, building the patient) ...
PROBE_GRACE = 15.0       # ... and a probe may run past its deadline before its worker is stopped
IDLE_EXIT = 20.0         # a worker without work for this long exits (frees its GPU memory)
POLL = 0.2               # seconds between checks on the worker while it runs a probe
CUDA_POISON = ("CUDA error", "device-side assert", "AcceleratorError", "cudaErrorAssert")
MAX_WARNINGS = 5
TIMESTAMP_FIELDS = ("started", "deadline", "hard_stop")  # ProbeContext fields that are clock readings (sent as offsets)
LOCAL_FIELDS = ("patient", "evidence", "progress")

_workers: dict[int, "Worker"] = {}  # per run: keyed by id() of its Evidence, dropped when that is collected
_unavailable: dict[int, str] = {}   # runs whose worker could not start (why)


# --- when ----------------------------------------------------------------------------------------------------
def recipe(patient) -> dict | None:
    """How a worker builds this patient again, or None when it cannot (Python objects, a treatment's variant)."""
    source = getattr(patient, "source", None) or {}
    if not source.get("config") or patient.changes or getattr(patient, "max_batch", None):
        return None
    return {"config": source["config"], "device": str(patient.device), "seed": patient.seed}


def wanted(patient) -> bool:
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode in ("0", "off", "no", "false") or recipe(patient) is None:
        return False
    return mode in ("1", "on", "yes", "true") or patient.device.type == "cuda"


def run_probe(probe, ctx) -> ProbeResult:
    """Run one probe: in a worker process when isolation is wanted (see the module docstring), else here."""
    if not wanted(ctx.patient):
        return run_guarded(probe, ctx)
    key, plan = id(ctx.evidence), recipe(ctx.patient)
    if key in _unavailable:  # the worker could not start in this run: the probes run here, as without isolation
        return run_guarded(probe, ctx)
    worker = _workers.get(key)
    if worker is not None and (worker.recipe != plan or not worker.alive()):
        worker.close()
        worker = None
    if worker is None:
        worker = _workers[key] = Worker(plan)
        weakref.finalize(ctx.evidence, _end_of_run, key)
    if not worker.ready():
        _unavailable[key] = worker.startup_error
        _forget(key)
        ctx.evidence.facts["isolation_note"] = (f"probes ran in this process: the isolated worker could not start "
                                                f"({worker.startup_error})")
        return run_guarded(probe, ctx)
    result = worker.run(probe, ctx)
    if not worker.alive() or worker.poisoned:
        worker.close()
        _workers.pop(key, None)
    return result


def _forget(key: int) -> None:
    worker = _workers.pop(key, None)
    if worker is not None:
        worker.close()


def _end_of_run(key: int) -> None:
    _forget(key)
    _unavailable.pop(key, None)


def close_all() -> None:
    """Stop every worker now (the CLI calls it when a command ends)."""
    for worker in list(_workers.values()):
        worker.close()
    _workers.clear()
    _unavailable.clear()


# --- the parent's side --------------------------------------------------------------------------------------
class Worker:
    """One worker process and the pipe to it."""

    def __init__(self, plan: dict):
        import multiprocessing as mp

        self.recipe = plan
        self.startup_seconds: float | None = None   # spawn, imports and building the patient
        self.startup_error: str | None = None
        self.known: set[str] = set()      # probes whose results the worker holds
        self.poisoned = False
        self.fresh = True
        fd, self.fault_path = tempfile.mkstemp(prefix="nandoctor-fault-", suffix=".txt")
        os.close(fd)
        spawn = mp.get_context("spawn")
        self.conn, child = spawn.Pipe()
        self.started = time.perf_counter()
        import torch
        settings = {"threads": torch.get_num_threads()}  # the parent's torch settings hold in the worker too
        self.proc = spawn.Process(target=worker_main, args=(child, plan, self.fault_path, os.getpid(), settings),
                                  daemon=True, name="nandoctor-probe-worker")
        self.proc.start()
        child.close()

    def alive(self) -> bool:
        return self.proc.is_alive()

    def ready(self) -> bool:
        """Wait for a fresh worker to have built the patient; False (with ``startup_error``) when it could not."""
        if self.startup_seconds is not None:
            return True
        deadline = time.perf_counter() + STARTUP_GRACE
        while time.perf_counter() < deadline:
            try:
                answered = self.conn.poll(POLL)
            except KeyboardInterrupt:
                self.close()
                raise
            if answered:
                try:
                    message = pickle.loads(self.conn.recv_bytes())
                except (OSError, EOFError):
                    break
                if message[0] == "ready":
                    self.startup_seconds = time.perf_counter() - self.started
                    return True
                self.startup_error = f"{message[1].get('type')}: {message[1].get('message')}"
                return False
            if not self.proc.is_alive():
                break
        self.startup_error = self.startup_error or (f"it exited with status {self.proc.exitcode} while starting"
                                                    if not self.proc.is_alive() else "it did not start in time")
        return False

    def run(self, probe, ctx) -> ProbeResult:
        start = time.perf_counter()
        updates = {n: portable(r) for n, r in ctx.evidence.items() if n not in self.known}
        try:
            self._send(("run", probe.name, context_fields(ctx), updates, dict(ctx.evidence.facts)))
        except (OSError, EOFError):
            return self._died(probe, start)
        self.known.update(updates)
        grace = PROBE_GRACE
        deadline = ctx.deadline + grace
        try:
            while True:
                if time.perf_counter() > deadline:
                    self.close()
                    return probe.result(status="failed", error={
                        "type": "ProbeTimeout", "internal": False, "where": None, "step": None,
                        "message": f"the {probe.name} probe ran {grace:.0f} s past its deadline and was stopped "
                                   "(the user's code may be stuck in a loop Python cannot interrupt)"})
                if self.conn.poll(POLL):
                    try:
                        message = pickle.loads(self.conn.recv_bytes())
                    except (OSError, EOFError):
                        return self._died(probe, start)
                    if message[0] == "progress":
                        ctx.progress(*message[1:])
                    elif message[0] == "result":
                        return self._result(probe, message[1], start)
                elif not self.proc.is_alive():
                    return self._died(probe, start)
        except KeyboardInterrupt:  # Ctrl-C: the worker ignores it; stop it, and let the pipeline write the report
            self.close()
            raise

    def _send(self, message) -> None:
        self.conn.send_bytes(pickle.dumps(message))

    def _result(self, probe, payload: dict, start: float) -> ProbeResult:
        result = ProbeResult(name=probe.name, status=payload["status"], seconds=payload["seconds"],
                             metrics=payload["metrics"], plots=payload["plots"], error=payload["error"],
                             reason=payload["reason"])
        result.data, lost = unpickled(payload["data"])
        self.known.add(probe.name)
        self.poisoned = payload["poisoned"]
        elapsed = time.perf_counter() - start
        result.metrics["isolation"] = {
            "worker_pid": self.proc.pid, "fresh_worker": self.fresh,
            "startup_seconds": round(self.startup_seconds, 3) if self.fresh else None,
            "overhead_seconds": round(max(0.0, elapsed - payload["seconds"]), 3),
            "data_kept_in_worker": sorted(payload["data_lost"] + lost) or None}
        self.fresh = False
        return result

    def _died(self, probe, start: float) -> ProbeResult:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit status {code}")
        where = last_user_line(self.fault_path)
        self.close()
        return probe.result(status="failed", seconds=time.perf_counter() - start, error={
            "type": "ProcessDied", "internal": False, "step": None, "where": where, "exit_code": code,
            "message": f"the process running the {probe.name} probe died ({how}): the user's code ended it "
                       "(os._exit, a crash in an extension, a CUDA device-side assert); the other probes ran on"})

    def close(self) -> None:
        try:
            if self.proc.is_alive():
                try:
                    self._send(None)
                except (OSError, EOFError):
                    pass
                self.proc.join(timeout=1)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(timeout=5)
        finally:
            self.conn.close()
            Path(self.fault_path).unlink(missing_ok=True)


def context_fields(ctx) -> dict:
    """The ProbeContext's picklable fields; clock readings as offsets from now (the worker has its own clock)."""
    now = time.perf_counter()
    out = {}
    for f in dataclasses.fields(ctx):
        if f.name in LOCAL_FIELDS:
            continue
        value = getattr(ctx, f.name)
        out[f.name] = ("offset", value - now) if f.name in TIMESTAMP_FIELDS else value
    return out


def portable(result: ProbeResult) -> dict:
    """A result as the worker needs it: everything, with the ``data`` entries that pickle."""
    data, _ = pickled(result.data)
    return {"status": result.status, "seconds": result.seconds, "metrics": result.metrics, "plots": result.plots,
            "error": result.error, "reason": result.reason, "data": data}


def pickled(data: dict) -> tuple[dict, list[str]]:
    out, lost = {}, []
    for k, v in (data or {}).items():
        try:
            out[k] = pickle.dumps(v)
        except Exception:  # a model whose class pickle cannot find, an open handle: it stays where it is
            lost.append(k)
    return out, lost


def unpickled(blobs: dict) -> tuple[dict, list[str]]:
    out, lost = {}, []
    for k, blob in blobs.items():
        try:
            out[k] = pickle.loads(blob)
        except Exception:
            lost.append(k)
    return out, lost


def last_user_line(fault_path: str) -> str | None:
    """The user's innermost frame in faulthandler's dump of a crashed worker (``net.py:12 in forward``)."""
    from nandoctor.loading import display_path, is_user_file

    try:
        text = Path(fault_path).read_text(errors="replace")
    except OSError:
        return None
    for file, line, func in re.findall(r'File "(.+?)", line (\d+) in (\S+)', text):  # most recent call first
        if is_user_file(file):
            return f"{display_path(file)}:{line} in {func}"
    return None


# --- the worker's side -----------------------------------------------------------------------------------------
def worker_main(conn, plan: dict, fault_path: str, parent_pid: int, settings: dict | None = None) -> None:
    """Build the patient, then run the probes sent one by one until told to stop, idle or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import torch
    torch.set_num_threads((settings or {}).get("threads") or torch.get_num_threads())
    fault_file = open(fault_path, "w")
    faulthandler.enable(fault_file)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    from nandoctor import probes as probe_pkg
    from nandoctor.config import load_config
    from nandoctor.loading import build_patient
    from nandoctor.probes import ProbeContext
    from nandoctor.records import Evidence

    def send(message) -> None:
        conn.send_bytes(pickle.dumps(message))

    try:
        patient = build_patient(load_config(plan["config"]), device=plan["device"], seed=plan["seed"])
        registry = probe_pkg.load_all()
    except Exception as exc:  # the parent built it: this should not happen; the parent runs the probes itself
        send(("failed", {"type": type(exc).__name__, "message": str(exc)[:300]}))
        return
    send(("ready",))
    evidence = Evidence()

    while conn.poll(IDLE_EXIT):
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if message is None:
            break
        _, name, fields, updates, facts = message
        for other, portable_result in updates.items():
            evidence[other] = _from_portable(other, portable_result)
        evidence.facts = facts
        now = time.perf_counter()
        fields = {k: (now + v[1] if isinstance(v, tuple) and v and v[0] == "offset" else v) for k, v in fields.items()}
        ctx = ProbeContext(patient=patient, evidence=evidence, progress=lambda done, total=None: send(
            ("progress", done, total)), **fields)
        probe = registry[name]
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_guarded(probe, ctx)
        messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
        if messages:
            result.metrics.setdefault("warnings", messages[:MAX_WARNINGS])
        result.seconds = time.perf_counter() - t0
        evidence[name] = result
        poisoned = any(word in str((result.error or {}).get("message", "")) + str((result.error or {}).get("type"))
                       for word in CUDA_POISON)
        data, lost = pickled(result.data)
        try:
            metrics = pickle.loads(pickle.dumps(result.metrics))
        except Exception:
            from nandoctor.records import jsonable
            try:
                metrics = jsonable(result.metrics)
            except Exception:  # tensors on a device whose context a CUDA error poisoned
                metrics = {"lost": "the metrics could not be read back from the worker"}
        send(("result", {"status": result.status, "seconds": result.seconds, "metrics": metrics,
                         "plots": result.plots, "error": result.error, "reason": result.reason, "data": data,
                         "data_lost": lost, "poisoned": poisoned}))
        if poisoned:
            break
    fault_file.close()


def _from_portable(name: str, p: dict) -> ProbeResult:
    result = ProbeResult(name=name, status=p["status"], seconds=p["seconds"], metrics=p["metrics"],
                         plots=p["plots"], error=p["error"], reason=p["reason"])
    result.data, _ = unpickled(p["data"])
    return result


def _exit_when_orphaned(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)

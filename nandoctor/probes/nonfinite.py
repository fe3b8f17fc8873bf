"""Non-finite: when the overfit probe saw a NaN/Inf, find the op where it was born.

The overfit probe's recorder names the first *module* whose output turned non-finite
(forward hooks on leaf modules) or the first parameter whose gradient did. This probe
narrows that to the *op*: it replays the same training (fresh model, same batch) up to
that step, then runs the step with every torch call checked (the first call whose
inputs are finite and whose output is not, with the module it ran in and the line of
the user's code) and under ``torch.autograd.detect_anomaly`` for births in backward.
It does nothing (and costs nothing) when the run stayed finite.
"""

from __future__ import annotations

from dataclasses import dataclass
import re
import time
import traceback
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.overrides import TorchFunctionMode, resolve_name

from nandoctor.loading import display_path, is_user_file
from nandoctor.patient import split_batch
from nandoctor.planning import StepNeed
from nandoctor.probes import Inconclusive, Probe, ProbeContext
from nandoctor.probes.instrument import tensor_stats
from nandoctor.probes.training import error_record
from nandoctor.records import Metrics, ProbeResult

EXTRA_STEPS = 5   # checked steps past the recorded one, in case the replay drifts (dropout draws)
SAMPLES_CHECKED = 8   # samples whose NaN loss the scan found (finite inputs) run through one checked forward
ANOMALY = re.compile(r"Function '(\w+)' returned nan values in its (\d+)\w* output")
FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _tensors(obj: Any, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


def _all_finite(tensors: list) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def user_line(frames) -> str | None:
    """``file.py:LINE in func`` of the innermost frame that is the user's code."""
    for fr in reversed(frames):
        if not is_user_file(fr[0]):
            continue
        return f"{display_path(fr[0])}:{fr[1]} in {fr[2]}"
    return None


def op_name(func, fallback: str) -> str:
    """The public name of a torch call: ``torch.sqrt``, ``torch.nn.functional.linear``, ``torch.Tensor.__truediv__``."""
    try:
        name = resolve_name(func)
    except Exception:  # pragma: no cover - resolve_name is best effort
        name = None
    return name or getattr(func, "__qualname__", fallback)


class BirthChecker(TorchFunctionMode):
    """The first torch call with finite floating inputs and a non-finite output, where it ran and in which phase."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {id(m): n or "(model)" for n, m in model.named_modules()}
        self.stack: list[nn.Module] = []
        self.phase = "forward"
        self.birth: dict | None = None
        self.inherited: dict | None = None   # the first call that received non-finite inputs (from the data)
        self._handles: list = []

    def __enter__(self):
        self._handles = [module_hooks.register_module_forward_pre_hook(lambda m, i: self.stack.append(m)),
                         module_hooks.register_module_forward_hook(self._pop, always_call=True)]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return super().__exit__(*exc)

    def _pop(self, module, inputs, output):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name == "backward":
            self.phase = "backward"
            out = func(*args, **kwargs)
            self.phase = "optimizer step"
            return out
        watching = self.birth is None and self.inherited is None
        # an in-place op (Adam's addcdiv_ on the weights) overwrites its first input: check the inputs before
        ins = _tensors(args, []) + _tensors(kwargs, []) if watching and name.endswith("_") else None
        finite_before = _all_finite(ins) if ins is not None else None
        out = func(*args, **kwargs)
        if watching:
            outs = _tensors(out, [])
            if outs and not _all_finite(outs):
                ins = ins if ins is not None else _tensors(args, []) + _tensors(kwargs, [])
                if finite_before if finite_before is not None else _all_finite(ins):
                    self.birth = self._record(func, name, ins, outs)
                else:  # non-finite values this step did not make: they came in with the batch
                    self.inherited = {**self._record(func, name, ins, outs), "phase": "inputs"}
        return out

    def _record(self, func, name: str, ins: list, outs: list) -> dict:
        inside = [m for m in self.stack if id(m) in self.names]
        module = self.stack[-1] if self.stack else None
        where = self.names.get(id(module)) if module is not None else None
        if module is not None and where is None:
            where = f"outside the model ({type(module).__name__})"
        op = op_name(func, name)
        stack = [(f.filename, f.lineno, f.name) for f in traceback.extract_stack()[:-2]]
        return {"op": op, "module": where or ("outside the model" if self.phase == "forward" else None),
                "module_type": type(module).__name__ if module is not None else None,
                "in_model": bool(inside), "phase": self.phase, "where": user_line(stack),
                "inputs": [tensor_stats(t) for t in ins[:3]], "output": tensor_stats(outs[0])}


def anomaly_birth(exc: BaseException, caught: list) -> dict | None:
    """The backward function ``detect_anomaly`` names, with the forward line that created it."""
    m = ANOMALY.search(str(exc))
    if m is None:
        return None
    where = None
    for w in caught:
        text = str(w.message)
        if "Traceback of forward call" in text:
            frames = [(f, int(line), fn) for f, line, fn in FRAME.findall(text)]
            where = user_line(frames)
    return {"op": m.group(1), "module": None, "in_model": None, "phase": "backward", "where": where,
            "output_index": int(m.group(2))}


@dataclass
class NonFiniteMetrics(Metrics):
    triggered: bool | None = None       # the overfit probe saw a non-finite value
    recorded_step: int | None = None    # the step it saw it at
    replayed_steps: int | None = None
    birth: dict | None = None           # the op/module and the user's line where the first NaN/Inf was born
    samples: list | None = None         # the training stayed finite: the scanned samples whose loss was not,
    mode: str | None = None             # checked in the scan's mode (eval, no_grad: the model's inference path)
    step: int | None = None
    stopped: str | None = None
    error: dict | None = None


class NonFinite(Probe):
    metrics_type = NonFiniteMetrics
    name = "nonfinite"
    title = "Find the op where the first NaN/Inf is born"
    order = 25
    replay_cost = 3.0   # a checked step (anomaly mode, hooks on every module) against a plain one

    def need(self, ctx: ProbeContext) -> StepNeed | None:
        """Known once the overfit probe ran: replay up to the recorded step, then check a few more."""
        target = self._target(ctx)
        if target is None:
            return None
        return StepNeed(min=target + 1, ideal=target + EXTRA_STEPS + 1, cost=1.0, fixed=self.replay_cost * 2)

    @staticmethod
    def _target(ctx: ProbeContext) -> int | None:
        overfit = ctx.evidence.ok("overfit")
        if overfit is None:
            return None
        run, rec = overfit.data.get("run"), overfit.data.get("recorder")
        steps = [s for s in (run.nonfinite_step if run else None,
                             (rec.nonfinite_forward or {}).get("step") if rec else None,
                             (rec.nonfinite_grad or {}).get("step") if rec else None) if s is not None]
        return min(steps) if steps else None

    def run(self, ctx: ProbeContext) -> ProbeResult:
        # 1. only when the overfit probe saw a non-finite value
        overfit = ctx.evidence.ok("overfit")
        if overfit is None:
            return self.result(status="skipped", reason="the overfit probe did not run")
        target = self._target(ctx)
        if target is None:
            samples = self._scanned_samples(ctx)
            if samples:
                return self.result(metrics=self._checked_samples(ctx.patient, samples))
            return self.result(metrics={"triggered": False})
        # 2. replay up to the step, then check every call from there
        patient = ctx.patient
        model = patient.new_model()
        optimizer = patient.make_optimizer(model)
        batch = patient.fixed_batch()
        metrics: dict = {"triggered": True, "recorded_step": target, "birth": None, "step": None}
        done = 0
        for i in range(max(target + 1, ctx.planned_steps or target + EXTRA_STEPS + 1)):
            if time.perf_counter() > ctx.deadline:
                metrics["stopped"] = "deadline"
                break
            try:
                birth = None
                if i < target - 1:  # the update of the step before can be where the NaN was born
                    patient.step(model, optimizer, batch)
                else:
                    birth = self._checked_step(patient, model, optimizer, batch)
            except Exception as exc:  # the user's code raised for another reason: evidence, not a birth
                metrics["error"] = error_record(exc, step=i)
                break
            done = i + 1
            if birth is not None:
                metrics.update(birth=birth, step=i)
                break
        metrics["replayed_steps"] = done
        if metrics.get("stopped") == "deadline" and done <= target:
            raise Inconclusive(f"stopped by its deadline after replaying {done} of the {target + 1} steps "
                               f"up to the first non-finite value; run with a larger --budget")
        return self.result(metrics=metrics)

    @staticmethod
    def _scanned_samples(ctx: ProbeContext) -> list[int]:
        """The first samples whose loss the data scan found non-finite though their inputs were finite."""
        scan = ctx.evidence.ok("data_scan")
        loss = (scan.metrics.get("loss") or {}) if scan is not None else {}
        return [int(i) for i in ((loss.get("nonfinite") or {}).get("indices") or [])[:SAMPLES_CHECKED]]

    @staticmethod
    def _checked_samples(patient, samples: list[int]) -> dict:
        """One forward pass and loss on those samples, as the scan ran them (eval mode, no gradient: the path
        inference takes, which may not be the one training takes), with every torch call checked."""
        metrics: dict = {"triggered": True, "samples": samples, "mode": "eval, no_grad", "birth": None}
        try:
            model = patient.new_model().eval()
            inputs, targets = split_batch(patient.batch_of(samples))
            checker = BirthChecker(model)
            with torch.no_grad(), patient.autocast(), checker:
                patient.loss_fn(model(inputs), targets)
            metrics["birth"] = checker.birth
        except Exception as exc:   # the user's code raised on them: evidence, not a birth
            metrics["error"] = error_record(exc)
        return metrics

    @staticmethod
    def _checked_step(patient, model, optimizer, batch) -> dict | None:
        checker = BirthChecker(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with torch.autograd.detect_anomaly(check_nan=True), checker:
                    patient.step(model, optimizer, batch)
            except RuntimeError as exc:
                if checker.birth is not None or checker.inherited is not None:
                    return checker.birth or checker.inherited
                if ANOMALY.search(str(exc)):
                    return anomaly_birth(exc, caught)
                raise
        return checker.birth or checker.inherited

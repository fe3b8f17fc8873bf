"""The one place that knows the order:

config -> patient -> probes -> diagnoses -> treatments -> ranking -> report.

``diagnose()`` is also the Python entry point for notebooks:

    >>> import nandoctor
    >>> report = nandoctor.diagnose("config.yaml", budget=60)
    >>> report.findings[0].code
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from nandoctor import __version__, diagnoses, isolation, probes, ranking
from nandoctor.config import Config, load_config
from nandoctor.errors import ConfigError
from nandoctor.loading import build_patient
from nandoctor.patient import Patient, preserved_rng, split_batch
from nandoctor.probes import ProbeContext
from nandoctor.probes.training import error_record
from nandoctor.records import Evidence, ProbeResult, Report
from nandoctor.treatments import plot_treatment

DEFAULT_BUDGET = 120.0       # seconds for the whole run
REPORT_RESERVE = 0.08        # share of the budget kept for diagnoses, plots and writing the report
MIN_REPORT_RESERVE = 2.0     # ... and at least this many seconds
TREATMENT_WEIGHT = 1.5       # budget weight of all treatments together, against the probes' weights
MAX_TREATMENTS = 4           # cures tried per run, best-ranked findings first
FALLBACK_STEP_SECONDS = 0.05  # assumed step time when the warm-up could not measure one
MAX_WARNINGS = 5             # distinct warnings kept per probe (e.g. torch's broadcasting warning)


class Progress:
    """What the pipeline tells the outside while it works. The CLI shows it with rich; the default is silent."""

    def start(self, name: str, title: str, total: float | None = None) -> None: ...
    def update(self, name: str, done: float, total: float | None = None) -> None: ...
    def finish(self, name: str, result: ProbeResult) -> None: ...


@dataclass
class Options:
    budget: float = DEFAULT_BUDGET
    probes: tuple[str, ...] | None = None   # None: the default battery
    device: str | None = None
    seed: int | None = None
    out: Path | None = None
    probe_options: dict | None = None       # per-command knobs, e.g. {"min_lr": 1e-7}
    treatments: bool = True


def select_probes(requested: Iterable[str] | None) -> dict[str, probes.Probe]:
    """The probes to run, in order. Unknown names are a ConfigError listing the known ones."""
    registry = probes.load_all()
    if requested is None:
        chosen = {n: p for n, p in registry.items() if p.default}
    else:
        names = [n.strip().replace("-", "_") for n in requested if n.strip()]
        unknown = [n for n in names if n not in registry]
        if unknown:
            known = ", ".join(n for n in registry if n != "warmup")
            raise ConfigError(f"unknown probe {', '.join(repr(u) for u in unknown)}.",
                              hint=f"choose from: {known}.", key="--probes")
        chosen = {n: p for n, p in registry.items() if n in names}
    chosen.setdefault("warmup", registry["warmup"])
    return dict(sorted(chosen.items(), key=lambda kv: (kv[1].order, kv[0])))


def patient_facts(patient: Patient, model: torch.nn.Module) -> dict:
    from torch.nn.parameter import is_lazy

    sized = [p for p in model.parameters() if not is_lazy(p)]  # lazy modules have no size before a forward
    n_params = sum(p.numel() for p in sized)
    n_trainable = sum(p.numel() for p in sized if p.requires_grad)
    return {"model": patient.model_name, "loss": patient.loss_name, "optimizer": patient.optimizer_cls.__name__,
            "optimizer_settings": dict(patient.optimizer_kwargs), "lr": patient.lr,
            "batch_size": patient.batch_size, "train_samples": len(patient.train_data),
            "val_samples": len(patient.val_data) if patient.val_data is not None else None,
            "device": str(patient.device), "parameters": n_params, "trainable_parameters": n_trainable,
            "custom_train_step": patient.train_step is not None, "seed": patient.seed}


def check_batch_form(patient: Patient) -> None:
    """Without a ``train_step`` a batch must be an (inputs, targets) pair: that is bad input (exit 2)."""
    if patient.train_step is not None:
        return
    try:
        sample = patient.train_data[0]
    except Exception:
        return  # loading errors are evidence for the probes, not bad input
    if not (isinstance(sample, (tuple, list)) and len(sample) == 2):
        split_batch(sample)  # raises DataError with the explanation


ASSERT_PRONE = ("out of bounds", "between 0 and 1", "index", "Target", "target")  # CPU messages of CUDA asserts


def cpu_if_cuda_would_assert(patient: Patient, reason: str | None = None) -> tuple[Patient, str | None]:
    """On CUDA, a loss that meets labels out of range (or BCELoss values outside [0, 1]) fails with a
    device-side assert that poisons the whole CUDA context for the rest of the process. Run one step
    on the CPU first; if it raises such an error, diagnose on the CPU instead (the same findings,
    without a dead process)."""
    if patient.device.type != "cuda":
        return patient, None
    cpu = dataclasses.replace(patient, device=torch.device("cpu"))
    if reason is None:
        try:
            model = cpu.new_model()
            cpu.step(model, cpu.make_optimizer(model), cpu.fixed_batch())
            return patient, None
        except Exception as exc:
            message = str(exc)
            if not any(word in message for word in ASSERT_PRONE):
                return patient, None
            reason = f"one step on the CPU raised {type(exc).__name__}: {message.splitlines()[0][:200]}"
    return cpu, f"{reason}; on CUDA this is a device-side assert that kills the process, so the probes ran on the CPU"


def load_patient(source, device: str | None, seed: int | None) -> tuple[Patient, str]:
    if isinstance(source, Patient):
        return source, "<python objects>"
    cfg = source if isinstance(source, Config) else load_config(source)
    return build_patient(cfg, device=device, seed=seed), cfg.given or str(cfg.path)


def diagnose(source, *, budget: float = DEFAULT_BUDGET, probes: Iterable[str] | None = None,
             device: str | None = None, seed: int | None = None, out: str | Path | None = None,
             progress: Progress | None = None, probe_options: dict | None = None,
             treatments: bool = True) -> Report:
    """Run the battery on a config path, a ``Config`` or a ``Patient`` and return the ranked ``Report``.

    Writes ``report.json/.md/.html`` and ``plots/`` to ``out`` when given. Bad input raises
    ``NandoctorError``; the user's code failing during a probe becomes a finding instead.
    """
    from nandoctor.report.writer import staged

    with staged(out) as stage:  # the report is written beside ``out`` and moved into place whole
        opts = Options(budget=float(budget), probes=tuple(probes) if probes is not None else None, device=device,
                       seed=seed, out=stage, probe_options=probe_options or {}, treatments=treatments)
        report = Battery(opts, progress or Progress()).run(source)
    report.out_dir = str(out) if out is not None else None
    return report


class Battery:
    def __init__(self, opts: Options, progress: Progress):
        self.opts = opts
        self.progress = progress

    def run(self, source) -> Report:
        t0 = time.perf_counter()
        deadline = t0 + self.opts.budget
        reserve = max(MIN_REPORT_RESERVE, REPORT_RESERVE * self.opts.budget)
        # 1. config -> patient (bad input raises here, before anything trains)
        selected = select_probes(self.opts.probes)
        patient, config_name = load_patient(source, self.opts.device, self.opts.seed)
        check_batch_form(patient)
        patient, device_note = cpu_if_cuda_would_assert(patient)
        plots_dir = self.opts.out / "plots" if self.opts.out is not None else None
        if plots_dir is not None:
            plots_dir.mkdir(parents=True, exist_ok=True)
        interrupted = False
        with preserved_rng():
            evidence = Evidence(facts=patient_facts(patient, patient.new_model()))
            if device_note:
                evidence.facts["device_note"] = device_note
            plan: dict = {"budget_seconds": self.opts.budget, "probes": {}}
            # 2. probes, each sized to its share of what is left
            step_time = None
            try:
                remaining = dict(selected)
                for name, probe in selected.items():
                    weights = sum(p.weight for p in remaining.values()) + (TREATMENT_WEIGHT if self.opts.treatments else 0)
                    left = max(0.0, deadline - time.perf_counter() - reserve)
                    seconds = left * probe.weight / weights if weights else left
                    if name == "warmup":
                        seconds = left
                    ctx = ProbeContext(patient=patient, seconds=seconds,
                                       step_time=step_time or FALLBACK_STEP_SECONDS, evidence=evidence,
                                       plots_dir=plots_dir, options=self.opts.probe_options,
                                       progress=lambda done, total=None, n=name: self.progress.update(n, done, total))
                    plan["probes"][name] = {"seconds_allowed": round(seconds, 2)}
                    remaining.pop(name)
                    result = self._run_probe(probe, ctx, left_total=left)
                    evidence[name] = result
                    plan["probes"][name]["seconds_used"] = round(result.seconds, 2)
                    if name == "warmup" and result.ok:
                        step_time = result.metrics.get("step_seconds")
                        plan["step_seconds"] = step_time
                    if name == "data_scan" and patient.device.type == "cuda" and _bad_labels(result):
                        # later probes stream every batch: one with such labels would assert on the GPU
                        patient, note = cpu_if_cuda_would_assert(patient, "the data scan found labels out of range")
                        evidence.facts["device_note"] = note
            except KeyboardInterrupt:
                interrupted = True
                for name in selected:
                    evidence.setdefault(name, ProbeResult(name=name, status="skipped", reason="interrupted (Ctrl-C)"))
            # 3. diagnoses, 4. treatments, 5. ranking
            findings, not_evaluated = self._diagnose(evidence)
            if self.opts.treatments and not interrupted:
                try:
                    self._treat(findings, patient, evidence, plots_dir, deadline - reserve, step_time)
                except KeyboardInterrupt:
                    interrupted = True
            findings = ranking.rank(findings)
        report = Report(config=config_name, verdict=ranking.verdict(findings),
                        elapsed_seconds=time.perf_counter() - t0, findings=findings,
                        probes={n: evidence[n] for n in evidence}, version=__version__, plan=plan,
                        not_evaluated=not_evaluated, interrupted=interrupted, patient=evidence.facts,
                        out_dir=str(self.opts.out) if self.opts.out else None, evidence=evidence)
        # 6. the report files
        if self.opts.out is not None:
            from nandoctor.report.writer import write_all
            write_all(report, self.opts.out, elapsed=lambda: time.perf_counter() - t0)
        return report

    def _run_probe(self, probe: probes.Probe, ctx: ProbeContext, left_total: float) -> ProbeResult:
        self.progress.start(probe.name, probe.title or probe.name)
        start = time.perf_counter()
        if left_total <= 0 and probe.name != "warmup":
            result = probe.result(status="skipped", reason="the time budget was spent")
        elif probe.needs_pairs and ctx.patient.train_step is not None and not _pairs_ok(ctx.patient):
            result = probe.result(status="skipped", reason="batches are not (inputs, targets) pairs")
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = isolation.run_probe(probe, ctx)  # crashes as findings, whose fault they are; OOM; hangs
            # warnings the user's code (or torch on its behalf) raised are evidence too
            messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
            if messages:
                result.metrics.setdefault("warnings", messages[:MAX_WARNINGS])
        result.seconds = time.perf_counter() - start
        self.progress.finish(probe.name, result)
        return result

    def _diagnose(self, evidence: Evidence):
        findings, not_evaluated = [], []
        for code, diag in diagnoses.load_all().items():
            missing = [p for p in diag.requires if p not in evidence]
            failed = [p for p in diag.requires if p in evidence and not evidence[p].ok]
            if missing or (failed and not diag.accepts_failed):
                not_evaluated.append({"code": code, "missing": missing + failed,
                                      "reason": "probe not run" if missing else "probe failed or skipped"})
                continue
            try:
                out = diag.check(evidence)
            except Exception as exc:  # a diagnosis bug must not kill the report
                not_evaluated.append({"code": code, "reason": f"diagnosis error: {type(exc).__name__}: {exc}"})
                continue
            if out is None:
                continue
            findings.extend(out if isinstance(out, list) else [out])
        return findings, not_evaluated

    def _treat(self, findings, patient, evidence, plots_dir, until: float, step_time) -> None:
        registry = diagnoses.load_all()
        candidates = [f for f in ranking.rank(list(findings))
                      if type(registry[f.code]).treat is not diagnoses.Diagnosis.treat][:MAX_TREATMENTS]
        for i, finding in enumerate(candidates):
            left = until - time.perf_counter()
            if left <= 0.5:
                break
            ctx = ProbeContext(patient=patient, seconds=left / (len(candidates) - i),
                               step_time=step_time or FALLBACK_STEP_SECONDS, evidence=evidence,
                               plots_dir=plots_dir, options=self.opts.probe_options)
            self.progress.start(f"treat:{finding.code}", f"Try a cure for {finding.code}")
            try:
                finding.treatment = registry[finding.code].treat(ctx, finding)
                if finding.treatment:
                    plot_treatment(ctx, finding.code, finding.treatment)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                finding.treatment = {"tried": "failed to run", "cured": False, "error": error_record(exc)}
            self.progress.finish(f"treat:{finding.code}", ProbeResult(name=finding.code))


def _bad_labels(result: ProbeResult) -> bool:
    targets = (result.metrics or {}).get("targets") or {}
    return bool((targets.get("out_of_range") or {}).get("count"))


def _pairs_ok(patient: Patient) -> bool:
    try:
        sample = patient.train_data[0]
    except Exception:
        return False
    return isinstance(sample, (tuple, list)) and len(sample) == 2

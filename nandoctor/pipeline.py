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

from nandoctor import __version__, diagnoses, isolation, planning, probes, ranking, treatments, watchdog
from nandoctor.config import Config, load_config
from nandoctor.errors import ConfigError
from nandoctor.loading import build_patient
from nandoctor.patient import Patient, callable_name, preserved_rng, split_batch
from nandoctor.probes import ProbeContext
from nandoctor.probes import training
from nandoctor.probes.training import error_record
from nandoctor.records import Evidence, Finding, ProbeResult, Report, severity_rank
from nandoctor.treatments import plot_treatment

DEFAULT_BUDGET = 120.0       # seconds for the whole run
REPORT_RESERVE = 0.06        # share of the budget kept for diagnoses, plots and writing the report
MIN_REPORT_RESERVE = 2.5     # ... and at least this many seconds
MAX_TREATMENTS = 3           # cures tried per run, best-ranked findings first; the plan keeps room for all of them
CURE_COST = 1.1              # one cure re-runs the overfit training (its untreated run is the overfit probe's)
TREATMENTS = "treatments"    # the cures' entry in the plan
REFUTE_TIER = 3              # a cure that fails refutes only at the overfit probe's steps at this tier (240)
COMPOSE_PROBES = ("overfit", "lr_sweep")  # run again on the cured copy, with the probes the other candidates read
COMPOSE_MIN_SHARE = 0.15     # ... only while this share of the budget is left
COMPOSE_MIN_SECONDS = 8.0    # ... and at least this many seconds
FALLBACK_STEP_SECONDS = 0.05  # assumed step time when the warm-up could not measure one
MAX_WARNINGS = 5             # distinct warnings kept per probe (e.g. torch's broadcasting warning)
MIN_ALLOWANCE = 2.0          # seconds a probe that is not planned in steps gets at least
WATCHDOG_GRACE = 5.0         # the hard stop comes this long after a probe's own deadline (at most at the budget's end)
SLOWDOWN = 1.5               # steps this much slower than planned: re-plan the rest at the new step time
# most important first: when the budget is short the last ones are dropped (and reported inconclusive)
PRIORITY = ["overfit", "lr_sweep", TREATMENTS, "gradients", "nonfinite", "precision", "schedule", "init",
            "bn_freeze", "generalise", "train_eval"]


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
    step_time_scale: float = 1.0            # tests and benchmarks: plan as if steps were this much slower
    compose: bool = True                    # diagnose the cured copy again after the top cure (not inside that check)


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
            "custom_train_step": patient.train_step is not None, "seed": patient.seed,
            "precision": patient.precision, "grad_scaler": patient.uses_grad_scaler,
            "scheduler": patient.scheduler_name, "scheduler_interval": patient.scheduler_interval
            if patient.scheduler is not None else None, "grad_clip": patient.grad_clip,
            "accumulate": patient.accumulate, "collate_fn": callable_name(patient.collate_fn)
            if patient.collate_fn is not None else None, "loss_weighted": loss_weighted(patient.loss_fn)}


def loss_weighted(loss_fn) -> str | None:
    """The loss's own class weighting (``weight=`` or ``pos_weight=`` of the torch losses), else None."""
    loss_fn = getattr(loss_fn, "func", loss_fn)
    for name in ("pos_weight", "weight"):
        if isinstance(getattr(loss_fn, name, None), torch.Tensor):
            return name
    return None


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


def preload_torch() -> None:
    """Import what torch loads on first use before the budget's clock starts: the first optimizer built in a
    process imports ``torch._dynamo`` (seconds, more on a busy machine), which is start-up, not the patient's
    step time; the warm-up would otherwise take it for a slow step and plan every probe short."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def load_patient(source, device: str | None, seed: int | None) -> tuple[Patient, str]:
    if isinstance(source, Patient):
        return source, "<python objects>"
    cfg = source if isinstance(source, Config) else load_config(source)
    return build_patient(cfg, device=device, seed=seed), cfg.given or str(cfg.path)


def diagnose(source, *, budget: float = DEFAULT_BUDGET, probes: Iterable[str] | None = None,
             device: str | None = None, seed: int | None = None, out: str | Path | None = None,
             progress: Progress | None = None, probe_options: dict | None = None,
             treatments: bool = True, step_time_scale: float = 1.0) -> Report:
    """Run the battery on a config path, a ``Config`` or a ``Patient`` and return the ranked ``Report``.

    Writes ``report.json/.md/.html`` and ``plots/`` to ``out`` when given. Bad input raises
    ``NandoctorError``; the user's code failing during a probe becomes a finding instead.
    """
    from nandoctor.report.writer import staged

    preload_torch()
    with staged(out) as stage:  # the report is written beside ``out`` and moved into place whole
        opts = Options(budget=float(budget), probes=tuple(probes) if probes is not None else None, device=device,
                       seed=seed, out=stage, probe_options=probe_options or {}, treatments=treatments,
                       step_time_scale=float(step_time_scale))
        report = Battery(opts, progress or Progress()).run(source)
    report.out_dir = str(out) if out is not None else None
    return report


class Battery:
    def __init__(self, opts: Options, progress: Progress):
        self.opts = opts
        self.progress = progress

    def run(self, source) -> Report:
        t0 = self.t0 = time.perf_counter()
        reserve = self.reserve = max(MIN_REPORT_RESERVE, REPORT_RESERVE * self.opts.budget)
        self.end = t0 + self.opts.budget - reserve   # probes and cures stop here; the report fits in the reserve
        self.selected = ()
        # 1. config -> patient (bad input raises here, before anything trains)
        selected = select_probes(self.opts.probes)
        self.selected = tuple(selected)
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
            self.plan_record: dict = {"budget_seconds": self.opts.budget, "probes": {}}
            self.plan: planning.Plan | None = None
            self.needs: dict[str, planning.StepNeed] = {}
            self.step_time = FALLBACK_STEP_SECONDS
            # 2. probes: the warm-up measures the step time, the planner sizes the rest in steps
            try:
                for name, probe in selected.items():
                    if name != "warmup" and self.plan is None and (
                            probe.need(self._context(patient, evidence, plots_dir, 0.0, name)) is not None or
                            name == list(selected)[-1]):
                        # the plan is made before the first training probe: the static checks and the data scan
                        # have then taken what they took, not their allowance
                        self._make_plan({n: p for n, p in selected.items() if n not in evidence},
                                        patient, evidence, plots_dir)
                    result = self._run_probe(probe, patient, evidence, plots_dir)
                    evidence[name] = result
                    if name == "warmup" and result.ok and result.metrics.get("step_seconds"):
                        self.step_time = result.metrics["step_seconds"] * self.opts.step_time_scale
                        self.plan_record["step_seconds"] = self.step_time
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
                    self._treat(findings, patient, evidence, plots_dir)
                    findings = ranking.rank(findings)
                    if self.opts.compose:
                        findings += self._compose(findings, patient)
                except KeyboardInterrupt:
                    interrupted = True
            findings = ranking.rank(findings)
        if self.plan is not None:
            self.plan_record["steps"]["dropped"] = dict(self.plan.dropped)
            inconclusive = [n for n, r in evidence.items() if r.status == "inconclusive"]
            if inconclusive:
                needed = planning.suggest_budget(max(self.plan.needed_seconds, self.opts.budget * 1.25))
                self.plan_record["note"] = (f"{len(inconclusive)} probe(s) inconclusive ({', '.join(inconclusive)}): "
                                            f"at {self.step_time:.3g} s a step the full battery needs about "
                                            f"{needed} s (--budget {needed})")
        report = Report(config=config_name, verdict=ranking.verdict(findings),
                        elapsed_seconds=time.perf_counter() - t0, findings=findings,
                        probes={n: evidence[n] for n in evidence}, version=__version__, plan=self.plan_record,
                        not_evaluated=not_evaluated, interrupted=interrupted, patient=evidence.facts,
                        out_dir=str(self.opts.out) if self.opts.out else None, evidence=evidence)
        # 6. the report files
        if self.opts.out is not None:
            from nandoctor.report.writer import write_all
            write_all(report, self.opts.out, elapsed=lambda: time.perf_counter() - t0)
        return report

    # --- planning -------------------------------------------------------------------------
    def _context(self, patient, evidence, plots_dir, seconds: float, name: str) -> ProbeContext:
        return ProbeContext(patient=patient, seconds=seconds, step_time=self.step_time, evidence=evidence,
                            plots_dir=plots_dir, options=self.opts.probe_options, selected=self.selected,
                            progress=lambda done, total=None, n=name: self.progress.update(n, done, total))

    def _needs(self, probes_left: dict, patient, evidence, plots_dir) -> dict[str, planning.StepNeed]:
        needs = {}
        for name, probe in probes_left.items():
            need = probe.need(self._context(patient, evidence, plots_dir, 0.0, name))
            if need is not None:
                needs[name] = need
        return needs

    def _make_plan(self, selected: dict, patient, evidence, plots_dir) -> None:
        """Before the first training probe: one tier for every training probe (and the cures), from the step time
        the warm-up measured and the seconds left once the static checks and the data scan have run."""
        later = {n: p for n, p in selected.items() if n != "warmup"}
        needs = self._needs(later, patient, evidence, plots_dir)
        if self.opts.treatments and "overfit" in needs:
            o = needs["overfit"]  # a cure re-runs the overfit training: size them like it
            needs[TREATMENTS] = planning.StepNeed(o.min, o.ideal, cost=MAX_TREATMENTS * CURE_COST)
        unplanned = sum(self._allowance(p) for n, p in later.items() if n not in needs)
        now = time.perf_counter()
        available = self.end - now - unplanned
        self.plan = planning.plan(needs, PRIORITY, self.step_time, available,
                                  extra_seconds=unplanned + (now - self.t0) + self.reserve)
        self.needs = needs
        self.plan_record["planned_training_seconds"] = round(available, 2)
        self.plan_record["tier"] = self.plan.tier
        self.plan_record["tiers"] = dict(self.plan.tiers)
        self.plan_record["steps"] = self.plan.to_json()  # as first planned; probes' entries say what each got

    def _allowance(self, probe: probes.Probe) -> float:
        """Seconds for a probe that is not planned in steps (static checks, the data scan)."""
        return probe.share * self.opts.budget

    # --- running ------------------------------------------------------------------------
    def _run_probe(self, probe: probes.Probe, patient, evidence, plots_dir) -> ProbeResult:
        name = probe.name
        self.progress.start(name, probe.title or name)
        start = time.perf_counter()
        ctx, reason = self._sized_context(probe, patient, evidence, plots_dir)
        if reason is not None:
            result = probe.result(status="inconclusive", reason=reason)
        elif probe.needs_pairs and patient.train_step is not None and not _pairs_ok(patient):
            result = probe.result(status="skipped", reason="batches are not (inputs, targets) pairs")
        else:
            meter = training.StepMeter.start()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ctx.hard_stop = self._hard_stop(ctx) if name != "warmup" else self.end
                result = isolation.run_probe(probe, ctx)  # crashes as findings, whose fault they are; OOM; hangs
            # warnings the user's code (or torch on its behalf) raised are evidence too
            messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
            if messages:
                result.metrics.setdefault("warnings", messages[:MAX_WARNINGS])
            self._observe(meter.stop())
        result.seconds = time.perf_counter() - start
        entry = self.plan_record["probes"].setdefault(name, {})
        entry.update(seconds_allowed=round(ctx.seconds, 2) if ctx else 0.0, seconds_used=round(result.seconds, 2))
        if ctx is not None and ctx.planned_steps is not None:
            entry.update(planned_steps=ctx.planned_steps, min_steps=ctx.min_steps)
        if result.status == "inconclusive":
            entry["inconclusive"] = result.reason
        self.progress.finish(name, result)
        return result

    def _sized_context(self, probe, patient, evidence, plots_dir) -> tuple[ProbeContext | None, str | None]:
        """The probe's context with its steps and deadline, or the reason it cannot reach its minimum."""
        name, now = probe.name, time.perf_counter()
        left = self.end - now
        if name == "warmup":
            return self._context(patient, evidence, plots_dir, max(0.0, left), name), None
        if left <= 0:
            return None, "the time budget was spent before it could start"
        need = self.needs.get(name) if self.plan is not None else None
        if need is None:
            need = probe.need(self._context(patient, evidence, plots_dir, 0.0, name))
            if need is not None:  # known only now (e.g. the NaN replay needs the step the NaN appeared at)
                self.needs[name] = need
                self.plan.tiers[name] = self.plan.tier
                self.plan.steps[name] = need.steps_at(self.plan.tier)
        if need is None:
            seconds = min(left, max(self._allowance(probe), MIN_ALLOWANCE))
            return self._context(patient, evidence, plots_dir, seconds, name), None
        if name in self.plan.dropped:
            return None, self.plan.dropped[name]
        # re-plan what is still to run at the step time measured so far, with the cures' reserve
        later = [n for n in self.plan.steps if n not in evidence]
        self.plan = planning.replan(self.plan, {n: self.needs[n] for n in later}, PRIORITY, self.step_time, left)
        if name in self.plan.dropped:
            return None, self.plan.dropped[name]
        seconds = self.plan.seconds[name]
        ctx = self._context(patient, evidence, plots_dir, min(left, planning.deadline_seconds(seconds)), name)
        ctx.planned_steps, ctx.min_steps = self.plan.steps[name], need.min
        return ctx, None

    def _hard_stop(self, ctx: ProbeContext) -> float:
        """Where the watchdog stops code that does not come back to the training loop in time."""
        return min(ctx.deadline + WATCHDOG_GRACE, self.end + 1.0)

    def _observe(self, median_step: float | None) -> None:
        """A machine that slows down mid-run: the step time the rest of the plan uses goes up with it."""
        if median_step is not None and median_step > SLOWDOWN * self.step_time * planning.SAFETY:
            self.step_time = median_step / planning.SAFETY
            self.plan_record.setdefault("slowdowns", []).append(round(self.step_time, 4))

    def _diagnose(self, evidence: Evidence):
        findings, not_evaluated = [], []
        for code, diag in diagnoses.load_all().items():
            missing = [p for p in diag.requires if p not in evidence]
            failed = [p for p in diag.requires if p in evidence and not evidence[p].ok]
            # a required probe that ran but was inconclusive or failed: judge from the fallback probes
            fallback = diag.fallback and not missing and all(evidence.ok(p) is not None for p in diag.fallback)
            if not fallback and (missing or (failed and not diag.accepts_failed) or
                                 any(evidence[p].status == "inconclusive" for p in failed)):
                reason = "probe not run" if missing else "probe inconclusive" if any(
                    evidence[p].status == "inconclusive" for p in failed) else "probe failed or skipped"
                not_evaluated.append({"code": code, "missing": missing + failed, "reason": reason})
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

    def _treat(self, findings, patient, evidence, plots_dir) -> None:
        """Differential diagnosis: every warning or critical finding with a cure, and every ``info`` one marked
        ``evidence.candidate_only`` (a weak sign only its cure can raise), gets it tried, the best
        ranked first, each cure sized in steps like the overfit probe and run only if it fits whole. A
        symptom whose cause is already confirmed needs no cure of its own: it is folded under that cause."""
        registry = diagnoses.load_all()
        overfit = self.needs.get("overfit") if self.plan is not None else None
        steps = (self.plan.steps.get(TREATMENTS) or overfit.min) if overfit is not None else None
        if steps is not None:
            steps = self._cure_tier(steps, overfit, findings, registry, patient, evidence, plots_dir)
        confirmed: list[Finding] = []
        for finding in ranking.rank(list(findings)):
            if finding.severity == "info" and not finding.evidence.get("candidate_only"):
                continue   # a note; a candidate (an info its cure may raise) is tried
            cause = next((c for c in confirmed if finding.code in c.explains), None)
            if cause is not None:
                finding.treatment_note = f"not tried: explained by {cause.code}, confirmed by its cure"
                confirm_with_cause(registry[finding.code], finding, cause)
                continue
            name = f"treat:{finding.code}"
            ctx = self._cure_context(patient, evidence, plots_dir, name, steps, overfit)
            try:
                cures = registry[finding.code].cures(ctx, finding)
            except Exception as exc:  # a diagnosis bug must not kill the report
                finding.treatment = {"tried": "failed to describe a cure", "cured": False, "judged": False,
                                     "error": error_record(exc)}
                continue
            cost = sum(self._cure_seconds(c, steps) for c in cures)
            left = self.end - time.perf_counter()
            if not cures:
                continue
            if left <= 0.5 or (steps is not None and min(self._cure_seconds(c, steps) for c in cures) > left):
                finding.treatment_note = "not tried: the budget was spent"
                continue
            ctx.seconds = min(left, planning.deadline_seconds(cost) if cost else left)
            ctx.started = time.perf_counter()
            self.progress.start(name, f"Try a cure for {finding.code}")
            try:
                with watchdog.deadline(self._hard_stop(ctx)):
                    record, cure = treatments.treat(ctx, cures)
                finding.treatment = record
                if cure is not None:
                    finding.severity = cure.severity or finding.severity
                    finding.fix = cure.fix or finding.fix
                    for key, value in cure.becomes.items():
                        setattr(finding, key, value)
                    finding.cure = cure
                    confirmed.append(finding)
                elif record is not None and record.get("nothing_to_cure") and finding.severity == "warning":
                    finding.severity = "info"  # the untreated run already trains: it does not hurt this training
                elif record is not None and record.get("judged") is not False:
                    tried = next((c for c in cures if c.tried == record["tried"]), cures[-1])  # the last one run
                    if tried.refuted_severity and severity_rank(finding.severity) > severity_rank(tried.refuted_severity):
                        finding.severity = tried.refuted_severity  # the trouble it was blamed for stays without it
                if record is not None:
                    plot_treatment(ctx, finding.code, record)
            except KeyboardInterrupt:
                raise
            except watchdog.Overrun:
                finding.treatment = None
                finding.treatment_note = "not judged: the cure ran past its deadline"
            except Exception as exc:
                finding.treatment = {"tried": "failed to run", "cured": False, "judged": False,
                                     "error": error_record(exc)}
            self.progress.finish(name, ProbeResult(name=finding.code))
        # a candidate confirmed late (ranked as a note until its cure ran) still takes the symptoms it explains
        for finding in findings:
            if finding.treatment is None and finding.severity != "info":
                cause = next((c for c in confirmed if finding.code in c.explains and c is not finding), None)
                if cause is not None:
                    finding.treatment_note = f"not tried: explained by {cause.code}, confirmed by its cure"
                    confirm_with_cause(registry[finding.code], finding, cause)

    def _cure_context(self, patient, evidence, plots_dir, name: str, steps: int | None,
                      overfit: planning.StepNeed | None) -> ProbeContext:
        """A cure's context: the cures' planned steps, the overfit probe's minimum and its refutation length."""
        ctx = self._context(patient, evidence, plots_dir, 0.0, name)
        ctx.planned_steps, ctx.min_steps = steps, (overfit.min if overfit is not None else 0)
        ctx.refute_steps = overfit.steps_at(REFUTE_TIER) if overfit is not None else None
        return ctx

    def _cure_seconds(self, cure, steps: int | None) -> float:
        """What one cure costs at the measured step time: both arms when the control is trained too."""
        if cure.done is not None:
            return 0.0
        arms = 2 if (cure.train is not None or cure.control_hooks is not None or cure.steps is not None) else 1
        return planning.step_seconds(CURE_COST * arms * (cure.steps or steps or 0), self.step_time)

    def _cure_tier(self, steps: int, overfit: planning.StepNeed, findings, registry, patient, evidence,
                   plots_dir) -> int:
        """The cures' steps: the plan's tier, raised (in the planner's doubling tiers, up to the overfit
        probe's ideal) while every candidate's first cure still fits what is left, as when probes crashed
        early. Each is costed as described at those steps (a cure on the data stream trains longer than one
        on the fixed batch), and at least as two overfit-length arms."""
        candidates = [f for f in findings if f.severity != "info"
                      and type(registry[f.code]).cures is not diagnoses.Diagnosis.cures]
        left = self.end - time.perf_counter()

        def cost(s: int) -> float:
            total = 0.0
            for f in candidates:
                ctx = self._cure_context(patient, evidence, plots_dir, f"treat:{f.code}", s, overfit)
                try:
                    cures = registry[f.code].cures(ctx, f)
                except Exception:   # a diagnosis bug: its cure is reported where it is tried
                    cures = []
                floor = planning.step_seconds(CURE_COST * s * 2, self.step_time)
                total += max([floor] + [self._cure_seconds(c, s) for c in cures[:1]])
            return total

        while candidates and steps * 2 <= overfit.ideal and cost(steps * 2) <= left:
            steps *= 2
        return steps

    def _compose(self, findings: list[Finding], patient: Patient) -> list[Finding]:
        """Cures compose: after the top cause is confirmed, the battery runs again on the cured copy.

        The codes still found there are ``treatment.remaining`` of the top cure; the other candidates
        that are gone (their probes ran again and they did not fire) are folded under it
        (``explained_by``); what is found only on the cured copy joins the report, marked as found after
        the cure. Returns those new findings."""
        top = next((f for f in findings if f.severity != "info" and f.explained_by is None), None)
        if top is None or not top.confirmed or top.cure is None:
            return []
        cured = treatments.cured_patient(patient, top.cure)
        left = self.end - time.perf_counter()
        if cured is None:
            top.treatment["remaining_note"] = "not checked: this cure is not a change of the set-up to train again"
            return []
        if left < max(COMPOSE_MIN_SECONDS, COMPOSE_MIN_SHARE * self.opts.budget):
            top.treatment["remaining_note"] = "not checked: the budget was spent"
            return []
        registry = diagnoses.load_all()
        others = [f for f in findings if f is not top]
        wanted = set(COMPOSE_PROBES) | {p for f in others if f.severity != "info" for p in registry[f.code].requires}
        names = tuple(n for n in select_probes(None) if n in wanted and n in self.selected)
        sub_opts = dataclasses.replace(self.opts, budget=left, probes=names, out=None, compose=False)
        try:
            sub = Battery(sub_opts, _Prefixed(self.progress, "after cure: ")).run(cured)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the check after the cure must not kill the report
            top.treatment["remaining_note"] = f"not checked: {type(exc).__name__}: {exc}"
            return []
        found = [f for f in sub.findings if f.severity != "info"]
        top.treatment["remaining"] = [f.code for f in found if f.code != top.code]
        top.treatment["remaining_status"] = {f.code: f.status for f in found if f.code != top.code}
        short = [n for n in names if sub.probes.get(n) is not None and sub.probes[n].status == "inconclusive"]
        if short:   # what those probes would have found on the cured copy is not known: say so, do not go quiet
            top.treatment["remaining_note"] = (f"partly checked: not run to the steps their verdicts need in the "
                                               f"{left:.0f} s left: {', '.join(short)} (a larger --budget checks them)")
        # 1. the candidates the cure removed: their probes ran again and they are gone
        still = {f.code for f in sub.findings}
        for f in others:
            needs = registry[f.code].requires
            if f.code not in still and f.explained_by is None and f.severity != "info" and needs \
                    and all(sub.probes.get(n) is not None and sub.probes[n].ok for n in needs):
                f.gone_after = top.code
                f.treatment_note = f.treatment_note or f"gone once {top.code} is cured"
                if f.treatment is None and f.role == "symptom":
                    confirm_with_cause(registry[f.code], f, top, rule=f"the battery run again on the cured copy: "
                                                                      f"{', '.join(needs)} no longer show it")
        # 2. what is still there and was confirmed on the cured copy, where no cure of its own was tried here
        #    (it was left to the cause), or where its cure failed here because the top cause was still in the
        #    way (two faults at once): the two cures together are its treatment
        again = {f.code: f for f in sub.findings if f.confirmed and f.treatment}
        for f in others:
            g = again.get(f.code)
            if g is not None and (f.treatment is None or f.confirmed is False):
                if f.confirmed is False:
                    f.evidence = {**f.evidence, "refuted_before": {k: f.treatment.get(k) for k in ("tried", "judged_by")}}
                    f.severity = g.severity
                f.treatment = {**g.treatment, "tried": f"{top.treatment.get('tried')}, then {g.treatment.get('tried')}",
                               "on_cured_copy": top.code}
                # what the cured copy measured is what the fix must follow (an LR sweep through a broken loss
                # suggests nothing): its numbers, title and fix, the first measurement kept beside them
                f.evidence = {**g.evidence, "measured_on": f"the copy cured of {top.code}", "before_cure": f.evidence}
                f.title, f.fix, f.plots = f"{g.title} (once {top.code} is cured)", g.fix, []
                f.treatment.pop("plot", None)
                if self.opts.out is not None and f.treatment.get("curves"):
                    f.treatment["plot"] = f"plots/treatment-{f.code}.png"  # drawn by the report from its curves
                f.treatment_note = f"confirmed on the copy cured of {top.code}"
        # 2b. refuted here while the top cause was in the way, only suspected on the cured copy (its cure found
        #     nothing left to cure there): the refutation says nothing, the cured copy's suspicion stands
        suspected = {g.code: g for g in sub.findings if g.confirmed is None and g.severity != "info"}
        for f in others:
            g = suspected.get(f.code)
            if g is not None and f.confirmed is False and f.treatment is not None:
                f.evidence = {**f.evidence, "refuted_before": {k: f.treatment.get(k) for k in ("tried", "judged_by")},
                              "suspected_on": f"the copy cured of {top.code}"}
                f.treatment, f.severity = None, g.severity
                f.treatment_note = (f"its cure was tried with {top.code} still in the way; on the copy cured of "
                                    f"{top.code} it is still found, untried there")
        # 2c. tried here without a verdict (neither run trained while the top cause was in the way) and refuted on
        #     the cured copy, where its cure could be judged: the refutation stands
        refuted = {g.code: g for g in sub.findings if g.confirmed is False and g.treatment}
        for f in others:
            g = refuted.get(f.code)
            if g is not None and f.status == "inconclusive":
                f.evidence = {**f.evidence, "inconclusive_before": {k: f.treatment.get(k) for k in ("tried", "judged_by")}}
                f.treatment = {**g.treatment, "tried": f"{top.treatment.get('tried')}, then {g.treatment.get('tried')}",
                               "on_cured_copy": top.code}
                f.treatment.pop("plot", None)
                f.severity = g.severity
                f.treatment_note = f"refuted on the copy cured of {top.code}"
        # 3. what only the cured copy shows
        known = {f.code for f in findings}
        new = []
        for f in found:
            if f.code in known:
                continue
            f.after_cure = top.code
            f.title = f"After the cure for {top.code}: {f.title}"
            f.evidence = {**f.evidence, "found_after_cure": top.treatment.get("tried")}
            new.append(f)
        return new


def confirm_with_cause(diagnosis, finding: Finding, cause: Finding, rule: str | None = None) -> bool:
    """A symptom the cure of its confirmed cause removed is confirmed with it: its treatment is that cure,
    ``via`` the cause, judged by ``rule`` (or the symptom's own ``gone_with`` reading of the cure's two
    arms). Returns whether it was."""
    try:
        rule = rule or diagnosis.gone_with(finding, cause.treatment)
    except Exception:  # a reading that does not fit this record: no claim
        rule = None
    if not rule:
        return False
    t = cause.treatment or {}
    finding.treatment = {"tried": t.get("tried"), "cured": True, "via": cause.code, "judged_by": rule,
                         "protocol": t.get("protocol"), "before": dict(t.get("before") or {}),
                         "after": dict(t.get("after") or {})}
    finding.treatment_note = f"gone with the cure for {cause.code}"
    return True


class _Prefixed(Progress):
    """The caller's progress, with a prefix on every task (the battery run again on a cured copy)."""

    def __init__(self, inner: Progress, prefix: str):
        self.inner, self.prefix = inner, prefix

    def start(self, name, title, total=None):
        self.inner.start(self.prefix + name, self.prefix + title, total)

    def update(self, name, done, total=None):
        self.inner.update(self.prefix + name, done, total)

    def finish(self, name, result):
        self.inner.finish(self.prefix + name, result)


def _bad_labels(result: ProbeResult) -> bool:
    targets = (result.metrics or {}).get("targets") or {}
    return bool((targets.get("out_of_range") or {}).get("count"))


def _pairs_ok(patient: Patient) -> bool:
    try:
        sample = patient.train_data[0]
    except Exception:
        return False
    return isinstance(sample, (tuple, list)) and len(sample) == 2

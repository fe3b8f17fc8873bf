"""The data scan: walk the training set sample by sample, in batches, and measure what is in it.

The seeds' advice for a loss that is NaN from the first step is "set batch_size=1,
shuffle off, and look at every sample". This probe does that walk for the user,
without a Python loop at batch size 1:

1. measure: load a first chunk, run the model on it (eval mode), learn the output
   shape, what the loss expects of the targets, and the cost per sample;
2. train a second fresh copy for a few steps (the "after a short training" model);
3. stream over the whole training set in chunks (or, when that does not fit the
   time allowance, over a stated, uniformly drawn share of it): per-feature /
   per-channel moments, min, max and non-finite counts, the co-moment with the row
   index, the class histogram, labels the loss cannot take, and the per-sample loss
   of both models in batches (``reduction='none'``); a chunk whose loss raises is
   bisected to the samples that make it raise; a sample whose loading raises is
   reported with its index and the exception, and the scan goes on;
4. per-sample gradient norms (``torch.func``) for the worst samples and a random
   reference set;
5. plots: per-sample loss with the outliers labelled, class histogram, feature scales.

Per-sample numbers come from the models in **eval mode** (BatchNorm uses its running
statistics, dropout is off), so models with BatchNorm work at any chunk size. State
is constant in the dataset size: moments, a fixed-size reservoir, the top-k losses.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Iterator

import torch

from nandoctor.patient import split_batch, to_device
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.samples import (MAX_ERRORS_KEPT, Chunk, PerSampleLoss, SampleSource, batch_size_of,
                                      first_tensor, loss_callable, sample_error, take)
from nandoctor.probes.scan_stats import FeatureStats, IndexList, Reservoir, TargetStats, TopK
from nandoctor.probes.training import error_record, train
from nandoctor.records import ProbeResult

# --- sizes and shares (defaults) ---------------------------------------------------------------
CHUNK_ELEMENTS = 2 ** 21     # input elements per chunk (~8 MB of float32): bounds memory, whatever the set size
MIN_CHUNK, MAX_CHUNK = 16, 8192  # samples per chunk
MEASURE_SHARE = 0.1          # the measuring passes take at most this share of the probe's time
MEASURE_SAMPLES = 512        # samples of the first, timing chunk
TRAINED_FACTOR = 1.5         # processing cost with the trained model's forward pass too, against without it
TRAIN_SHARE = 0.2            # share of the probe's time for the short training
TRAIN_MAX_STEPS = 50         # the short training never takes more steps than this
TRAIN_MIN_STEPS = 5          # below this there is no "after training" model
RESERVE_SHARE = 0.15         # share of the time kept for gradient norms and plots ...
MIN_RESERVE = 0.5            # ... and at least this many seconds ...
PLOT_RESERVE = 1.5           # ... or this many when plots are drawn
COST_MARGIN = 1.25           # safety factor on the measured cost per sample
MIN_SCAN = 256               # scan at least this many samples (or all), whatever the budget
RESERVOIR_ROWS = 2048        # rows kept for robust (median/IQR) feature scales and the loss plot
PIXELS_PER_SAMPLE = 8        # per-channel values kept per image for the robust scales
TOP_K = 24                   # worst samples kept by loss
GRAD_REFERENCE = 64          # random samples whose gradient norm is the reference
MAX_BISECT_FAILURES = 64     # single samples isolated by bisection, at most
MAX_FEATURES_JSON = 256      # per-feature lists in report.json are cut here
WORST_LISTED = 10            # worst samples listed in report.json, by loss and by gradient norm

CLASS_LOSSES = {"CrossEntropyLoss", "NLLLoss", "cross_entropy", "nll_loss", "MultiMarginLoss", "multi_margin_loss"}
BINARY_LOSSES = {"BCELoss", "BCEWithLogitsLoss", "binary_cross_entropy", "binary_cross_entropy_with_logits"}
REGRESSION_LOSSES = {"MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "mse_loss", "l1_loss", "smooth_l1_loss",
                     "huber_loss", "GaussianNLLLoss", "PoissonNLLLoss"}


class DataScan(Probe):
    name = "data_scan"
    title = "Scan the training data"
    order = 8
    share = 0.15

    def run(self, ctx: ProbeContext) -> ProbeResult:
        scan = Scan(ctx)
        return scan.run(self)


class Scan:
    """The state of one scan (one object so the steps stay short functions)."""

    def __init__(self, ctx: ProbeContext):
        self.ctx = ctx
        self.patient = ctx.patient
        self.dataset = ctx.patient.train_data
        self.n = len(self.dataset)
        self.source = SampleSource(self.dataset, ctx.patient.collate_fn)
        self.gen = torch.Generator().manual_seed(self.patient.seed + 4)
        self.errors: list[dict] = []
        self.error_counts: Counter = Counter()  # stage (loading, collate, loss) -> samples
        self.pairs = True
        self.loss_error: dict | None = None
        self.bisect_failures = 0
        self.min_reserve = PLOT_RESERVE if ctx.plots_dir is not None else MIN_RESERVE

    # --- the steps ------------------------------------------------------------------------------
    def run(self, probe: Probe) -> ProbeResult:
        t0 = time.perf_counter()
        # 1. measure on a first chunk
        first = self.measure()
        if first is None:
            return probe.result(status="failed", metrics={"samples_total": self.n, "samples_scanned": 0},
                                error={**(self.errors[0] if self.errors else {"type": "DataError",
                                        "message": "no sample could be loaded"}), "phase": "loading samples"})
        # 2. the short training
        self.trained, self.training = self.short_training()
        # 3. the streaming pass
        order, planned = self.plan()
        scanned, cut = self.stream(order)
        # 4. gradient norms of the worst samples
        grads = self.grad_norms()
        # 5. metrics and plots
        metrics = self.metrics(scanned, planned, cut, grads, time.perf_counter() - t0)
        plots = self.plots(metrics)
        return probe.result(metrics=metrics, plots=plots, data={"reservoir": self.loss_res, "features": self.fstats})

    def measure(self) -> Chunk | None:
        """Load a first chunk, run the model once: shapes, loss kind, cost per sample."""
        t0 = time.perf_counter()
        pick = torch.randint(self.n, (self.measure_samples(),), generator=self.gen).unique()  # sorted, no O(n) perm.
        chunk = self.source.load(pick)  # its errors are noted when the stream meets them again
        if chunk.batch is None or chunk.index.numel() == 0:
            self.errors = chunk.errors[:MAX_ERRORS_KEPT]
            return None
        load_s = time.perf_counter() - t0
        batch = to_device(chunk.batch, self.patient.device)
        inputs, targets = self.split(batch)
        self.model0 = self.patient.new_model().eval()
        self.outputs_shape, self.n_outputs = None, None
        out = self.first_outputs(inputs) if self.pairs else None  # else only the user's train_step knows the form
        self.per_sample_s = self.time_process(batch, chunk.index, inputs, targets, out, load_s)
        x = first_tensor(inputs)
        numel = max(1, x[0].numel()) if x is not None and x.dim() > 0 else 1
        self.chunk_size = int(min(MAX_CHUNK, max(MIN_CHUNK, CHUNK_ELEMENTS // numel)))
        return chunk

    def measure_samples(self) -> int:
        """Samples in the measuring chunk: MEASURE_SAMPLES, fewer for a slow model (its two forward passes
        over the chunk should cost at most MEASURE_SHARE of the probe's time; a forward pass is about a
        third of a training step)."""
        per_sample = self.ctx.step_time / max(1, self.patient.batch_size) / 3
        fit = int(MEASURE_SHARE * self.ctx.seconds / 2 / max(per_sample, 1e-9))
        return max(MIN_CHUNK, min(MEASURE_SAMPLES, fit))

    def first_outputs(self, inputs):
        """The fresh model's outputs on the first chunk (eval mode); learns the number of outputs."""
        try:
            with torch.no_grad():
                out = self.model0(inputs)
        except Exception as exc:
            self.loss_error = {**error_record(exc), "stage": "forward"}
            return None
        t = first_tensor(out)
        if t is not None:
            self.outputs_shape = list(t.shape[1:])
            self.n_outputs = int(t.shape[1]) if t.dim() >= 2 else 1
        return out

    def time_process(self, batch, index, inputs, targets, out, load_s: float) -> float:
        """Seconds per sample of the scan: loading, plus processing timed on a warm second pass over the chunk."""
        self.setup_accumulators(inputs, targets, out)
        self.trained = None
        self.process(batch, index)  # first calls pay one-time costs
        t0 = time.perf_counter()
        self.process(batch, index)
        proc_s = time.perf_counter() - t0
        # start the real scan from scratch (a systematic loss error found here stays: the scan would meet it again)
        self.setup_accumulators(inputs, targets, out)
        self.errors, self.error_counts, self.bisect_failures = [], Counter(), 0
        return (load_s + TRAINED_FACTOR * proc_s) / index.numel()

    def split(self, batch) -> tuple[Any, Any]:
        try:
            return split_batch(batch)
        except Exception:
            self.pairs = False
            return batch, None

    def setup_accumulators(self, inputs, targets, outputs) -> None:
        x = first_tensor(inputs)
        self.layout = layout_of(x)
        self.fstats = FeatureStats(with_index=self.layout == "features")
        self.feature_res = Reservoir(RESERVOIR_ROWS, seed=self.patient.seed + 1)
        kind, ignore = target_kind(self.patient.loss_fn, outputs, targets, self.n_outputs)
        self.target_kind = kind
        self.tstats = TargetStats(self.n_outputs if kind == "class" else None, kind, ignore)
        self.target_dtype_problem = dtype_problem(kind, targets)
        self.nonfinite = IndexList()
        self.nonfinite_inputs = IndexList()
        self.nonfinite_targets = IndexList()
        self.loss_nonfinite = IndexList()
        self.loss_res = Reservoir(RESERVOIR_ROWS * 2, seed=self.patient.seed + 2)  # rows: index, init, trained
        self.top0, self.top1 = TopK(TOP_K), TopK(TOP_K)
        self.per_sample = PerSampleLoss(self.patient.loss_fn) if self.pairs else None

    def short_training(self) -> tuple[torch.nn.Module | None, dict]:
        """Train a second fresh copy for a few steps on random batches; eval mode afterwards."""
        p = self.patient
        budget = self.ctx.seconds * TRAIN_SHARE
        steps = int(min(TRAIN_MAX_STEPS, budget / max(self.ctx.step_time, 1e-6)))
        if steps < TRAIN_MIN_STEPS:
            return None, {"steps": 0, "skipped": "no time for a short training"}
        model = p.new_model()
        try:
            optimizer = p.make_optimizer(model)
            run = train(p, model, optimizer, self.batches(p.batch_size), steps,
                        deadline=time.perf_counter() + budget)
        except Exception as exc:
            return None, {"steps": 0, "error": error_record(exc)}
        info = {"steps": run.steps, "stopped": run.stopped, "error": run.error,
                "initial_loss": run.initial, "final_loss": run.losses[-1] if run.losses else None}
        if run.error or run.nonfinite_step is not None or run.steps < TRAIN_MIN_STEPS:
            return None, info
        return model.eval(), info

    def batches(self, size: int) -> Iterator[Any]:
        """Endless random batches of ``size`` samples. Samples that fail to load or hold NaN/Inf are left out:
        they are reported by the scan, and one of them would make the trained model useless for the others."""
        gen = torch.Generator().manual_seed(self.patient.seed + 5)
        size = min(size, self.n)
        for _ in range(100 * TRAIN_MAX_STEPS):  # independent draws: no O(n) permutation of a huge set
            chunk = self.source.load(torch.randint(self.n, (size,), generator=gen))
            if chunk.batch is None:
                continue
            batch = chunk.batch
            if self.pairs:
                inputs, targets = split_batch(batch)
                clean = ~(nonfinite_rows(inputs, chunk.index.numel()) | nonfinite_rows(targets, chunk.index.numel()))
                if not bool(clean.any()):
                    continue
                if not bool(clean.all()):
                    batch = take(batch, clean.nonzero().squeeze(1))
            yield batch

    def plan(self) -> tuple[torch.Tensor | None, int]:
        """The scan order: None for every sample in order (chunks made on the fly, constant memory), or the
        indices of a uniform random share (a seeded permutation's prefix: any prefix of it is uniform too)."""
        avail = self.ctx.time_left() - max(self.min_reserve, RESERVE_SHARE * self.ctx.seconds)
        fit = int(avail / max(self.per_sample_s * COST_MARGIN, 1e-9))
        planned = max(min(self.n, MIN_SCAN), min(self.n, fit))
        if planned >= self.n:
            return None, self.n
        return torch.randperm(self.n, generator=self.gen)[:planned], planned

    def stream(self, order: torch.Tensor | None) -> tuple[int, bool]:
        """One pass in chunks over every sample (``order`` None) or over ``order``; returns (samples scanned,
        cut short by the deadline)."""
        done, total = 0, (self.n if order is None else order.numel())
        self.ctx.progress(0, total)
        hard_stop = self.ctx.deadline - self.min_reserve
        for s in range(0, total, self.chunk_size):
            if s > 0 and time.perf_counter() > hard_stop:
                return done, True
            idx = (torch.arange(s, min(s + self.chunk_size, total)) if order is None
                   else order[s:s + self.chunk_size].sort().values)
            chunk = self.load(idx)
            if chunk.batch is not None and chunk.index.numel():
                self.process(to_device(chunk.batch, self.patient.device), chunk.index)
            done += idx.numel()
            self.ctx.progress(done, total)
        return done, False

    def load(self, idx: torch.Tensor) -> Chunk:
        chunk = self.source.load(idx)
        for e in chunk.errors:
            self.note_error(e)
        return chunk

    def note_error(self, err: dict) -> None:
        self.error_counts[err.get("stage")] += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(err)

    # --- one chunk ------------------------------------------------------------------------------
    def process(self, batch, index: torch.Tensor) -> None:
        inputs, targets = self.split(batch)
        # 1. non-finite inputs and targets, per sample
        b = index.numel()
        bad_x, bad_y = nonfinite_rows(inputs, b), nonfinite_rows(targets, b)
        self.nonfinite_inputs.add(index[bad_x])
        self.nonfinite_targets.add(index[bad_y])
        self.nonfinite.add(index[bad_x | bad_y])
        # 2. feature moments and the reservoir for robust scales
        x = first_tensor(inputs)
        rows = feature_rows(x, self.layout, self.gen)
        if rows is not None:
            self.fstats.update(rows, index if self.layout == "features" else None)
            self.feature_res.add(rows if self.layout == "features" else rows[torch.randperm(
                rows.shape[0], generator=self.gen)[:PIXELS_PER_SAMPLE * index.numel()]])
        # 3. targets: range, histogram; labels the loss cannot take
        bad_label = torch.zeros(b, dtype=torch.bool)
        if isinstance(targets, torch.Tensor) and targets.dim() >= 1:
            bad_label = self.tstats.update(targets, index).cpu()
        # 4. per-sample losses of both models, without the samples already known to make the loss raise
        if self.per_sample is not None and self.loss_error is None and not bool(bad_label.all()):
            keep = (~bad_label).nonzero().squeeze(1)
            if keep.numel() < b:
                inputs, targets, index = take(inputs, keep), take(targets, keep), index[keep]
                bad_x, bad_y = bad_x[keep], bad_y[keep]
            l0, failed = self.losses(self.model0, inputs, targets, index)
            l1 = self.losses(self.trained, inputs, targets, index)[0] if self.trained is not None else None
            self.record_losses(index, l0, l1, bad_x | bad_y | failed)

    def losses(self, model, inputs, targets, index: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Per-sample losses ``[B]`` and a ``[B]`` mask of the samples that alone make the loss raise (their
        loss is NaN). The losses are None when every sample fails (a systematic error, recorded once)."""
        none_failed = torch.zeros(index.numel(), dtype=torch.bool)
        try:
            return self._losses(model, inputs, targets), none_failed
        except Exception as exc:
            first_exc = exc
        b = index.numel()
        probes = sorted({0, b // 2, b - 1})
        singles = [self._try_one(model, inputs, targets, j) for j in probes]
        if all(s is None for s in singles) and b > len(probes):
            self.loss_error = {**error_record(first_exc), "stage": "loss", "samples": [int(index[j]) for j in probes]}
            return None, none_failed
        out = torch.full((b,), float("nan"))
        failed = torch.zeros(b, dtype=torch.bool)
        self.bisect(model, inputs, targets, index, torch.arange(b), out, failed)
        return out, failed

    def _losses(self, model, inputs, targets) -> torch.Tensor:
        with torch.no_grad():
            return self.per_sample(model(inputs), targets).detach().float().cpu()

    def _try_one(self, model, inputs, targets, j: int) -> torch.Tensor | None:
        pos = torch.tensor([j])
        try:
            return self._losses(model, take(inputs, pos), take(targets, pos))
        except Exception:
            return None

    def bisect(self, model, inputs, targets, index, pos: torch.Tensor, out: torch.Tensor,
               failed: torch.Tensor) -> None:
        """Fill ``out[pos]`` with losses, splitting ``pos`` until the samples that raise are alone."""
        try:
            out[pos] = self._losses(model, take(inputs, pos), take(targets, pos))
            return
        except Exception as exc:
            if pos.numel() == 1 or self.bisect_failures >= MAX_BISECT_FAILURES:
                failed[pos] = True
                for j in pos.tolist():
                    self.note_error(sample_error(int(index[j]), exc, "loss"))
                self.bisect_failures += pos.numel()
                return
        half = pos.numel() // 2
        self.bisect(model, inputs, targets, index, pos[:half], out, failed)
        self.bisect(model, inputs, targets, index, pos[half:], out, failed)

    def record_losses(self, index, l0, l1, excused: torch.Tensor) -> None:
        if l0 is None:
            return
        l1 = l1 if l1 is not None else torch.full_like(l0, float("nan"))
        # a non-finite loss on finite data is a sample-loss finding; on non-finite data it is data-nonfinite's,
        # and a sample whose loss raised is a sample error
        self.loss_nonfinite.add(index[~torch.isfinite(l0) & ~excused.cpu()])
        self.loss_res.add(torch.stack([index.double(), l0.double(), l1.double()], 1))
        self.top0.add(l0, index)
        if self.trained is not None:
            self.top1.add(l1, index)

    # --- gradient norms -------------------------------------------------------------------------
    def grad_norms(self) -> dict:
        """Per-sample gradient norms (torch.func) of the worst samples and of a random reference set."""
        if self.per_sample is None or self.loss_error is not None or not len(self.loss_res):
            return {}
        worst = [i for i, _ in self.top0.items()[:8]] + [i for i, _ in self.top1.items()[:8]]
        ref = self.loss_res.rows[:GRAD_REFERENCE, 0].long().tolist()
        idx = torch.tensor(sorted(set(worst + ref)), dtype=torch.long)
        chunk = self.source.load(idx)
        if chunk.batch is None:
            return {}
        inputs, targets = self.split(to_device(chunk.batch, self.patient.device))
        out = {}
        for label, model in (("init", self.model0), ("trained", self.trained)):
            if model is None:
                continue
            try:
                norms, method = per_sample_grad_norms(model, self.per_sample, inputs, targets)
            except Exception as exc:
                out["error"] = error_record(exc)
                break
            out[label] = grad_summary(dict(zip(chunk.index.tolist(), norms.tolist())), set(ref))
            out["method"] = method
        return out

    # --- the record -----------------------------------------------------------------------------
    def metrics(self, scanned: int, planned: int, cut: bool, grads: dict, seconds: float) -> dict:
        feats = self.fstats.result()
        feats.update(robust_scales(self.feature_res))
        names = feature_names(self.dataset, len(feats.get("mean", [])), self.layout)
        m = {
            "samples_total": self.n, "samples_scanned": scanned, "share_scanned": scanned / self.n,
            "whole_set": scanned == self.n,
            "sampling": sampling(scanned, planned, self.n),
            "uniform": scanned == self.n or planned < self.n,
            "planned": planned, "cut_by_deadline": cut, "chunk_size": self.chunk_size,
            "loading": self.source.method, "mode": "eval (BatchNorm running statistics, dropout off)",
            "seconds_per_1000_samples": 1000 * self.per_sample_s,
            "inputs": {"layout": self.layout, "features": len(feats.get("mean", [])), "feature_names": names,
                       "pairs": self.pairs},
            "features": {k: (v[:MAX_FEATURES_JSON] if isinstance(v, list) else v) for k, v in feats.items()},
            "features_truncated": len(feats.get("mean", [])) > MAX_FEATURES_JSON,
            "index_columns": list(getattr(self.dataset, "index_columns", []) or []),
            "nonfinite": {**self.nonfinite.result(), "inputs": self.nonfinite_inputs.result(),
                          "targets": self.nonfinite_targets.result()},
            "load_errors": {"count": self.error_counts["loading"] + self.error_counts["collate"],
                            "loss_failures": self.error_counts["loss"], "first": self.errors},
            "targets": {**self.tstats.result(), "dtype_problem": self.target_dtype_problem,
                        "loss": self.patient.loss_name, "n_outputs": self.n_outputs,
                        # the user's train_step may convert or remap the labels before the loss sees them
                        "custom_step": self.patient.train_step is not None},
            "loss": self.loss_metrics(),
            "grad_norms": grads,
            "training": jsonable_training(self.training),
            "seconds": seconds,
        }
        return m

    def loss_metrics(self) -> dict:
        out: dict = {"method": self.per_sample.method if self.per_sample else None, "error": self.loss_error,
                     "nonfinite": self.loss_nonfinite.result()}
        rows = self.loss_res.rows
        if rows is None:
            return out
        for col, label, top in ((1, "init", self.top0), (2, "trained", self.top1)):
            vals = rows[:, col]
            vals = vals[torch.isfinite(vals)]
            if vals.numel() == 0:
                continue
            med = float(vals.median())
            mad = float((vals - med).abs().median()) * 1.4826
            out[label] = {"median": med, "mad": mad, "p99": float(torch.quantile(vals, 0.99)),
                          "max": float(vals.max()), "sampled": int(vals.numel()),
                          "worst": [{"index": i, "loss": v} for i, v in top.items()[:WORST_LISTED]]}
        return out

    def plots(self, m: dict) -> list[str]:
        if self.ctx.plots_dir is None:
            return []
        from nandoctor.report import data_plots
        return data_plots.save_all(self.ctx, m, self.loss_res)


# --- helpers (pure) --------------------------------------------------------------------------------
def layout_of(x: torch.Tensor | None) -> str:
    """How the inputs are read: ``features`` [B, F], ``channels`` [B, C, ...], ``scalar`` [B], or ``none``."""
    if x is None or not x.is_floating_point() or x.dim() == 0:
        return "none"
    return {1: "scalar", 2: "features"}.get(x.dim(), "channels")


def feature_rows(x: torch.Tensor | None, layout: str, gen: torch.Generator) -> torch.Tensor | None:
    """Rows for per-column statistics: [B, F] features, [B*L, C] channel values, or [B, 1] scalars."""
    if layout == "features":
        return x
    if layout == "scalar":
        return x[:, None]
    if layout == "channels":
        return x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])  # [B, C, L] -> [B*L, C]
    return None


def nonfinite_rows(obj, b: int) -> torch.Tensor:
    """[B] bool: the samples with any NaN/Inf in any floating tensor of ``obj`` (a batch of ``b``)."""
    bad = torch.zeros(b, dtype=torch.bool)
    for t in tensors_of(obj):
        if t.is_floating_point() and t.dim() >= 1 and t.shape[0] == b:
            bad |= ~torch.isfinite(t.reshape(b, -1)).all(1).cpu()
    return bad


def tensors_of(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors_of(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors_of(o)]
    return []


def loss_name(loss_fn) -> str:
    func, _ = loss_callable(loss_fn)
    return type(func).__name__ if isinstance(func, torch.nn.Module) else getattr(func, "__name__", "")


def target_kind(loss_fn, outputs, targets, n_outputs: int | None) -> tuple[str, int | None]:
    """What the loss expects of the targets: ``class`` indices, ``binary`` values in [0, 1], ``regression``,
    ``soft`` (class probabilities) or ``unknown``; and the ignore_index of a class loss."""
    if not isinstance(targets, torch.Tensor):
        return "unknown", None
    name = loss_name(loss_fn)
    out = first_tensor(outputs) if outputs is not None else None
    if name in CLASS_LOSSES:
        if targets.is_floating_point() and out is not None and targets.shape == out.shape:
            return "soft", None
        func, kwargs = loss_callable(loss_fn)
        ignore = getattr(func, "ignore_index", kwargs.get("ignore_index", -100))
        return "class", ignore
    if name in BINARY_LOSSES:
        return "binary", None
    if name in REGRESSION_LOSSES:
        return "regression", None
    if (not targets.is_floating_point() and targets.dim() == 1 and out is not None and out.dim() == 2
            and (n_outputs or 0) >= 2):
        return "class", None  # integer labels and [N, C] scores with a loss we do not know
    return "unknown", None


def dtype_problem(kind: str, targets) -> dict | None:
    """``{"dtype", "expected"}`` when the targets' dtype is one the loss cannot take."""
    if not isinstance(targets, torch.Tensor):
        return None
    dtype = str(targets.dtype).replace("torch.", "")
    if kind == "class" and targets.dtype not in (torch.long, torch.uint8):
        return {"dtype": dtype, "expected": "int64 (torch.long) class indices"}
    if kind == "binary" and not targets.is_floating_point():
        return {"dtype": dtype, "expected": "float32 values in [0, 1]"}
    return None


def robust_scales(res: Reservoir) -> dict:
    """Per-column median and IQR-based scale from the reservoir (robust to a few outlier samples)."""
    if res.rows is None or res.rows.shape[0] < 2:
        return {}
    rows = res.rows
    q = torch.nanquantile(rows, torch.tensor([0.25, 0.5, 0.75], dtype=rows.dtype), dim=0)  # [3, F]
    scale = (q[2] - q[0]) / 1.349
    return {"median": _clean(q[1]), "robust_scale": _clean(scale), "robust_rows": int(rows.shape[0])}


def _clean(t: torch.Tensor) -> list:
    return [float(v) if math.isfinite(v) else None for v in t.tolist()]


def feature_names(dataset, count: int, layout: str) -> list[str] | None:
    names = getattr(dataset, "feature_names", None)
    if names is not None and len(names) == count and layout == "features":
        return [str(n) for n in names][:MAX_FEATURES_JSON]
    return None


def grad_summary(norms: dict[int, float], reference: set[int]) -> dict:
    """The reference samples' median gradient norm and the largest norms with their ratio to it."""
    ref = sorted(v for i, v in norms.items() if i in reference and math.isfinite(v))
    median = ref[len(ref) // 2] if ref else None
    worst = sorted(norms.items(), key=lambda kv: -kv[1] if math.isfinite(kv[1]) else -math.inf)[:WORST_LISTED]
    return {"reference_samples": len(ref), "reference_median": median,
            "worst": [{"index": int(i), "grad_norm": v, "ratio": v / median if median else None} for i, v in worst]}


def sampling(scanned: int, planned: int, n: int) -> str:
    """How the scanned samples were chosen, in words."""
    if scanned == n:
        return "every sample"
    if planned < n:
        return f"a uniformly drawn share: the first {scanned} of a seeded random permutation of all {n}"
    return f"the first {scanned} samples in order (the time allowance ran out)"


def jsonable_training(info: dict) -> dict:
    return {k: v for k, v in info.items()}


def per_sample_grad_norms(model, per_sample: PerSampleLoss, inputs, targets) -> tuple[torch.Tensor, str]:
    """``[B]`` gradient norms, one per sample: ``torch.func.vmap(grad(...))``, else a loop over the few samples."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    b = batch_size_of(inputs)
    try:
        def one(p, xi, yi):
            out = torch.func.functional_call(model, (p, buffers), (take(xi, None),))
            return per_sample.single(out, take(yi, None))
        grads = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(params, inputs, targets)
        sq = sum(g.reshape(b, -1).pow(2).sum(1) for g in grads.values())
        return sq.sqrt().cpu(), "torch.func.vmap(grad)"
    except Exception:
        pass
    norms = []
    for j in range(b):  # the subset is small (a few dozen samples)
        pos = torch.tensor([j])
        model.zero_grad(set_to_none=True)
        loss = per_sample.single(model(take(inputs, pos)), take(targets, pos))
        loss.backward()
        norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None)))
    model.zero_grad(set_to_none=True)
    return torch.tensor(norms), "autograd, one sample at a time (torch.func could not run this model)"

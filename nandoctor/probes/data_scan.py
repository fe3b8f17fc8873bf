"""The data scan: walk the training set sample by sample, in batches, and measure what is in it.

The seeds' advice for a loss that is NaN from the first step is "set batch_size=1,
shuffle off, and look at every sample". This probe does that walk for the user,
without a Python loop at batch size 1:

1. a first chunk of random samples: run the model on it (eval mode), learn the
   output shape and what the loss expects of the targets; its rows are the reference
   (per-feature medians and spreads) for each sample's input magnitude;
2. train a second fresh copy for a few steps (the "after a short training" model);
3. stream over the training set in chunks until every sample is done or the time
   allowance runs out (then the samples done are a stated, uniformly drawn share: the
   set is visited in blocks of consecutive samples taken in a seeded random order, so
   what is scanned does not depend on a speed estimate): per-feature / per-channel
   moments, min, max and non-finite counts, the co-moment with the row index, the
   class histogram, labels the loss cannot take, each sample's input magnitude (its
   largest robust z-score), and the per-sample loss of both models in batches
   (``reduction='none'``), with the gradient norm of every sample where that costs one
   batched backward pass (models made of ``nn.Linear`` layers); a chunk whose loss
   raises is bisected to the samples that make it raise; a sample whose loading
   raises is reported with its index and the exception, and the scan goes on;
4. per-sample gradient norms (``torch.func``) of the worst samples by loss and by
   magnitude and of a random reference set (of every sample when step 3 had them);
5. plots: per-sample loss and input magnitude with the outliers labelled, class
   histogram, feature scales.

Per-sample numbers come from the models in **eval mode** (BatchNorm uses its running
statistics, dropout is off), so models with BatchNorm work at any chunk size. State
is constant in the dataset size (moments, fixed-size reservoirs, the top-k) except the
per-sample columns kept for sets of up to ``MAX_PER_SAMPLE`` samples (4 bytes per
sample and column), so every sample's loss can be looked up.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from nandoctor.patient import split_batch, to_device
from nandoctor.probes import Probe, ProbeContext
from nandoctor.probes.samples import (MAX_ERRORS_KEPT, Chunk, NotFactorable, PerSampleLoss, SampleSource,
                                      as_batch_of_one, batch_size_of, first_tensor, linear_grad_norms, linear_only,
                                      loss_callable, sample_error, take)
from nandoctor.probes.scan_stats import (MAX_PER_SAMPLE, FeatureStats, IndexList, Magnitude, PerSample, Reservoir,
                                         TargetStats, TopK)
from nandoctor.probes.training import error_record, train
from nandoctor.records import Metrics, ProbeResult

# --- sizes and shares (defaults) ---------------------------------------------------------------
CHUNK_ELEMENTS = 2 ** 21     # input elements per chunk (~8 MB of float32): bounds memory, whatever the set size
MIN_CHUNK, MAX_CHUNK = 16, 8192  # samples per chunk
BLOCK = 256                  # the set is visited in blocks of this many consecutive samples, in a random order
MEASURE_SHARE = 0.1          # the first chunk's forward pass takes at most this share of the probe's time
MEASURE_SAMPLES = 512        # samples of the first chunk (the magnitude reference)
TRAIN_SHARE = 0.2            # share of the probe's time for the short training
TRAIN_MAX_STEPS = 50         # the short training never takes more steps than this
TRAIN_MIN_STEPS = 5          # below this there is no "after training" model
RESERVE_SHARE = 0.15         # share of the time kept for gradient norms and plots ...
MIN_RESERVE = 0.5            # ... and at least this many seconds ...
PLOT_RESERVE = 1.5           # ... or this many when plots are drawn
MIN_SCAN = 256               # scan at least this many samples (or all), whatever the budget
RESERVOIR_ROWS = 2048        # rows kept for robust (median/IQR) feature scales and the loss plot
PIXELS_PER_SAMPLE = 8        # per-channel values kept per image for the robust scales
REFERENCE_PIXELS = 2 ** 16   # per-channel values of the first chunk that are the magnitude reference
TOP_K = 24                   # worst samples kept by loss, by input magnitude and by gradient norm
GRAD_WORST = 8               # worst samples by each ranking whose gradient norm is measured afterwards
GRAD_REFERENCE = 64          # random samples whose gradient norm is the reference
MAX_BISECT_FAILURES = 64     # single samples isolated by bisection, at most
MAX_FEATURES_JSON = 256      # per-feature lists in report.json are cut here
WORST_LISTED = 10            # worst samples listed in report.json, by loss and by gradient norm

CLASS_LOSSES = {"CrossEntropyLoss", "NLLLoss", "cross_entropy", "nll_loss", "MultiMarginLoss", "multi_margin_loss"}
BINARY_LOSSES = {"BCELoss", "BCEWithLogitsLoss", "binary_cross_entropy", "binary_cross_entropy_with_logits"}
REGRESSION_LOSSES = {"MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "mse_loss", "l1_loss", "smooth_l1_loss",
                     "huber_loss", "GaussianNLLLoss", "PoissonNLLLoss"}
MAGNITUDE_METHOD = "largest |x - median| / spread over the sample's values (per-feature medians and IQR spreads " \
                   "of a random reference chunk)"


@dataclass
class DataScanMetrics(Metrics):
    """What the scan measured over the training set; the nested records are documented in docs/data-scan.md."""

    samples_total: int | None = None
    samples_scanned: int | None = None
    share_scanned: float | None = None
    whole_set: bool | None = None
    sampling: str | None = None               # "every sample", or the uniformly drawn share
    uniform: bool | None = None
    planned: int | None = None
    cut_by_deadline: bool | None = None
    chunk_size: int | None = None
    block: int | None = None
    loading: str | None = None                # how samples were read (batched __getitems__, a loader ...)
    mode: str | None = None
    seconds_per_1000_samples: float | None = None
    inputs: dict | None = None                # layout, features, feature_names, pairs
    features: dict | None = None              # per-feature mean, std, min, max, robust scales, index correlation
    features_truncated: bool | None = None
    index_columns: list | None = None
    nonfinite: dict | None = None             # samples with NaN/Inf: count, indices, listed_all; inputs, targets
    load_errors: dict | None = None
    targets: dict | None = None               # dtype, range, class histogram, labels out of range
    loss: dict | None = None                  # per-sample loss at init and after the short training, worst samples
    magnitude: dict | None = None             # per-sample input magnitude, extreme samples
    grad_norms: dict | None = None
    per_sample: dict | None = None
    training: dict | None = None              # the short training the "trained" losses come from
    seconds: float | None = None


class DataScan(Probe):
    name = "data_scan"
    title = "Scan the training data"
    order = 8
    share = 0.15
    metrics_type = DataScanMetrics

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
        self.trained: torch.nn.Module | None = None
        self.every_grad: str | None = None   # how every sample's gradient norm is had, or None
        self.grads_missing = False           # a chunk with losses but without gradient norms was met
        self.stream_seconds = 0.0

    # --- the steps ------------------------------------------------------------------------------
    def run(self, probe: Probe) -> ProbeResult:
        t0 = time.perf_counter()
        # 1. the first chunk: shapes, loss kind, the magnitude reference
        first = self.measure()
        if first is None:
            return probe.result(status="failed", metrics={"samples_total": self.n, "samples_scanned": 0},
                                error={**(self.errors[0] if self.errors else {"type": "DataError",
                                        "message": "no sample could be loaded"}), "phase": "loading samples"})
        # 2. the short training
        self.trained, self.training = self.short_training()
        # 3. the streaming pass
        scanned, cut = self.stream()
        # 4. gradient norms of the worst samples
        grads = self.grad_norms()
        # 5. metrics and plots
        metrics = self.metrics(scanned, cut, grads, time.perf_counter() - t0)
        plots = self.plots(metrics)
        return probe.result(metrics=metrics, plots=plots, data={"reservoir": self.loss_res, "features": self.fstats,
                                                                "per_sample": self.per_sample_cols})

    def measure(self) -> Chunk | None:
        """Load a first chunk of random samples, run the model once: shapes, loss kind, magnitude reference."""
        pick = torch.randint(self.n, (self.measure_samples(),), generator=self.gen).unique()  # sorted, no O(n) perm.
        chunk = self.source.load(pick)  # its errors are noted when the stream meets them again
        if chunk.batch is None or chunk.index.numel() == 0:
            self.errors = chunk.errors[:MAX_ERRORS_KEPT]
            return None
        batch = to_device(chunk.batch, self.patient.device)
        inputs, targets = self.split(batch)
        self.model0 = self.patient.new_model().eval()
        self.outputs_shape, self.n_outputs = None, None
        out = self.first_outputs(inputs) if self.pairs else None  # else only the user's train_step knows the form
        self.setup_accumulators(inputs, targets, out)
        if self.per_sample is not None and self.loss_error is None and linear_only(self.model0):
            self.every_grad = self.try_linear_norms(inputs, targets)
        x = first_tensor(inputs)
        numel = max(1, x[0].numel()) if x is not None and x.dim() > 0 else 1
        self.chunk_size = int(min(MAX_CHUNK, max(MIN_CHUNK, CHUNK_ELEMENTS // numel)))
        return chunk

    def measure_samples(self) -> int:
        """Samples in the first chunk: MEASURE_SAMPLES, fewer for a slow model (its forward pass over the chunk
        should cost at most MEASURE_SHARE of the probe's time; a forward pass is about a third of a step)."""
        per_sample = self.ctx.step_time / max(1, self.patient.batch_size) / 3
        fit = int(MEASURE_SHARE * self.ctx.seconds / max(per_sample, 1e-9))
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

    def try_linear_norms(self, inputs, targets) -> str | None:
        """Whether the batched per-sample gradient norms work on this model (tried on the first chunk)."""
        try:
            linear_grad_norms(self.model0, self.per_sample, inputs, targets)
        except Exception:  # NotFactorable, or a loss that raises on these samples: no every-sample norms
            return None
        return "every sample: |g| |a| per nn.Linear layer, one batched backward pass"

    def split(self, batch) -> tuple[Any, Any]:
        try:
            return split_batch(batch)
        except Exception:
            self.pairs = False
            return batch, None

    def setup_accumulators(self, inputs, targets, outputs) -> None:
        x = first_tensor(inputs)
        self.layout = layout_of(x, self.model0)
        self.fstats = FeatureStats(with_index=self.layout == "features")
        self.feature_res = Reservoir(RESERVOIR_ROWS, seed=self.patient.seed + 1)
        rows = feature_rows(x, self.layout, self.gen)
        if rows is not None and self.layout in ("channels", "sequence"):
            rows = rows[torch.randperm(rows.shape[0], generator=self.gen)[:REFERENCE_PIXELS]]
        self.magnitude = Magnitude(rows, last_dim=self.layout == "sequence") \
            if rows is not None and rows.shape[0] >= 2 else None
        kind, ignore = target_kind(self.patient.loss_fn, outputs, targets, self.n_outputs)
        self.target_kind = kind
        self.tstats = TargetStats(self.n_outputs if kind == "class" else None, kind, ignore)
        self.target_dtype_problem = dtype_problem(kind, targets)
        self.nonfinite = IndexList()
        self.nonfinite_inputs = IndexList()
        self.nonfinite_targets = IndexList()
        self.loss_nonfinite = IndexList()
        # rows: index, loss at init, loss after training, input magnitude
        self.loss_res = Reservoir(RESERVOIR_ROWS * 2, seed=self.patient.seed + 2)
        self.top0, self.top1, self.top_mag, self.top_grad = TopK(TOP_K), TopK(TOP_K), TopK(TOP_K), TopK(TOP_K)
        self.per_sample = PerSampleLoss(self.patient.loss_fn) if self.pairs else None
        self.per_sample_cols = (PerSample(self.n, ("loss_init", "loss_trained", "magnitude", "grad_norm_init"))
                                if self.n <= MAX_PER_SAMPLE else None)

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

    def chunks(self) -> Iterator[torch.Tensor]:
        """The scan order: blocks of BLOCK consecutive samples in a seeded random order, ``chunk_size`` samples
        at a time (each chunk's indices sorted). Any prefix of it is a uniform share of the set, so a scan cut
        short by the deadline is one too; the order costs 8 bytes per block, not per sample."""
        n, size = self.n, self.chunk_size
        if n <= size:
            yield torch.arange(n)
            return
        order = torch.randperm(-(-n // BLOCK), generator=self.gen)
        offsets = torch.arange(BLOCK)
        if size >= BLOCK:
            per = size // BLOCK
            for s in range(0, order.numel(), per):
                idx = (order[s:s + per].sort().values[:, None] * BLOCK + offsets).flatten()
                yield idx[idx < n]
            return
        for blk in order.tolist():
            for s in range(blk * BLOCK, min((blk + 1) * BLOCK, n), size):
                yield torch.arange(s, min(s + size, (blk + 1) * BLOCK, n))

    def stream(self) -> tuple[int, bool]:
        """One pass in chunks until every sample is done or the deadline; returns (samples scanned, cut short)."""
        t0 = time.perf_counter()
        done = 0
        self.ctx.progress(0, self.n)
        stop = self.ctx.deadline - max(self.min_reserve, RESERVE_SHARE * self.ctx.seconds)
        for idx in self.chunks():
            if done >= min(self.n, MIN_SCAN) and time.perf_counter() > stop:
                self.stream_seconds = time.perf_counter() - t0
                return done, True
            chunk = self.load(idx)
            if chunk.batch is not None and chunk.index.numel():
                self.process(to_device(chunk.batch, self.patient.device), chunk.index)
            done += idx.numel()
            self.ctx.progress(done, self.n)
        self.stream_seconds = time.perf_counter() - t0
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
        b = index.numel()
        # 1. feature moments and the reservoir for robust scales (which also tells whether x is all finite)
        x = first_tensor(inputs)
        rows = feature_rows(x, self.layout, self.gen)
        x_bad = None  # [B] samples of x with a NaN/Inf, once the feature moments have looked
        if rows is not None:
            bad_rows = self.fstats.update(rows, index if self.layout == "features" else None)
            x_bad = torch.zeros(b, dtype=torch.bool) if bad_rows is None else bad_rows.reshape(b, -1).any(1)
            self.feature_res.add(rows if self.layout == "features" else rows[torch.randperm(
                rows.shape[0], generator=self.gen)[:PIXELS_PER_SAMPLE * b]])
        # 2. non-finite inputs and targets, per sample
        bad_x = nonfinite_rows(inputs, b, known=(x, x_bad) if x_bad is not None else None)
        bad_y = nonfinite_rows(targets, b)
        if bool(bad_x.any()) or bool(bad_y.any()):
            self.nonfinite_inputs.add(index[bad_x])
            self.nonfinite_targets.add(index[bad_y])
            self.nonfinite.add(index[bad_x | bad_y])
        # 3. each sample's input magnitude
        mag = (self.magnitude.score(x, finite=not bool(x_bad.any()))
               if self.magnitude is not None and x_bad is not None else None)
        # 4. targets: range, histogram; labels the loss cannot take
        bad_label = torch.zeros(b, dtype=torch.bool)
        if isinstance(targets, torch.Tensor) and targets.dim() >= 1:
            bad_label = self.tstats.update(targets, index).cpu()
        # 5. per-sample losses of both models (and gradient norms), without the samples known to make the loss raise
        l0 = l1 = g0 = None
        keep = torch.arange(b)
        if self.per_sample is not None and self.loss_error is None and not bool(bad_label.all()):
            if bool(bad_label.any()):
                keep = (~bad_label).nonzero().squeeze(1)
                inputs, targets = take(inputs, keep), take(targets, keep)
            l0, failed, g0 = self.first_losses(inputs, targets, index[keep])
            l1 = self.losses(self.trained, inputs, targets, index[keep])[0] if self.trained is not None else None
            if l0 is not None:
                # a non-finite loss on finite data is a sample-loss finding; on non-finite data it is
                # data-nonfinite's, and a sample whose loss raised is a sample error
                excused = bad_x[keep] | bad_y[keep] | failed
                self.loss_nonfinite.add(index[keep][~torch.isfinite(l0) & ~excused])
        self.record(index, keep, mag, l0, l1, g0)

    def first_losses(self, inputs, targets, index) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """The fresh model's per-sample losses, failures and (when every sample gets one) gradient norms."""
        if self.every_grad is not None:
            try:
                l0, g0 = linear_grad_norms(self.model0, self.per_sample, inputs, targets)
                return l0, torch.zeros(index.numel(), dtype=torch.bool), g0
            except NotFactorable:
                self.every_grad = None
            except Exception:  # the plain pass below finds the samples that make the loss raise ...
                l0, failed = self.losses(self.model0, inputs, targets, index)
                if l0 is not None and not bool(failed.any()):
                    self.every_grad = None  # ... and when none does, the batched norms do not work here
                return l0, failed, None
        l0, failed = self.losses(self.model0, inputs, targets, index)
        return l0, failed, None

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

    def record(self, index, keep, mag, l0, l1, g0) -> None:
        """Per-sample numbers of one chunk (``keep``: the positions that got a loss) into the accumulators."""
        b = index.numel()
        nan = lambda: torch.full((b,), float("nan"))  # noqa: E731 - a [B] column of "no value"
        full0, full1 = nan(), nan()
        if l0 is not None:
            full0[keep] = l0
            self.top0.add(l0, index[keep])
        if l1 is not None:
            full1[keep] = l1
            self.top1.add(l1, index[keep])
        if g0 is not None:
            self.top_grad.add(g0, index[keep])
        elif l0 is not None:
            self.grads_missing = True  # this chunk took the plain pass: not every sample has a gradient norm
        magc = mag if mag is not None else nan()
        if mag is not None:
            self.top_mag.add(mag, index, extra=torch.stack([full0, full1], 1))
        self.loss_res.add(torch.stack([index.double(), full0.double(), full1.double(), magc.double()], 1))
        if self.per_sample_cols is not None:
            self.per_sample_cols.add(index, magnitude=mag)
            if l0 is not None:
                self.per_sample_cols.add(index[keep], loss_init=l0, loss_trained=l1, grad_norm_init=g0)

    # --- gradient norms -------------------------------------------------------------------------
    def grad_norms(self) -> dict:
        """Per-sample gradient norms (torch.func) of the worst samples by loss and by input magnitude and of a
        random reference set; the fresh model's for every sample when the stream measured them."""
        if self.per_sample is None or self.loss_error is not None or not len(self.loss_res):
            return {}
        worst = [i for top in (self.top0, self.top1, self.top_mag) for i, _ in top.items()[:GRAD_WORST]]
        ref = self.loss_res.rows[:GRAD_REFERENCE, 0].long().tolist()
        out: dict = {}
        every = self.every_sample_grads()
        if every is not None:
            out["init"], out["method"] = every, self.every_grad
        models = [(label, m) for label, m in (("init", self.model0), ("trained", self.trained))
                  if m is not None and label not in out]
        if not models:
            return out
        idx = torch.tensor(sorted(set(worst + ref)), dtype=torch.long)
        chunk = self.source.load(idx)
        if chunk.batch is None:
            return out
        inputs, targets = self.split(to_device(chunk.batch, self.patient.device))
        for label, model in models:
            try:
                norms, method = per_sample_grad_norms(model, self.per_sample, inputs, targets)
            except Exception as exc:
                out["error"] = error_record(exc)
                break
            out[label] = grad_summary(dict(zip(chunk.index.tolist(), norms.tolist())), set(ref))
            out.setdefault("method", method)
            out[f"{label}_method"] = method
        return out

    def every_sample_grads(self) -> dict | None:
        """The grad_summary of the fresh model from every sample's gradient norm, when the stream had them all."""
        cols = self.per_sample_cols
        if self.every_grad is None or cols is None:
            return None
        norms = cols.finite("grad_norm_init")
        if norms.numel() == 0 or self.grads_missing:
            return None  # some chunks fell back to the plain pass: not every sample has one
        median = float(norms.median())
        items = self.top_grad.items()
        return {"reference_samples": int(norms.numel()), "reference_median": median, "every_sample": True,
                "worst": [{"index": i, "grad_norm": v, "ratio": v / median if median else None}
                          for i, v in items[:WORST_LISTED]], "next": next_value(items, WORST_LISTED)}

    # --- the record -----------------------------------------------------------------------------
    def metrics(self, scanned: int, cut: bool, grads: dict, seconds: float) -> dict:
        feats = self.fstats.result()
        feats.update(robust_scales(self.feature_res))
        names = feature_names(self.dataset, len(feats.get("mean", [])), self.layout)
        m = {
            "samples_total": self.n, "samples_scanned": scanned, "share_scanned": scanned / self.n,
            "whole_set": scanned == self.n,
            "sampling": sampling(scanned, self.n),
            "uniform": True,
            "planned": self.n, "cut_by_deadline": cut, "chunk_size": self.chunk_size, "block": BLOCK,
            "loading": self.source.method, "mode": "eval (BatchNorm running statistics, dropout off)",
            "seconds_per_1000_samples": 1000 * self.stream_seconds / max(1, scanned),
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
            "magnitude": self.magnitude_metrics(),
            "grad_norms": grads,
            "per_sample": self.per_sample_summary(grads),
            "training": jsonable_training(self.training),
            "seconds": seconds,
        }
        return m

    def column(self, name: str, res_col: int) -> torch.Tensor | None:
        """The finite values of one per-sample number: every scanned sample's, else the reservoir's."""
        if self.per_sample_cols is not None:
            return self.per_sample_cols.finite(name)
        rows = self.loss_res.rows
        if rows is None:
            return None
        vals = rows[:, res_col]
        return vals[torch.isfinite(vals)]

    def loss_metrics(self) -> dict:
        out: dict = {"method": self.per_sample.method if self.per_sample else None, "error": self.loss_error,
                     "nonfinite": self.loss_nonfinite.result()}
        for col, name, label, top in ((1, "loss_init", "init", self.top0), (2, "loss_trained", "trained", self.top1)):
            vals = self.column(name, col)
            if vals is None or vals.numel() == 0:
                continue
            items = top.items()
            worst = [{"index": i, "loss": v} for i, v in items[:WORST_LISTED]]
            out[label] = {**distribution(vals), "worst": worst, "next": next_value(items, WORST_LISTED)}
        return out

    def magnitude_metrics(self) -> dict:
        if self.magnitude is None:
            return {}
        vals = self.column("magnitude", 3)
        if vals is None or vals.numel() == 0:
            return {}
        worst = [{"index": i, "magnitude": v, "loss_init": e[0] if math.isfinite(e[0]) else None,
                  "loss_trained": e[1] if math.isfinite(e[1]) else None} for i, v, e in self.top_mag.rows()]
        return {"method": MAGNITUDE_METHOD, "reference_rows": self.magnitude.rows, **distribution(vals),
                "worst": worst}

    def per_sample_summary(self, grads: dict) -> dict:
        cols = self.per_sample_cols
        if cols is None:
            return {"kept": False, "why": f"more than {MAX_PER_SAMPLE} samples: a uniform reservoir of "
                                          f"{self.loss_res.size} and the worst {TOP_K} are kept"}
        init = grads.get("init") or {}
        return {"kept": True, "losses": int(cols.finite("loss_init").numel()),
                "magnitudes": int(cols.finite("magnitude").numel()),
                "grad_norms": int(init["reference_samples"]) if init.get("every_sample") else 0,
                "grad_norms_for": ("every sample" if init.get("every_sample") else
                                   f"the worst {GRAD_WORST} by each ranking and {GRAD_REFERENCE} random samples")}

    def plots(self, m: dict) -> list[str]:
        if self.ctx.plots_dir is None:
            return []
        from nandoctor.report import data_plots
        return data_plots.save_all(self.ctx, m, self.loss_res)


# --- helpers (pure) --------------------------------------------------------------------------------
def distribution(vals: torch.Tensor) -> dict:
    """Median, MAD (x 1.4826), 99th percentile, max and count of finite values (float64 [N])."""
    med = float(vals.median())
    mad = float((vals - med).abs().median()) * 1.4826
    p99 = float(torch.quantile(vals, 0.99)) if vals.numel() <= 2 ** 24 else float(vals.kthvalue(
        max(1, int(0.99 * vals.numel()))).values)
    return {"median": med, "mad": mad, "p99": p99, "max": float(vals.max()), "sampled": int(vals.numel())}


def next_value(ranked: list[tuple[int, float]], listed: int) -> float | None:
    """The largest value that is not listed (``ranked``: (index, value) largest first), or None."""
    return ranked[listed][1] if len(ranked) > listed else None


def layout_of(x: torch.Tensor | None, model: nn.Module | None = None) -> str:
    """How the inputs are read: ``features`` [B, F], ``channels`` [B, C, ...], ``sequence`` [B, T, F] (the
    features on the last dim: the width the model's first layer takes is the last dim's size, and not dim
    1's), ``scalar`` [B], or ``none``."""
    if x is None or not x.is_floating_point() or x.dim() == 0:
        return "none"
    if x.dim() == 3 and model is not None:
        width = input_width(model)
        if width is not None and x.shape[2] == width != x.shape[1]:
            return "sequence"
    return {1: "scalar", 2: "features"}.get(x.dim(), "channels")


WIDTH_ATTRIBUTES = ("in_features", "in_channels", "input_size", "embed_dim", "num_features", "normalized_shape")


def input_width(model: nn.Module) -> int | None:
    """The input width of the first layer that holds parameters, in the order the model declares its layers
    (``in_features`` of a Linear, ``in_channels`` of a convolution, ``input_size`` of an RNN, ...); None when
    that layer tells no width."""
    for module in model.modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        for name in WIDTH_ATTRIBUTES:
            width = getattr(module, name, None)
            if isinstance(width, (tuple, list)) and width:
                width = width[-1]
            if isinstance(width, int) and not isinstance(width, bool):
                return width
        return None
    return None


def feature_rows(x: torch.Tensor | None, layout: str, gen: torch.Generator) -> torch.Tensor | None:
    """Rows for per-column statistics: [B, F] features, [B*L, C] channel values, [B*T, F] the feature vectors
    of a sequence, or [B, 1] scalars."""
    if layout == "features":
        return x
    if layout == "scalar":
        return x[:, None]
    if layout == "channels":
        return x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])  # [B, C, L] -> [B*L, C]
    if layout == "sequence":
        return x.reshape(-1, x.shape[2])  # [B, T, F] -> [B*T, F]
    return None


def nonfinite_rows(obj, b: int, known: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """[B] bool: the samples with any NaN/Inf in any floating tensor of ``obj`` (a batch of ``b``);
    ``known``: a tensor of ``obj`` whose [B] answer is known already."""
    bad = torch.zeros(b, dtype=torch.bool)
    for t in tensors_of(obj):
        if known is not None and t is known[0]:
            bad |= known[1]
            continue
        if not (t.is_floating_point() and t.dim() >= 1 and t.shape[0] == b):
            continue
        flat = t.reshape(b, -1)
        if bool(torch.isfinite(flat.sum(1)).all()):  # NaN and Inf propagate into the sums: nothing to find
            continue
        bad |= ~torch.isfinite(flat).all(1).cpu()
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
    ranked = sorted(((i, v) for i, v in norms.items() if math.isfinite(v)), key=lambda kv: -kv[1])
    return {"reference_samples": len(ref), "reference_median": median, "next": next_value(ranked, WORST_LISTED),
            "worst": [{"index": int(i), "grad_norm": v, "ratio": v / median if median else None}
                      for i, v in ranked[:WORST_LISTED]]}


def sampling(scanned: int, n: int) -> str:
    """How the scanned samples were chosen, in words."""
    if scanned == n:
        return "every sample"
    return (f"a uniformly drawn share: {scanned} of {n} samples, in blocks of {BLOCK} consecutive samples taken "
            "in a seeded random order (the time allowance ran out)")


def jsonable_training(info: dict) -> dict:
    return {k: v for k, v in info.items()}


def per_sample_grad_norms(model, per_sample: PerSampleLoss, inputs, targets) -> tuple[torch.Tensor, str]:
    """``[B]`` gradient norms, one per sample: ``torch.func.vmap(grad(...))``, else a loop over the few samples."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    b = batch_size_of(inputs)
    try:
        def one(p, xi, yi):
            out = torch.func.functional_call(model, (p, buffers), (as_batch_of_one(xi),))
            return per_sample.single(out, as_batch_of_one(yi))
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

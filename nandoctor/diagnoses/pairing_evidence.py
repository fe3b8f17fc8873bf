"""Reading the ``outputs`` probe: what the outputs are, what the loss does with them.

Shared by the output/loss pairing diagnoses. ``pairing_verdict`` decides which
ONE of the pairing codes (nll-on-raw-logits, double-softmax,
bounded-output-activation, probability-loss-on-logits) a patient gets, so that
the four never fire together on one wrong pairing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from nandoctor.records import Evidence

RELU_ZERO_SHARE = 0.05   # outputs >= 0 with at least 5% exact zeros look like a ReLU output layer
RELU_OPS = {"relu", "relu6", "relu_", "hardtanh", "threshold"}
RELU_MODULES = {"ReLU", "ReLU6", "Threshold"}
SIGMOID_OPS = {"sigmoid", "hardsigmoid"}
SIGMOID_MODULES = {"Sigmoid", "Hardsigmoid"}
BOUNDED_OPS = {"softmax", "sigmoid", "hardsigmoid", "clamp", "clip", "clamp_"}
LOGITS_LOSSES = {"cross_entropy", "binary_cross_entropy_with_logits"}
LOG_LIKELIHOOD_LOSSES = {"nll_loss", "kl_div"}
LOG_OPS = {"log", "log2", "log10", "log_"}
CLAMP_OPS = {"clamp", "clip", "clamp_min", "clamp_", "clip_"}
REGRESSION_LOSSES = {"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"}
RANGE_MARGIN = 0.05      # targets this far outside the reachable output range are unreachable

PROB_RANGE_ERROR = re.compile(r"between 0 and 1", re.I)
SHAPE_ERROR = re.compile(
    r"target size .* different to the input size|must be the same as input size|"
    r"size of tensor a \(\d+\) must match the size of tensor b|expected input batch_size \(\d+\) to match target|"
    r"0D or 1D target tensor expected|multi-target not supported|only batches of spatial targets supported|"
    r"expected target size", re.I)


@dataclass
class Pairing:
    """The outputs probe's metrics, with the derived judgements the diagnoses share."""

    metrics: dict
    outputs: dict = field(default_factory=dict)
    trace: dict = field(default_factory=dict)

    @classmethod
    def of(cls, ev: Evidence) -> "Pairing | None":
        r = ev.ok("outputs")
        if r is None or "outputs" not in r.metrics:
            return None
        return cls(r.metrics, r.metrics.get("outputs") or {}, r.metrics.get("loss_trace") or {})

    # --- what the outputs are -----------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.outputs.get("kind", "")

    @property
    def output_op(self) -> str:
        return self.metrics.get("output_op") or ""

    @property
    def last_module(self) -> str:
        lm = self.metrics.get("last_module") or {}
        return lm.get("type", "") if lm.get("is_output") else ""

    @property
    def relu_like(self) -> bool:
        o = self.outputs
        if o.get("min") is None or o["min"] < 0:
            return False
        if self.output_op in RELU_OPS or self.last_module in RELU_MODULES:
            return True
        # exact zeros beside positive values (what a ReLU passes), not from a softmax/sigmoid that underflowed;
        # outputs that are all exactly zero say the output layer's weights are (a zero init), not that a ReLU clips
        squashed = self.kind == "probabilities" or self.sigmoid_like or self.output_op in BOUNDED_OPS
        return o.get("zero_share", 0) >= RELU_ZERO_SHARE and (o.get("max") or 0) > 0 and not squashed

    @property
    def sigmoid_like(self) -> bool:
        return self.output_op in SIGMOID_OPS or self.last_module in SIGMOID_MODULES

    # --- what the loss does ---------------------------------------------------------------------
    @property
    def applies(self) -> str:
        return self.trace.get("applies_to_raw") or ""

    @property
    def logs_raw(self) -> bool:
        return self.applies in LOG_OPS or bool(self.trace.get("log_of_raw"))

    @property
    def clamps_before_log(self) -> bool:
        """The loss clamps the outputs before its first log (Keras' clip with epsilon)."""
        ops = self.trace.get("raw_ops") or []
        before = ops[:ops.index("log")] if "log" in ops else ops
        return any(op in CLAMP_OPS for op in before)

    @property
    def loss_name(self) -> str:
        return (self.metrics.get("loss") or {}).get("name", "loss")

    @property
    def loss_error(self) -> dict | None:
        return self.metrics.get("loss_error")

    def summary(self) -> dict:
        """The evidence every pairing finding shows."""
        o = self.outputs
        full = {"loss": self.loss_name, "loss_applies_to_outputs": self.applies or None,
                "outputs_are": self.kind, "outputs_shape": o.get("shape"), "outputs_min": o.get("min"),
                "outputs_max": o.get("max"), "outputs_zero_share": o.get("zero_share"),
                "rows_sum_to_one_within": o.get("row_sum_dev"), "rows_logsumexp_within": o.get("logsumexp_dev"),
                "outputs_normalised_over_batch": o.get("normalised_over_batch"),
                "loss_ops_on_outputs": (self.trace.get("raw_ops") or [])[:8],
                "output_op": self.output_op or None, "last_module": self.metrics.get("last_module"),
                "initial_loss": self.metrics.get("initial_loss")}
        return {k: v for k, v in full.items() if v is not None or k == "initial_loss"}


def overfit_metrics(ev: Evidence) -> dict:
    r = ev.get("overfit")
    return r.metrics if r is not None and r.metrics else {}


def crash(ev: Evidence, pattern: re.Pattern) -> dict | None:
    """The user's exception that matches ``pattern``: from the outputs probe's loss call first, then any probe."""
    p = Pairing.of(ev)
    if p is not None and p.loss_error and pattern.search(p.loss_error.get("message", "")):
        return {**p.loss_error, "probe": "outputs"}
    for name in ("warmup", "overfit", *[n for n in ev if n not in ("warmup", "overfit", "outputs")]):
        r = ev.get(name)
        if r is not None and r.status == "failed" and r.error and not r.error.get("internal") \
                and pattern.search(r.error.get("message", "") or ""):
            return {**r.error, "probe": name}
    return None


def pairing_verdict(ev: Evidence) -> tuple[str, str, float] | None:
    """(code, reason, confidence) of the one pairing problem this patient has, or None."""
    p = Pairing.of(ev)
    err = crash(ev, PROB_RANGE_ERROR)
    # a later crash on outputs that started in [0, 1] is a NaN from elsewhere, not a pairing problem
    later_nan = err is not None and p is not None and err.get("probe") != "outputs" and not p.relu_like \
        and p.kind in ("unit-interval", "probabilities")
    if err is not None and not later_nan:
        if p is not None and p.relu_like:
            return "bounded-output-activation", "relu-into-probability-loss", 0.9
        return "probability-loss-on-logits", "bce-range-error", 0.95
    if p is None:
        return None
    return _static_verdict(p, overfit_metrics(ev))


def nan_born_in_loss(overfit: dict) -> bool:
    """The overfit run's loss turned non-finite while no module's output did: the loss made the NaN."""
    return overfit.get("nonfinite_step") is not None and not overfit.get("nonfinite_forward")


def _static_verdict(p: Pairing, overfit: dict) -> tuple[str, str, float] | None:
    a, kind = p.applies, p.kind
    # 1. a log-likelihood loss must get log-probabilities
    wrong_dim = p.outputs.get("normalised_over_batch")
    if a in LOG_LIKELIHOOD_LOSSES:
        if kind != "log-probabilities":
            reason = "wrong-dim" if wrong_dim else "probabilities" if kind == "probabilities" else "raw"
            return "nll-on-raw-logits", reason, 0.9
        return None
    # 2. a loss that applies softmax/sigmoid itself must get logits
    if a in LOGITS_LOSSES or a in ("softmax", "log_softmax"):
        if a != "binary_cross_entropy_with_logits" and (kind == "probabilities" or wrong_dim == "probabilities"):
            return "double-softmax", "softmax-twice", 0.9
        if kind == "log-probabilities" and a in ("cross_entropy", "log_softmax"):
            return "double-softmax", "log-softmax-twice", 0.55
        if p.relu_like:
            return "bounded-output-activation", "relu-into-logits-loss", 0.85
        if a == "binary_cross_entropy_with_logits" and kind in ("unit-interval", "probabilities") and p.sigmoid_like:
            return "double-softmax", "sigmoid-twice", 0.85
        if kind in ("unit-interval", "probabilities") and (p.sigmoid_like or p.output_op in BOUNDED_OPS):
            return "bounded-output-activation", "bounded-into-logits-loss", 0.8
        return None
    # 3. a loss that takes a log of the outputs must get probabilities in (0, 1]
    if a == "binary_cross_entropy" or p.logs_raw:
        if p.relu_like:
            return "bounded-output-activation", "relu-into-log", 0.9
        if kind == "unbounded":
            return "probability-loss-on-logits", "logits-into-log", 0.9
        if p.logs_raw and ((p.trace.get("log_input_min") == 0) or p.trace.get("log_input_nonfinite")):
            return "probability-loss-on-logits", "log-of-zero", 0.8
        if p.logs_raw and not p.clamps_before_log and nan_born_in_loss(overfit):
            return "probability-loss-on-logits", "log-of-zero", 0.8
        return None
    # 4. a regression loss whose targets lie outside what the output activation can reach
    if a in REGRESSION_LOSSES:
        return _unreachable_targets(p)
    return None


def _unreachable_targets(p: Pairing) -> tuple[str, str, float] | None:
    t = p.metrics.get("targets") or {}
    if not t.get("float") or t.get("min") is None:
        return None
    if p.relu_like and t["min"] < -RANGE_MARGIN:
        return "bounded-output-activation", "relu-regression-negative-targets", 0.7
    bounded = p.kind in ("unit-interval", "probabilities") and (p.sigmoid_like or p.output_op == "softmax")
    tanh = p.output_op == "tanh" or p.last_module == "Tanh"
    lo, hi = (-1.0, 1.0) if tanh else (0.0, 1.0)
    if (bounded or tanh) and (t["max"] > hi + RANGE_MARGIN or t["min"] < lo - RANGE_MARGIN):
        return "bounded-output-activation", "bounded-regression-unreachable-targets", 0.8
    return None


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

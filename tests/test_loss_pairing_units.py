"""Pairing diagnoses on hand-built evidence: pure functions, nothing trains."""

import math

import pytest

from nandoctor import diagnoses
from nandoctor.probes.outputs import expected_initial_loss, output_kind
from nandoctor.records import Evidence, ProbeResult

import torch

CODES = ("nll-on-raw-logits", "double-softmax", "bounded-output-activation", "probability-loss-on-logits",
         "loss-shape-mismatch", "initial-loss-mismatch", "loss-reduction-sum")


def outputs_probe(kind="unbounded", applies="cross_entropy", *, mn=-1.5, mx=1.2, zero_share=0.0, shape=(32, 3),
                  output_op="linear", last="Linear", initial=1.1, expected=math.log(3), ratios=(1.0, 1.02), **extra):
    metrics = {"outputs": {"kind": kind, "min": mn, "max": mx, "zero_share": zero_share, "shape": list(shape),
                           "classes": shape[1] if len(shape) > 1 else None, "std": 0.5},
               "output_op": output_op, "last_module": {"name": "2", "type": last, "is_output": True},
               "targets": extra.pop("targets", {"shape": [shape[0]], "float": False, "min": 0, "max": 2}),
               "loss": {"name": "CrossEntropyLoss", "module": True, "reduction": "mean"},
               "initial_loss": initial, "expected_initial_loss": expected, "scale_ratios": list(ratios),
               "loss_trace": {"applies_to_raw": applies, "log_of_raw": False, "broadcast": [],
                              "elementwise_shapes": [], **extra.pop("trace", {})},
               **extra}
    return ProbeResult(name="outputs", metrics=metrics)


def fired(*results, facts=None) -> list[str]:
    ev = Evidence({r.name: r for r in results}, facts=facts or {})
    registry = diagnoses.load_all()
    out = []
    for code in CODES:
        f = registry[code].check(ev)
        out += [x.code for x in (f if isinstance(f, list) else [f] if f else [])]
    return out


def test_healthy_logits_into_cross_entropy_fire_nothing():
    assert fired(outputs_probe()) == []


@pytest.mark.parametrize("kind,applies,extra,code", [
    ("unbounded", "nll_loss", {}, "nll-on-raw-logits"),
    ("probabilities", "nll_loss", {"mn": 0.1, "mx": 0.6}, "nll-on-raw-logits"),
    ("probabilities", "cross_entropy", {"mn": 0.1, "mx": 0.6}, "double-softmax"),
    ("unit-interval", "binary_cross_entropy_with_logits", {"mn": 0.2, "mx": 0.8, "output_op": "sigmoid",
                                                           "shape": (32, 1)}, "double-softmax"),
    ("non-negative", "cross_entropy", {"mn": 0.0, "mx": 2.0, "zero_share": 0.4, "output_op": "relu"},
     "bounded-output-activation"),
    ("unit-interval", "log", {"mn": 0.0, "mx": 0.9, "zero_share": 0.3, "output_op": "relu",
                              "trace": {"log_of_raw": True}}, "bounded-output-activation"),
    ("unbounded", "log", {"trace": {"log_of_raw": True}}, "probability-loss-on-logits"),
    ("unbounded", "binary_cross_entropy", {"shape": (32, 1)}, "probability-loss-on-logits"),
])
def test_each_pairing_gets_exactly_its_code(kind, applies, extra, code):
    assert fired(outputs_probe(kind, applies, **extra)) == [code]


def test_log_softmax_into_nll_is_healthy():
    assert fired(outputs_probe("log-probabilities", "nll_loss", mn=-3.0, mx=-0.1)) == []


def test_relu_regression_with_positive_targets_is_healthy_but_negative_targets_are_not():
    targets = {"shape": [32, 1], "float": True, "min": 0.0, "max": 5.0}
    relu = dict(mn=0.0, mx=3.0, zero_share=0.5, output_op="relu", shape=(32, 1), expected=None)
    assert fired(outputs_probe("non-negative", "mse_loss", targets=targets, **relu)) == []
    negative = {**targets, "min": -2.0}
    assert fired(outputs_probe("non-negative", "mse_loss", targets=negative, **relu)) == ["bounded-output-activation"]


def test_crash_alone_maps_to_probability_loss():
    warmup = ProbeResult(name="warmup", status="failed",
                         error={"type": "RuntimeError", "message": "all elements of input should be between 0 and 1",
                                "where": "net.py:3 in loss"})
    assert fired(warmup) == ["probability-loss-on-logits"]


def test_shape_crash_in_forward_is_not_a_loss_shape_mismatch():
    warmup = ProbeResult(name="warmup", status="failed", error={
        "type": "RuntimeError", "message": "The size of tensor a (4) must match the size of tensor b (3)"})
    outputs = ProbeResult(name="outputs", metrics={"forward_error": {"type": "RuntimeError", "phase": "forward"}})
    assert fired(warmup, outputs) == []
    assert fired(warmup) == ["loss-shape-mismatch"]  # without the probe, the message alone decides


def test_initial_loss_mismatch_needs_a_big_excess_and_a_mean_loss():
    assert fired(outputs_probe(initial=1.5)) == []
    assert fired(outputs_probe(initial=9.0)) == ["initial-loss-mismatch"]
    assert fired(outputs_probe(initial=9.0, ratios=(2.0, 2.0))) == ["loss-reduction-sum"]


def test_an_initial_loss_carried_by_a_few_samples_is_a_note_without_a_cure():
    """The batch's loss at init 9.0 (8x ln 3): with the median sample at 1.12 the samples carry it (a code
    such as -10000 in some rows), not the output layer; with the median sample far off too, the model does."""
    def scan(median, mad=0.1):
        return ProbeResult(name="data_scan", metrics={"loss": {"init": {"median": median, "mad": mad}}})
    registry = diagnoses.load_all()
    few = registry["initial-loss-mismatch"].check(Evidence({"outputs": outputs_probe(initial=9.0),
                                                            "data_scan": scan(1.12)}))
    assert few.severity == "info" and few.evidence["carried_by_few"] and "median sample starts at 1.12" in few.title
    assert registry["initial-loss-mismatch"].cures(None, few) == []
    every = registry["initial-loss-mismatch"].check(Evidence({"outputs": outputs_probe(initial=9.0),
                                                              "data_scan": scan(8.0)}))
    assert every.severity == "warning" and "carried_by_few" not in every.evidence
    # a median near ln 3 with the samples' losses spread from ~0 to far above: a confidently wrong model
    spread = registry["initial-loss-mismatch"].check(Evidence({"outputs": outputs_probe(initial=9.0),
                                                               "data_scan": scan(1.12, mad=3.0)}))
    assert spread.severity == "warning"
    # with BatchNorm the scan (eval mode) and the batch loss (train mode) do not measure the same model
    bn = registry["initial-loss-mismatch"].check(Evidence({"outputs": outputs_probe(initial=9.0, mode_dependent=True),
                                                           "data_scan": scan(1.12)}))
    assert bn.severity == "warning"


def test_loss_reduction_sum_needs_both_doublings():
    assert fired(outputs_probe(ratios=(2.0, 1.1))) == []
    assert fired(outputs_probe(ratios=(1.98, 2.01))) == ["loss-reduction-sum"]


def test_output_kind_reads_values():
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -0.1]])
    assert output_kind(logits)["kind"] == "unbounded"
    assert output_kind(torch.softmax(logits, 1))["kind"] == "probabilities"
    assert output_kind(torch.log_softmax(logits, 1))["kind"] == "log-probabilities"
    assert output_kind(torch.relu(3 * logits))["kind"] == "non-negative"
    assert expected_initial_loss("cross_entropy", "unbounded", [8, 10]) == pytest.approx(math.log(10))
    assert expected_initial_loss("nll_loss", "unbounded", [8, 10]) is None


@pytest.mark.parametrize("code", CODES)
def test_every_code_has_a_full_doc_page(code):
    page = diagnoses.get(code).page()
    for section in diagnoses.DOC_SECTIONS:
        assert f"## {section}" in page


def test_sequence_outputs_with_classes_last_are_log_probabilities():
    logits = torch.randn(4, 7, 5)  # [N, T, C]
    assert output_kind(torch.log_softmax(logits, -1))["kind"] == "log-probabilities"
    assert output_kind(torch.softmax(logits, -1))["kind"] == "probabilities"


def test_a_later_bce_crash_on_sigmoid_outputs_is_not_a_pairing_problem():
    sigmoid_bce = outputs_probe("unit-interval", "binary_cross_entropy", mn=0.3, mx=0.7, shape=(32, 1),
                                output_op="sigmoid", last="Sigmoid")
    overfit = ProbeResult(name="overfit", status="failed", error={
        "type": "RuntimeError", "message": "all elements of input should be between 0 and 1", "step": 40})
    assert fired(sigmoid_bce, overfit) == []


def test_nll_below_zero_in_the_overfit_probe_is_enough_without_the_outputs_probe():
    overfit = ProbeResult(name="overfit", metrics={"initial_loss": 0.1, "min_loss": -12.5, "final_loss": -12.5})
    assert fired(overfit, facts={"loss": "NLLLoss"}) == ["nll-on-raw-logits"]
    assert fired(overfit, facts={"loss": "CrossEntropyLoss"}) == []


def test_softmax_zeros_into_a_log_are_log_of_zero_not_a_relu():
    underflow = outputs_probe("probabilities", "log", mn=0.0, mx=1.0, zero_share=0.3, output_op="softmax",
                              last="Softmax", trace={"log_of_raw": True, "log_input_min": 0.0})
    assert fired(underflow) == ["probability-loss-on-logits"]

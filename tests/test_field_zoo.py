"""The battery on a fast subset of the field zoo (benchmarks/field_zoo.py): faults ported from public reports.

One patient per shape the main zoo does not have (a U-Net, GRU and LSTM sequence models, embeddings
for recommendation, a residual block with BatchNorm, tabular regression on natural scales, a grid of
evenly spaced inputs), each diagnosed right today. The whole field zoo, failures included, is the
benchmark's job (benchmarks/bench_field.py); these guard what already works.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import nandoctor  # noqa: E402
from field_zoo import BY_NAME, judge  # noqa: E402

BUDGET = 30.0  # per patient, as the benchmark gives them

SUBSET = [
    "unet-masks-0-255-into-ce",                  # target-out-of-range: masks read as 0/255
    "gru-bce-on-raw-scores",                     # probability-loss-on-logits: BCELoss on raw GRU scores
    "house-prices-saved-index",                  # csv-index-column: Unnamed: 0 among natural-scale features
    "lstm-sensor-nan-readings",                  # data-nonfinite: dropped sensor readings stored as NaN
    "recommender-sigmoid-into-bce-with-logits",  # double-softmax: sigmoid before BCEWithLogitsLoss
    "pinn-target-n-vs-n-by-1",                   # loss-shape-mismatch on an evenly spaced grid
    "gru-log-of-linear-features",                # nonfinite-source: torch.log of a linear projection
    "shuffled-frame-saved-index",                # csv-index-column: the row numbers once each, in shuffled order
    "seven-sigmoid-layer-dnn",                   # vanishing-gradients: confirmed by ReLU with its init
    "audio-cnn-summed-loss-and-no-zero-grad",    # two faults: a sum inside the step and no zero_grad, both cured
    "lstm-newsgroups-through-one-sigmoid-unit",  # cannot-overfit-batch: a one-unit squeeze, confirmed by widening it
    "brainjs-year-input-sigmoid-output",         # two faults: a sigmoid output and raw years (not a saved index)
    "cats-and-dogs-undecodable-jpegs",           # sample-load-error: three files PIL cannot decode, dropped: cured
    "healthy-sine-fit-on-linspace-grid",         # healthy: x = linspace is not a saved row index
    "healthy-imbalance-3-to-1",                  # healthy: 3:1 classes train fine
]


@pytest.mark.parametrize("name", SUBSET)
def test_field_patient(name):
    patient = BY_NAME[name]
    assert not patient.known_gap, f"{name} is a known gap: it belongs to the benchmark, not the tests"
    report = nandoctor.diagnose(patient.factory(), budget=BUDGET)
    ok, top = judge(report, patient)
    ranked = [(f.code, f.severity) for f in report.findings]
    assert ok, f"{name} ({patient.source}): expected {patient.expected()}, got {ranked}"
    broken = [n for n in report.not_evaluated if str(n.get("reason", "")).startswith("diagnosis error")]
    assert not broken, f"{name}: diagnoses that raised: {broken}"


def test_every_patient_names_its_source_and_codes():
    """Each entry names the public report it was written from and accepts only catalog codes."""
    from field_zoo import FIELD_ZOO
    from nandoctor.diagnoses import load_all

    known = set(load_all()) | {"numerical-hazard"}  # numerical-hazard is on its way (SPEC 0.2)
    for patient in FIELD_ZOO:
        assert patient.source.startswith("https://"), patient.name
        assert patient.accepted | patient.also_expected <= known, (patient.name, patient.accepted - known)
        assert patient.also_expected <= patient.accepted, patient.name
    assert len({p.name for p in FIELD_ZOO}) == len(FIELD_ZOO), "patient names must be unique"

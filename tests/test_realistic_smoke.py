"""Every realistic patient (benchmarks/realistic_patients.py) builds and takes one training step.

No diagnosis here (``benchmarks/bench_realistic.py`` runs the battery); this keeps the patients
from rotting: the factory works, a batch goes through the model and the loss, the step returns
a scalar, finite except where the fault is the non-finite data itself.
"""

import math
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from realistic_patients import REALISTIC  # noqa: E402

NONFINITE_BY_DESIGN = {"tabular-missing-values"}


@pytest.mark.parametrize("name, accepted, factory", REALISTIC, ids=[r[0] for r in REALISTIC])
def test_one_step(name, accepted, factory):
    patient = factory()
    model = patient.new_model()
    optimizer = patient.make_optimizer(model)
    batch = patient.fixed_batch()
    assert len(batch[0]) == min(patient.batch_size, len(patient.train_data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MSE patient's broadcasting warning is its fault, on purpose
        loss = patient.step(model, optimizer, batch)
    assert loss.dim() == 0
    assert math.isfinite(float(loss)) == (name not in NONFINITE_BY_DESIGN)


def test_healthy_and_sick_for_every_architecture():
    healthy = {name for name, accepted, _ in REALISTIC if not accepted}
    sick = [name for name, accepted, _ in REALISTIC if accepted]
    assert len(healthy) >= 6
    for family in ("gpt", "encoder", "resnet", "unet", "tagger", "tabular"):
        assert any(name.startswith(family) for name in sick), family

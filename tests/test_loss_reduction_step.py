"""loss-reduction-sum where the sum is written inside the user's own train_step (the loss_fn says mean), and the
additivity evidence. The two-fault case (that sum and no zero_grad, each confirmed) is a field patient in
test_field_zoo.py."""

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.diagnoses.loss_reduction import looks_summed
from patients import battery, make_patient
from sick_grads import regression


def summed_step(model, batch, loss_fn, optimizer, zero_grad=True):
    if zero_grad:
        optimizer.zero_grad()
    inputs, targets = batch
    loss = F.mse_loss(model(inputs), targets, reduction="sum")
    loss.backward()
    optimizer.step()
    return loss


def net():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def test_a_sum_inside_the_step_is_seen_and_cured_by_mean_gradients():
    torch.manual_seed(0)
    patient = make_patient(model=net, data=regression(), loss=nn.MSELoss(), optimizer=torch.optim.SGD, lr=0.01,
                           batch_size=32, train_step=summed_step)
    report = battery(patient, budget=20)
    found = next(f for f in report.findings if f.code == "loss-reduction-sum")
    assert found.evidence["reduction"] == "mean"   # the loss_fn says mean: the sum is in the step
    assert all(abs(a - 1) < 0.05 for a in found.evidence["additivity"])
    assert found.confirmed and "divided every gradient by the batch size" in found.treatment["tried"]


def test_additivity_decides_where_the_doubling_ratio_is_noisy():
    # a sum whose added samples happen to be easy (ratio 1.58) is still additive; a mean is half
    assert looks_summed({"scale_ratios": [1.58, 2.02], "scale_additivity": [1.0, 1.0]})
    assert not looks_summed({"scale_ratios": [1.9, 2.1], "scale_additivity": [0.5, 0.5]})
    assert looks_summed({"scale_ratios": [2.0, 2.0]})   # older records: the ratios alone


def test_a_cure_refuted_while_another_fault_was_in_the_way_is_not_a_refutation():
    """The sum and no zero_grad: zeroing is confirmed first; the sum's own cure had failed beside the missing
    zero_grad, and on the zeroed copy the sum is still found (it trains there at this LR): suspected, not
    refuted."""
    torch.manual_seed(0)
    patient = make_patient(model=net, data=regression(), loss=nn.MSELoss(), optimizer=torch.optim.SGD, lr=0.003,
                           batch_size=32, train_step=partial(summed_step, zero_grad=False))
    report = battery(patient, budget=25)
    assert report.findings[0].code == "missing-zero-grad" and report.findings[0].confirmed
    summed = next(f for f in report.findings if f.code == "loss-reduction-sum")
    assert summed.status == "suspected" and summed.severity == "warning", (summed.status, summed.treatment)
    assert "refuted_before" in summed.evidence and "still in the way" in summed.treatment_note

"""exploding-gradients and vanishing-gradients: tiny sick patients, and the diagnoses on hand-built evidence."""

import math

import torch
from torch import nn

from nandoctor.diagnoses.gradients import ExplodingGradients, VanishingGradients
from nandoctor.probes.instrument import Recorder
from nandoctor.records import Evidence, ProbeResult
from patients import battery, codes, make_patient
from sick_grads import deep_relu, deep_sigmoid, regression


def gradients_evidence(**metrics):
    base = {"total_grad_norms": [], "nonfinite_grad_step": None, "growth": None, "layers": [], "depth_profile": []}
    return Evidence({"gradients": ProbeResult(name="gradients", metrics={**base, **metrics})})


def test_exploding_sgd_momentum_ranks_first_and_clipping_cures_it(out):
    patient = make_patient(model=deep_relu, data=regression(), loss=nn.MSELoss(), optimizer=torch.optim.SGD,
                           lr=0.05, momentum=0.9)
    report = battery(patient, probes=["overfit", "gradients"], budget=15, out=out)
    top = report.findings[0]
    assert top.code == "exploding-gradients"
    assert top.severity == "critical"
    assert top.treatment["cured"] is True and "clip_grad_norm_" in top.treatment["tried"]
    assert (out / "plots" / "gradients.png").exists()


def test_vanishing_deep_sigmoid_ranks_first():
    report = battery(make_patient(model=deep_sigmoid, optimizer=torch.optim.SGD, lr=0.1),
                     probes=["overfit", "gradients"], budget=10)
    assert codes(report)[0] == "vanishing-gradients"
    assert report.findings[0].evidence["ratio_first_to_largest"] < 1e-5


def test_healthy_adam_mlp_has_no_gradient_finding():
    report = battery(make_patient(lr=1e-3), probes=["overfit", "gradients"], budget=10)
    assert not {"exploding-gradients", "vanishing-gradients"} & set(codes(report))


def test_exploding_needs_growth_not_a_nan_born_at_step_zero():
    diag = ExplodingGradients()
    assert diag.check(gradients_evidence(total_grad_norms=[math.nan], nonfinite_grad_step=0)) is None
    grown = gradients_evidence(total_grad_norms=[1.0, 1.1, 0.9, 50.0, 4e4, math.nan], nonfinite_grad_step=5,
                               growth=4e4, grad_norm_initial=1.0, final_loss=math.nan)
    found = diag.check(grown)
    assert found is not None and found.severity == "critical" and found.evidence["nonfinite_grad_step"] == 5


def test_vanishing_threshold_on_depth_profile():
    diag = VanishingGradients()
    layers = ["0", "2", "4", "6"]
    fine = gradients_evidence(layers=layers, depth_profile=[0.01, 0.02, 0.03, 0.1], depth_ratio=0.1)
    assert diag.check(fine) is None
    sick = gradients_evidence(layers=layers, depth_profile=[1e-9, 1e-7, 1e-5, 1e-3], depth_ratio=1e-6)
    assert diag.check(sick).evidence["first_layer"] == "0"


def test_recorder_global_norm_matches_torch():
    model = deep_relu()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    rec = Recorder(model)
    rec.attach_optimizer(optimizer)
    x, y = regression().tensors
    nn.functional.mse_loss(model(x), y).backward()
    expected = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    optimizer.step()
    rec.detach()
    assert math.isclose(rec.total_grad_norms[0], expected, rel_tol=1e-4)
    assert rec.depth_order()[0] == "0" and rec.depth_order()[-1] == "12"
    assert math.isclose(rec.act_std["0"][0], float(model[0](x).detach().std(unbiased=False)), rel_tol=1e-3)


def test_gradients_probe_alone_records_depth_without_activation_hooks():
    report = battery(make_patient(model=deep_relu, data=regression(), loss=nn.MSELoss(), lr=1e-3),
                     probes=["gradients"], budget=10)
    result = report.probes["gradients"]
    rec = result.data["recorder"]
    assert result.metrics["source"] == "own run"
    assert result.metrics["layers"] == ["0", "2", "4", "6", "8", "10", "12"]  # input side first
    assert rec.act_mean == {} and rec.forward_order[:2] == ["0", "1"] and len(rec.total_grad_norms) >= 20


def seven_sigmoid(features=10, classes=3, width=64):
    """Seven sigmoid hidden layers at PyTorch's default init (a port of CNTK #476): the first layer gets
    about 1e-3 of the gradient of the deepest hidden one, just above the plain threshold."""
    mods, w = [], features
    for _ in range(7):
        mods += [nn.Linear(w, width), nn.Sigmoid()]
        w = width
    return nn.Sequential(*mods, nn.Linear(w, classes))


def test_a_stalled_sigmoid_stack_is_confirmed_by_relu_with_its_init():
    torch.manual_seed(0)
    report = battery(make_patient(model=seven_sigmoid, optimizer=torch.optim.SGD, lr=0.1), budget=15)
    top = report.findings[0]
    assert top.code == "vanishing-gradients", codes(report)
    assert top.treatment["cured"] is True and "ReLU" in top.treatment["tried"]
    assert top.severity == "critical" and len(top.evidence["saturating_hidden_modules"]) == 7


def test_a_sigmoid_stack_cure_that_does_not_train_leaves_a_note():
    """The same window without a stall: the batch memorised, no candidate."""
    diag = VanishingGradients()
    layers = ["0", "2", "4", "6"]
    near = gradients_evidence(layers=layers, depth_profile=[1e-6, 1e-5, 1e-4, 1e-3], depth_ratio=5e-3)
    assert diag.check(near) is None   # no overfit run that stalled, no sigmoid stack: not even a candidate


def test_a_nan_after_one_step_larger_than_the_weights_is_an_explosion():
    """An IRNN on long sequences: the first SGD step is 10x the weights' own size and the next gradient is NaN;
    too few finite steps for a growth, the size of that first step says it."""
    diag = ExplodingGradients()
    leap = gradients_evidence(total_grad_norms=[1857.0, math.nan], nonfinite_grad_step=1, first_update_ratio=10.9,
                              initial_loss=11.4, final_loss=math.nan)
    found = diag.check(leap)
    assert found.severity == "critical" and found.evidence["first_update_ratio"] == 10.9
    assert "10.9x the size of the weights" in found.title
    small = gradients_evidence(total_grad_norms=[1.2, math.nan], nonfinite_grad_step=1, first_update_ratio=0.01)
    assert diag.check(small) is None   # a NaN after a small step: the data's or an op's doing, not a blow-up


def test_a_spike_the_run_survived_is_reported_and_a_rise_to_a_plateau_is_not():
    """A ReLU LSTM's gradient leaps from ~55 to 1e8 for one step and Adam carries on (the loss still halves):
    a blow-up all the same. A zero-initialised head's gradient rising from 1e-4 to where it settles while the
    loss halves is not."""
    spike = [55.0] * 40 + [1.3e8] + [60.0] * 79
    found = ExplodingGradients().check(gradients_evidence(
        total_grad_norms=spike, growth=1.3e8 / 55.0, grad_norm_initial=55.0, grad_norm_peak=1.3e8,
        initial_loss=28.8, final_loss=13.6, steps=120))
    assert found is not None and found.severity == "critical" and found.evidence["spike_over_settled"] > 1e6
    rise = [1e-4 * 10 ** (4 * min(1.0, i / 60)) for i in range(120)]
    assert ExplodingGradients().check(gradients_evidence(
        total_grad_norms=rise, growth=1e4, grad_norm_initial=1e-4, grad_norm_peak=max(rise),
        initial_loss=2.0, final_loss=0.5, steps=120)) is None

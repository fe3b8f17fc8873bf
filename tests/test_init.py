"""The init probe and bad-init; the batched ensemble against one-by-one training."""

import pytest
import torch
from torch import nn

from nandoctor.probes.bn_freeze import freeze_batchnorm
from nandoctor.probes.ensemble import can_batch, train_many
from nandoctor.probes.init_compare import apply_scheme, is_default, scheme_factory, std_ratios
from patients import battery, codes, make_patient, mlp
from sick_grads import bn_mlp, custom_init_mlp


@pytest.mark.parametrize("kind, optimizer, lr", [("zero", torch.optim.Adam, 1e-3), ("1.0", torch.optim.SGD, 0.01)])
def test_custom_bad_init_ranks_first_and_a_standard_init_cures_it(kind, optimizer, lr, out):
    extra = {"momentum": 0.9} if optimizer is torch.optim.SGD else {}
    patient = make_patient(model=lambda: custom_init_mlp(kind), optimizer=optimizer, lr=lr, **extra)
    report = battery(patient, probes=["overfit", "gradients", "init"], budget=30, out=out)
    top = report.findings[0]
    assert top.code == "bad-init"
    assert top.treatment["cured"] is True
    assert report.probes["init"].metrics["user_is_default"] is False
    assert (out / "plots" / "init.png").exists()


def test_default_init_is_recognised_and_not_blamed():
    report = battery(make_patient(lr=1e-3), probes=["init"], budget=10)
    assert report.probes["init"].metrics["user_is_default"] is True
    assert "bad-init" not in codes(report)


def test_ensemble_equals_sequential_training():
    patient = make_patient(lr=1e-2)
    batches = [patient.fixed_batch(offset=i) for i in range(3)]

    def models():
        return [patient.variant(s, model_factory=scheme_factory(patient, s)).new_model()
                for s in ("as configured", "kaiming", "orthogonal")]
    batched, mode_a = train_many(patient, models(), batches, 12)
    one_by_one, mode_b = train_many(patient, models(), batches, 12, batched=False)
    assert (mode_a, mode_b) == ("ensemble", "sequential")
    for a, b in zip(batched, one_by_one):
        assert a.losses == pytest.approx(b.losses, rel=1e-4, abs=1e-6)


def test_batchnorm_or_custom_step_fall_back_to_sequential():
    patient = make_patient(model=bn_mlp)
    assert "BatchNorm" in can_batch(patient, bn_mlp())
    stepped = make_patient(train_step=lambda model, batch, loss_fn, opt: torch.tensor(0.0))
    assert can_batch(stepped, mlp()) is not None


def test_schemes_reinitialise_and_default_matches_default():
    user, default = mlp(), apply_scheme(mlp(), "pytorch default")
    assert is_default(std_ratios(user, default))
    assert not is_default(std_ratios(custom_init_mlp("1.0", hidden=32, depth=1), default))
    orth = apply_scheme(mlp(), "orthogonal")
    w = orth[0].weight.detach()  # [32, 10]: orthonormal columns
    assert torch.allclose(w.T @ w, torch.eye(10), atol=1e-5)
    assert float(orth[0].bias.detach().abs().sum()) == 0.0


def test_init_probe_leaves_the_patient_unchanged():
    patient = make_patient(lr=1e-3)
    before = {k: v.clone() for k, v in patient.new_model().state_dict().items()}
    battery(patient, probes=["init"], budget=10)
    after = patient.new_model().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_frozen_batchnorm_stays_in_eval_mode():
    model = freeze_batchnorm(bn_mlp()).train()
    assert model.training and not model[1].training
    assert not any(p.requires_grad for p in model[1].parameters())
    assert all(p.requires_grad for p in model[0].parameters())
    assert isinstance(model[0], nn.Linear)


def init_evidence(user: dict, default_is_user: bool = False) -> "Evidence":
    from nandoctor.records import Evidence, ProbeResult
    standard = {"tail_loss": 0.01, "held_out_loss": 0.02, "initial_loss": 1.1, "nonfinite_step": None}
    schemes = {"as configured": {"initial_loss": 1.1, "nonfinite_step": None, **user},
               **{s: dict(standard) for s in ("pytorch default", "kaiming", "xavier", "orthogonal")}}
    metrics = {"schemes": schemes, "best_standard": "pytorch default", "user_is_default": default_is_user,
               "steps": 100, "mode": "ensemble"}
    return Evidence({"init": ProbeResult(name="init", metrics=metrics)})


def test_bad_init_reads_training_and_held_out_losses():
    from nandoctor.diagnoses.init import BadInit
    diag = BadInit()
    assert diag.check(init_evidence({"tail_loss": 0.012, "held_out_loss": 0.03})) is None  # within noise
    memorises = diag.check(init_evidence({"tail_loss": 0.0, "held_out_loss": 40.0}))
    assert memorises.evidence["worse_on"] == ["held-out loss"] and memorises.severity == "critical"
    stuck = diag.check(init_evidence({"tail_loss": 1.05, "held_out_loss": 1.1}))
    assert "training loss" in stuck.evidence["worse_on"]
    assert diag.check(init_evidence({"tail_loss": 1.05, "held_out_loss": 1.1}, default_is_user=True)) is None


def dead_output_mlp():
    """A click-rate regressor whose output ReLU sits behind a bias of -5 drawn by a custom init: the output is 0
    for every sample and every gradient is exactly zero (DLRM's bias drawn with std sqrt(1 / fan_out))."""
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1), nn.ReLU())
    with torch.no_grad():
        model[2].bias.fill_(-5.0)
    return model


def clicks(n=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    return torch.utils.data.TensorDataset(x, (x[:, :1] + 0.5 * torch.randn(n, 1, generator=gen) > 0.8).float())


def test_an_init_that_does_not_train_is_bad_init_and_training_at_all_confirms_it():
    """MSE on 0/1 clicks: the dead model's loss does not move at all; re-initialised it trains (a third off its
    loss in the overfit run, not 3x lower), which confirms the init. Every gradient is zero (not missing), which
    no structure explains: a warning, below the confirmed init."""
    patient = make_patient(model=dead_output_mlp, data=clicks(), loss=nn.MSELoss(), optimizer=torch.optim.SGD, lr=0.05)
    report = battery(patient, probes=["structure", "overfit", "init"], budget=30)
    top = report.findings[0]
    assert top.code == "bad-init" and top.status == "confirmed", (codes(report), top.treatment)
    assert report.probes["init"].metrics["user_bias_off_default"] == {"2": 5.0}
    assert "the untreated run took under 10% off its loss" in top.treatment["judged_by"]
    zero = next(f for f in report.findings if f.code == "no-trainable-params")
    assert zero.severity == "warning" and zero.evidence["grads_all_zero"] is True and not zero.observed


def test_a_stalled_init_close_in_loss_to_the_standard_one_is_still_bad_init():
    """The configured init ends 2.2x above the default's (under the 3x a finding asks for), but it did not move
    (1.5% off) where the default took 41% off: a warning whose cure must make it train."""
    from nandoctor.diagnoses.init import BadInit
    from nandoctor.records import Evidence, ProbeResult
    schemes = {"as configured": {"initial_loss": 0.539, "tail_loss": 0.531, "held_out_loss": 0.516},
               "pytorch default": {"initial_loss": 0.417, "tail_loss": 0.244, "held_out_loss": 0.244}}
    ev = Evidence({"init": ProbeResult(name="init", metrics={"schemes": schemes, "best_standard": "pytorch default",
                                                            "user_is_default": False, "steps": 120})})
    found = BadInit().check(ev)
    assert found.severity == "warning" and found.evidence["worse_on"] == ["training: stalls"]
    assert found.evidence["user_drop"] < 0.1 and found.evidence["best_drop"] > 0.25
    schemes["as configured"]["tail_loss"] = 0.40   # 26% off: it trains, slowly; no finding
    assert BadInit().check(ev) is None

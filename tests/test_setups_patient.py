"""Patient.step trains the way the user trains: it clips, accumulates, schedules, autocasts, scales."""

import functools

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from nandoctor.patient import Patient, training_state
from patients import blobs, make_patient, mlp


def grad_norm_at_step(patient, calls=1):
    """The global gradient norm an optimizer step pre-hook sees, for each optimizer step of ``calls`` batches."""
    model = patient.new_model()
    optimizer = patient.make_optimizer(model)
    seen = []
    optimizer.register_step_pre_hook(lambda *_: seen.append(float(torch.nn.utils.get_total_norm(
        [p.grad for p in model.parameters() if p.grad is not None]))))
    batch = patient.fixed_batch()
    for _ in range(calls):
        patient.step(model, optimizer, batch)
    return seen


def big_grads():
    """An MLP whose first gradients are large (a scaled-up last layer)."""
    model = mlp()
    with torch.no_grad():
        model[-1].weight.mul_(30.0)
    return model


def test_clips_the_gradient_norm():
    unclipped = grad_norm_at_step(make_patient(model=big_grads))
    clipped = grad_norm_at_step(make_patient(model=big_grads, grad_clip=0.5))
    assert unclipped[0] > 2.0          # the patient really has gradients above the max norm ...
    assert clipped[0] <= 0.5 + 1e-5    # ... and the step clipped them before the optimizer saw them


def test_clips_unscaled_gradients_under_a_grad_scaler():
    clipped = grad_norm_at_step(make_patient(model=big_grads, grad_clip=0.5, precision="fp16"), calls=30)
    assert clipped and all(n <= 0.5 + 1e-3 for n in clipped)  # unscaled first: the clip is in the user's units


def test_accumulates_over_n_batches():
    patient = make_patient(accumulate=3)
    model = patient.new_model()
    optimizer = patient.make_optimizer(model)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(training_state(optimizer).batches))
    batch = patient.fixed_batch()
    for _ in range(9):
        patient.step(model, optimizer, batch)
    assert steps == [3, 6, 9]  # one optimizer step per 3 batches, at the end of each cycle


def test_accumulated_gradient_is_the_mean_of_the_batches():
    single = grad_norm_at_step(make_patient(lr=0.0))
    accumulated = grad_norm_at_step(make_patient(lr=0.0, accumulate=4), calls=4)
    assert len(accumulated) == 1
    assert accumulated[0] == pytest.approx(single[0], rel=1e-5)  # each loss divided by 4, four times the same batch


def test_returns_the_undivided_loss():
    plain, accumulating = make_patient(), make_patient(accumulate=4)
    losses = []
    for p in (plain, accumulating):
        model = p.new_model()
        losses.append(float(p.step(model, p.make_optimizer(model), p.fixed_batch())))
    assert losses[0] == pytest.approx(losses[1])


def lrs_over(patient, calls):
    model = patient.new_model()
    optimizer = patient.make_optimizer(model)
    batch = patient.fixed_batch()
    out = []
    for _ in range(calls):
        patient.step(model, optimizer, batch)
        out.append(optimizer.param_groups[0]["lr"])
    return out


HALVE = functools.partial(lr_scheduler.StepLR, step_size=1, gamma=0.5)


def test_scheduler_steps_after_every_optimizer_step():
    assert lrs_over(make_patient(lr=1.0, scheduler=HALVE), 3) == [0.5, 0.25, 0.125]
    assert lrs_over(make_patient(lr=1.0, scheduler=HALVE, accumulate=2), 4) == [1.0, 0.5, 0.5, 0.25]


def test_scheduler_steps_once_per_epoch():
    # 64 samples, batch 16: 4 batches per epoch
    patient = make_patient(data=blobs(n=64), batch_size=16, lr=1.0, scheduler=HALVE, scheduler_interval="epoch")
    assert patient.epoch_batches == 4
    assert lrs_over(patient, 8) == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_scheduler_with_a_custom_train_step():
    def user_step(model, batch, loss_fn, optimizer):
        optimizer.zero_grad()
        loss = loss_fn(model(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        return loss
    assert lrs_over(make_patient(lr=1.0, scheduler=HALVE, train_step=user_step), 2) == [0.5, 0.25]


def test_no_schedule_for_the_lr_sweep_or_at_lr_zero():
    patient = make_patient(scheduler=functools.partial(lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=100))
    model = patient.new_model()
    assert training_state(patient.make_optimizer(model)).scheduler is not None
    assert training_state(patient.make_optimizer(model, schedule=False)).scheduler is None
    still = patient.make_optimizer(model, lr=0.0)
    assert training_state(still).scheduler is None and still.param_groups[0]["lr"] == 0.0


def test_onecycle_past_its_end_holds_its_last_lr():
    patient = make_patient(scheduler=functools.partial(lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=5))
    lrs = lrs_over(patient, 8)  # a probe may train longer than the user's run: no crash
    assert lrs[3] == lrs[4] == lrs[-1] < 1e-4  # 5 LRs (the one before the first step, then 4 steps), then held


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_autocasts_the_forward_pass(precision, dtype):
    patient = make_patient(precision=precision)
    model = patient.new_model()
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    patient.step(model, patient.make_optimizer(model), patient.fixed_batch())
    assert seen == [dtype]
    assert model[0].weight.dtype == torch.float32  # the weights stay fp32, as with torch.autocast


def test_autocast_applies_around_a_custom_train_step():
    dtypes = []

    def user_step(model, batch, loss_fn, optimizer):
        out = model(batch[0])
        dtypes.append(out.dtype)
        return loss_fn(out, batch[1])
    patient = make_patient(precision="bf16", train_step=user_step)
    model = patient.new_model()
    patient.step(model, patient.make_optimizer(model), patient.fixed_batch())
    assert dtypes == [torch.bfloat16]
    assert not patient.uses_grad_scaler  # the user's own step has no GradScaler of ours


def test_grad_scaler_scales_the_loss_and_hooks_see_unscaled_gradients():
    with_scaler = make_patient(precision="fp16")
    without = make_patient(precision="fp16", grad_scaler=False)
    scaler = training_state(with_scaler.make_optimizer(with_scaler.new_model())).scaler
    assert isinstance(scaler, torch.amp.GradScaler)
    assert training_state(without.make_optimizer(without.new_model())).scaler is None
    a, b = grad_norm_at_step(with_scaler), grad_norm_at_step(without)
    assert a[0] == pytest.approx(b[0], rel=2e-2)  # scaler.step unscales before optimizer.step's pre-hook


def test_grad_scaler_skips_steps_with_inf_gradients():
    class Blowup(nn.Module):  # finite loss, gradient past the fp16 range in the backward pass
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(10, 3)

        def forward(self, x):
            return self.fc(x) * 3e4
    patient = make_patient(model=Blowup, precision="fp16")
    model = patient.new_model()
    optimizer = patient.make_optimizer(model)
    before = model.fc.weight.detach().clone()
    patient.step(model, optimizer, patient.fixed_batch())
    state = training_state(optimizer)
    assert state.scaler.get_scale() < 65536.0       # the step was skipped and the scale halved ...
    assert torch.equal(model.fc.weight, before)     # ... so the weights did not move


def test_loader_and_fixed_batch_use_the_collate_fn():
    class Ragged(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.ones(1 + i % 4), i % 3

    def pad(samples):
        seqs = torch.nn.utils.rnn.pad_sequence([s for s, _ in samples], batch_first=True)
        return seqs, torch.tensor([y for _, y in samples])
    patient = Patient.from_objects(lambda: mlp(), Ragged(), nn.CrossEntropyLoss(), device="cpu", batch_size=4,
                                   collate_fn=pad)
    inputs, targets = patient.fixed_batch()
    assert inputs.shape[0] == 4 and inputs.dim() == 2
    assert all(batch[0].dim() == 2 for batch in patient.loader())


def test_variants_keep_and_replace_the_set_up():
    patient = make_patient(precision="fp16", grad_clip=1.0, accumulate=2, scheduler=HALVE)
    variant = patient.variant("bf16", precision="bf16")
    assert (variant.precision, variant.grad_clip, variant.accumulate, variant.scheduler) == ("bf16", 1.0, 2, HALVE)
    assert variant.changes == ("bf16",) and patient.precision == "fp16"


@pytest.mark.parametrize("kwargs", [{"precision": "fp8"}, {"accumulate": 0}, {"grad_clip": -1.0},
                                    {"scheduler_interval": "batch"}, {"scheduler": 3}])
def test_from_objects_rejects_bad_settings(kwargs):
    from nandoctor.errors import ConfigError
    with pytest.raises(ConfigError):
        make_patient(**kwargs)

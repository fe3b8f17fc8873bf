"""The Recorder: one host transfer per step, the units axis by layer, dead shares, the non-finite module,
and the cheaper settings (every=k, sub_batch=k) measuring what the full recorder measures."""

import copy
import math

import pytest
import torch
from torch import nn

from nandoctor.probes.instrument import CHANNELS, FEATURES, FOLLOW, OTHER, Recorder, layer_kind, units_axis

HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """Counts every Python-level read of a tensor's values onto the host (``.item()``, ``float(t)``, ...)."""
    counts = {"n": 0}
    for attr in HOST_READS:
        original = getattr(torch.Tensor, attr)

        def counted(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, attr, counted)
    return counts


def train(model, batch, steps, rec=None, lr=0.01):
    """Plain SGD steps on one batch (no host reads of its own), the recorder attached when given."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    if rec is not None:
        rec.attach_optimizer(optimizer)
    x, y = batch
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return optimizer


def cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 3))


def images(n=8):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


class SeqMLP(nn.Module):
    """A transformer's MLP on ``[N, T, C]`` tokens: LayerNorm, Linear to 4C, an activation, Linear back."""

    def __init__(self, d=8, act=nn.GELU, dead=0.5, classes=3):
        super().__init__()
        self.norm, self.fc, self.act, self.proj = nn.LayerNorm(d), nn.Linear(d, 4 * d), act(), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, classes)
        with torch.no_grad():  # the first share of the hidden units can never fire: bias far below any input
            self.fc.bias[: int(4 * d * dead)] = -100.0

    def forward(self, x):                                    # [N, T, d]
        h = self.proj(self.act(self.fc(self.norm(x))))        # [N, T, 4d] inside
        return self.head((x + h).mean(1))                     # [N, classes]


def tokens(n=16, t=12, d=8):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, t, d, generator=gen), torch.randint(0, 3, (n,), generator=gen)


# --- one host transfer per step ---------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"every": 3}, {"sub_batch": 2}, {"updates": True}, {"activations": False}])
@pytest.mark.parametrize("factory,batch", [(cnn, images), (SeqMLP, tokens)])
def test_one_host_read_per_step(host_reads, factory, batch, options):
    torch.manual_seed(0)
    model, data, steps = factory(), batch(), 5
    rec = Recorder(model, **options)
    host_reads["n"] = 0
    train(model, data, steps, rec)
    assert host_reads["n"] == steps  # one stacked transfer at each optimizer step, none in the hooks
    rec.detach()
    assert len(rec.total_grad_norms) == steps and all(map(math.isfinite, rec.total_grad_norms))
    if options.get("activations", True):
        assert rec.act_std and rec.dead_per_call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hooks_never_synchronise_the_device():
    model, (x, y) = cnn().cuda(), images()
    x, y = x.cuda(), y.cuda()
    rec = Recorder(model)
    optimizer = train(model, (x, y), 1, rec)
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call inside forward/backward raises
    try:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    optimizer.step()
    rec.detach()
    assert len(rec.act_mean["0"]) == 2


# --- the statistics themselves ------------------------------------------------------------------
def test_statistics_match_torch_and_arrive_at_the_step():
    torch.manual_seed(0)
    model, (x, y) = cnn(), images()
    rec = Recorder(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    rec.attach_optimizer(optimizer)
    nn.functional.cross_entropy(model(x), y).backward()
    assert rec.act_mean == {}  # still on the device until the step
    optimizer.step()
    rec.detach()
    with torch.no_grad():
        conv = model[0](x)
        bn = nn.functional.batch_norm(conv, None, None, model[1].weight, model[1].bias, training=True)
        hidden = torch.tanh(model[5](nn.functional.max_pool2d(torch.relu(bn), 2).flatten(1)))
    assert math.isclose(rec.act_mean["0"][0], float(conv.mean()), rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(rec.act_std["0"][0], float(conv.std(unbiased=False)), rel_tol=1e-4)
    assert math.isclose(rec.act_std["1"][0], float(bn.std(unbiased=False)), rel_tol=1e-3)
    pinned = float(((hidden <= -0.98) | (hidden >= 0.98)).float().mean())
    assert math.isclose(rec.saturated["6"][0], pinned, abs_tol=1e-6)
    assert rec.act_mean["4"] == rec.act_mean["3"]  # Flatten is a view of the pool's output
    assert len(rec.step_seconds) == 1 and rec.step_seconds[0] > 0


def test_statistics_of_forward_passes_without_a_step_arrive_at_detach():
    model, (x, _) = cnn(), images()
    rec = Recorder(model)
    with torch.no_grad():
        model(x)
        model(x)
    rec.detach()
    assert len(rec.act_mean["0"]) == 2 and rec.grad_norms == {}


def test_update_ratio_matches_the_weights_it_moved():
    torch.manual_seed(0)
    model, data = cnn(), images()
    before = [p.detach().clone() for p in model[5].parameters()]
    rec = Recorder(model, updates=True)
    train(model, data, 1, rec, lr=0.1)
    rec.detach()
    after = torch.cat([p.detach().flatten() for p in model[5].parameters()])
    start = torch.cat([p.flatten() for p in before])   # the layer's ratio: weight and bias together
    assert rec.update_ratios["5"] == [pytest.approx(float((after - start).norm() / start.norm()), rel=1e-4)]


# --- the units axis ----------------------------------------------------------------------------
def test_units_axis_rule():
    assert units_axis(CHANNELS, (4, 8, 5, 5), None) == 1
    assert units_axis(FEATURES, (4, 12, 8), None) == 2
    assert units_axis(FEATURES, (4, 8), None) == 1
    assert units_axis(FOLLOW, (4, 12, 8), (1, (4, 12, 8))) == 1          # follows a conv1d's channels
    assert units_axis(FOLLOW, (4, 8, 12), (1, (4, 12, 8))) == 2          # transposed on the way: the 12 moved
    assert units_axis(FOLLOW, (4, 12, 32), None) == 2                     # nothing feeds it: [N, T, C]
    assert units_axis(OTHER, (4, 8, 5, 5), None) == 1
    assert units_axis(OTHER, (4,), None) is None
    assert layer_kind(nn.Conv1d(2, 3, 1)) == layer_kind(nn.BatchNorm2d(3)) == layer_kind(nn.MaxPool2d(2)) == CHANNELS
    assert layer_kind(nn.Linear(2, 3)) == layer_kind(nn.LayerNorm(3)) == layer_kind(nn.LSTM(2, 3)) == FEATURES
    assert layer_kind(nn.ReLU()) == layer_kind(nn.Dropout()) == layer_kind(nn.Softmax(1)) == FOLLOW
    assert layer_kind(nn.MultiheadAttention(4, 2)) == FEATURES and layer_kind(nn.Flatten()) == OTHER


class Conv1dThenTokens(nn.Module):
    """A conv1d over time whose output is turned into tokens before a ReLU."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv1d(8, 6, 3, padding=1), nn.Linear(6, 3)
        self.relu_c, self.relu_t = nn.ReLU(), nn.ReLU()

    def forward(self, x):                                    # [N, 8, L]
        c = self.relu_c(self.conv(x))                        # [N, 6, L]: channels
        return self.fc(self.relu_t(c.transpose(1, 2))).mean(1)  # [N, L, 6]: the 6 units are last now


def test_units_axis_follows_the_layer_that_feeds_the_activation():
    cases = [(cnn(), images()[0], {"0": 1, "1": 1, "2": 1, "5": 1, "6": 1}),
             (SeqMLP(), tokens()[0], {"norm": 2, "fc": 2, "act": 2, "proj": 2, "head": 1}),
             (Conv1dThenTokens(), torch.randn(4, 8, 10), {"conv": 1, "relu_c": 1, "relu_t": 2})]
    for model, x, expected in cases:
        rec = Recorder(model)
        model(x)
        rec.detach()
        assert {k: rec.units_axis[k] for k in expected} == expected


@pytest.mark.parametrize("act", [nn.ReLU, nn.GELU])
def test_dead_share_of_a_transformer_mlp_counts_last_dim_units(act):
    model, (x, y) = SeqMLP(act=act, dead=0.5), tokens()
    rec = Recorder(model)
    train(model, (x, y), 3, rec)
    rec.detach()
    # half the 32 hidden units are dead by construction; read along the tokens (dim 1) it would be 0%
    assert rec.dead_per_call["act"] == [pytest.approx(0.5)] * 3
    assert rec.dead_share()["act"] == pytest.approx(0.5)
    assert rec.ever_active["act"].shape == (32,)


def test_dead_share_of_conv_channels():
    model, (x, y) = cnn(), images()
    with torch.no_grad():
        model[1].bias[:6] = -100.0   # 6 of the 8 BatchNorm channels are negative everywhere before the ReLU
    rec = Recorder(model)
    train(model, (x, y), 2, rec, lr=0.0)
    rec.detach()
    assert rec.dead_per_call["2"] == [pytest.approx(0.75)] * 2 and rec.units_axis["2"] == 1


# --- the first non-finite module -----------------------------------------------------------------
class Blowup(nn.Module):
    """exp(1000 x) from its third call on: inf from a finite input."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.exp(x * 1000.0) if self.calls >= 3 else x


def blowup_net():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), Blowup(), nn.Linear(16, 3))


@pytest.mark.parametrize("options", [{}, {"every": 4}, {"sub_batch": 2}, {"moments": False},
                                     {"every": 2, "moments": False}])
def test_first_nonfinite_module_is_named_at_its_step(options):
    torch.manual_seed(0)
    model, x, y = blowup_net(), torch.randn(8, 10), torch.randint(0, 3, (8,))
    with torch.no_grad():
        model[0].bias.fill_(1.0)  # positive pre-activations: exp(1000 x) overflows
    rec = Recorder(model, **options)
    train(model, (x, y), 4, rec, lr=0.0)
    rec.detach()
    fwd = rec.nonfinite_forward
    assert fwd["module"] == "2" and fwd["type"] == "Blowup" and fwd["step"] == 2  # not the Linear after it
    assert fwd["input"]["shape"] == [8, 16] and fwd["input"]["nan"] == 0 and math.isfinite(fwd["input"]["mean"])


class InPlaceBreak(nn.Module):
    """fc1, then an in-place division by zero outside any module, then fc2: no module is to blame."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = self.fc1(x)
        h.div_(0.0)
        return self.fc2(h)


class SqrtBetween(InPlaceBreak):
    def forward(self, x):
        return self.fc2(torch.sqrt(self.fc1(x)))


@pytest.mark.parametrize("factory", [InPlaceBreak, SqrtBetween])
def test_nonfinite_born_between_modules_names_none(factory):
    torch.manual_seed(0)
    model = factory()
    rec = Recorder(model)
    with torch.no_grad():
        model(torch.randn(8, 10))
    rec.detach()
    assert rec.nonfinite_forward is None


def test_nonfinite_batch_names_no_module():
    rec = Recorder(model := blowup_net())
    x = torch.randn(8, 10)
    x[0, 0] = float("nan")
    with torch.no_grad():
        model(x)
    rec.detach()
    assert rec.nonfinite_forward is None


def test_nonfinite_gradient_names_the_parameter_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    rec = Recorder(model)
    rec.attach_optimizer(optimizer)
    model(torch.randn(2, 4)).sum().backward()
    model[1].weight.grad[0, 0] = float("inf")
    optimizer.step()
    rec.detach()
    assert rec.nonfinite_grad == {"module": "1", "type": "Linear", "step": 0}
    assert math.isfinite(rec.grad_norms["0"][0]) and not math.isfinite(rec.grad_norms["1"][0])


# --- every=k and sub_batch=k measure what the full recorder measures ----------------------------------
def test_every_k_records_the_same_statistics_on_its_steps():
    torch.manual_seed(0)
    model, data = cnn(), images()
    twin = copy.deepcopy(model)
    full, sparse = Recorder(model), Recorder(twin, every=3)
    train(model, data, 7, full, lr=0.05)
    train(twin, data, 7, sparse, lr=0.05)
    full.detach()
    sparse.detach()
    assert sparse.activation_steps == [0, 3, 6] and full.activation_steps == list(range(7))
    for series in ("act_mean", "act_std", "dead_per_call", "saturated"):
        f, s = getattr(full, series), getattr(sparse, series)
        assert set(f) == set(s) and f
        for name in f:
            assert s[name] == pytest.approx(f[name][::3], rel=1e-6, abs=1e-9), (series, name)
    assert sparse.total_grad_norms == pytest.approx(full.total_grad_norms)  # gradients: every step
    assert set(sparse.grad_norms) == set(full.grad_norms) and sparse.grads_seen == full.grads_seen
    for name, norms in full.grad_norms.items():   # unmeasured steps take the short path: the same norms
        assert sparse.grad_norms[name] == pytest.approx(norms, rel=1e-6), name


@pytest.mark.parametrize("step", [0, 2])   # a measured step and an unmeasured one (the short path declines)
def test_nonfinite_gradient_on_any_step_names_the_parameter_layer(step):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    rec = Recorder(model, every=4)
    rec.attach_optimizer(optimizer)
    for i in range(4):
        optimizer.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        if i == step:
            model[2].bias.grad[0] = float("nan")
        optimizer.step()
    rec.detach()
    assert rec.nonfinite_grad == {"module": "2", "type": "Linear", "step": step}
    assert len(rec.grad_norms["2"]) == 4 and not math.isfinite(rec.grad_norms["2"][step])
    assert all(math.isfinite(x) for i, x in enumerate(rec.total_grad_norms) if i != step)


def test_a_parameter_without_a_gradient_is_recorded_as_such_on_unmeasured_steps():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1), nn.Linear(1, 1))   # the last one never called
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    rec = Recorder(model, every=3)
    rec.attach_optimizer(optimizer)
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        model[1](model[0](torch.randn(2, 4))).sum().backward()
        optimizer.step()
    rec.detach()
    assert rec.grads_none == {"2"} and rec.grads_seen == {"0", "1"}
    assert len(rec.grad_norms["2"]) == 5 and all(math.isnan(x) for x in rec.grad_norms["2"])
    assert len(rec.grad_norms["0"]) == 5 and all(math.isfinite(x) for x in rec.grad_norms["0"])


def test_sub_batch_records_the_same_statistics_when_the_batch_repeats_it():
    torch.manual_seed(0)
    model = SeqMLP(act=nn.ReLU, dead=0.25)
    x, y = tokens(n=4)
    batch = (x.repeat(4, 1, 1), y.repeat(4))  # 16 samples: the first 4, four times over
    twin = copy.deepcopy(model)
    full, sub = Recorder(model), Recorder(twin, sub_batch=4)
    train(model, batch, 3, full)
    train(twin, batch, 3, sub)
    full.detach()
    sub.detach()
    for series in ("act_mean", "act_std", "dead_per_call"):
        f, s = getattr(full, series), getattr(sub, series)
        assert set(f) == set(s) and f
        for name in f:
            assert s[name] == pytest.approx(f[name], rel=1e-4, abs=1e-6), (series, name)
    assert sub.dead_per_call["act"] == [pytest.approx(0.25)] * 3


def test_bad_settings_say_what_to_give():
    with pytest.raises(ValueError, match="every must be >= 1"):
        Recorder(cnn(), every=0)
    with pytest.raises(ValueError, match="sample count"):
        Recorder(cnn(), sub_batch=0)


def test_batchnorm_statistics_from_its_batch_statistics_are_exact_and_name_a_broken_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1.0, 1.0)
    x = torch.randn(16, 6) * 3
    y = model[1](model[0](x)).detach()
    rec = Recorder(model)
    model(x)   # training mode: from the saved batch mean and invstd
    model.eval()
    model(x)   # eval mode: running statistics, measured the plain way
    rec.detach()
    assert rec.act_mean["1"][0] == pytest.approx(float(y.mean()), abs=1e-5)
    assert rec.act_std["1"][0] == pytest.approx(float(y.std(unbiased=False)), rel=1e-4)
    assert len(rec.act_mean["1"]) == 2 and math.isfinite(rec.act_std["1"][1])
    model.train()
    with torch.no_grad():
        model[1].weight[0] = float("inf")
    for grad in (True, False):  # with the saved statistics, and without a graph (the output's own sum)
        rec = Recorder(model)
        with torch.set_grad_enabled(grad):
            model(x)
        rec.detach()
        assert rec.nonfinite_forward["module"] == "1" and rec.nonfinite_forward["type"] == "BatchNorm1d"


# --- between measured steps the modules run bare; a non-finite step is replayed ----------------------
def hooked(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_unmeasured_steps_run_without_module_hooks():
    torch.manual_seed(0)
    model, data = cnn(), images()
    rec = Recorder(model, every=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    rec.attach_optimizer(optimizer)
    seen = []
    x, y = data
    for _ in range(6):
        seen.append(hooked(model))
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    rec.detach()
    leaves = sum(1 for m in model.modules() if not list(m.children()))
    # the first measured step also holds the root's hook that finds the output layer (once)
    assert seen == [leaves + 1, 0, 0, leaves, 0, 0] and hooked(model) == 0
    assert rec.activation_steps == [0, 3] and len(rec.total_grad_norms) == 6


class NoisyBlowup(nn.Module):
    """BatchNorm and dropout (buffers and RNG that a replay must not move), then exp(1000 x)."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.drop, self.blow, self.head = nn.Linear(10, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), \
            Blowup(), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.blow(self.drop(self.bn(self.fc(x)))))


def test_a_nonfinite_unmeasured_step_is_replayed_without_changing_the_run():
    torch.manual_seed(0)
    model, x, y = NoisyBlowup(), torch.randn(8, 10), torch.randint(0, 3, (8,))
    with torch.no_grad():
        model.bn.bias.fill_(1.0)   # positive BatchNorm outputs: exp(1000 x) overflows from the third call
    twin = copy.deepcopy(model)
    rec = Recorder(model, every=4)
    torch.manual_seed(1)
    train(model, (x, y), 3, rec, lr=0.0)     # step 0 measured, steps 1 and 2 bare; step 2 blows up
    after = torch.rand(1)
    rec.detach()
    torch.manual_seed(1)
    train(twin, (x, y), 3, lr=0.0)
    twin_after = torch.rand(1)
    assert rec.nonfinite_forward["module"] == "blow" and rec.nonfinite_forward["step"] == 2
    assert rec.activation_steps == [0]   # the replay names the module; it adds no statistics
    assert torch.equal(after, twin_after)   # the RNG as if nothing had been replayed
    for (name, b), t in zip(model.named_buffers(), twin.buffers()):
        assert torch.equal(b, t), name       # BatchNorm's running statistics too


class TanhThenMatmul(nn.Module):
    """makemore's MLP: the only module is the hidden tanh; the output is ``h @ W2 + b2``."""

    def __init__(self):
        super().__init__()
        self.W1, self.W2 = nn.Parameter(torch.randn(6, 8)), nn.Parameter(torch.randn(8, 3))
        self.tanh = nn.Tanh()

    def forward(self, x):
        return self.tanh(x @ self.W1) @ self.W2


class SqueezedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(1)


@pytest.mark.parametrize("model, expected", [
    (TanhThenMatmul, None),
    (SqueezedHead, "head"),
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.ReLU()), "3"),
])
def test_the_output_layer_is_the_leaf_whose_output_the_model_returns(model, expected):
    """Not the last module called: a tanh module followed by a matmul is a hidden layer."""
    from nandoctor.diagnoses.module_tree import output_layer
    torch.manual_seed(0)
    m = model()
    rec = Recorder(m, every=2)
    m(torch.randn(4, 6)).sum().backward()
    rec.before_step()
    rec.after_step()
    m(torch.randn(4, 6))
    rec.detach()
    assert rec.output_known and rec.output_module == expected and output_layer(rec) == expected


def test_without_moments_the_dead_and_pinned_shares_are_the_same_and_cheaper():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias[:5] = -100.0     # five units that never fire
        model[2].weight.mul_(20.0)     # a tanh pinned on part of its outputs
    twin = copy.deepcopy(model)
    data = (torch.randn(32, 6) * 3, torch.randint(0, 3, (32,)))
    full, lean = Recorder(model, every=2), Recorder(twin, every=2, moments=False)
    train(model, data, 6, full, lr=0.05)
    train(twin, data, 6, lean, lr=0.05)
    full.detach()
    lean.detach()
    assert lean.act_mean == {} and lean.act_std == {} and full.act_mean
    assert lean.activation_steps == full.activation_steps == [0, 2, 4]
    for series in ("dead_per_call", "saturated"):
        f, g = getattr(full, series), getattr(lean, series)
        assert set(f) == set(g) and f, series
        for name in f:
            assert g[name] == pytest.approx(f[name]), (series, name)
    assert min(lean.dead_per_call["1"]) >= 5 / 16 and max(lean.saturated["3"]) > 0.1
    assert lean.dead_share() == pytest.approx(full.dead_share())
    assert lean.forward_order == full.forward_order and lean.total_grad_norms == pytest.approx(full.total_grad_norms)


def test_a_batch_that_holds_nan_is_not_replayed_and_later_steps_take_the_short_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    x[2, 1] = float("nan")
    rec = Recorder(model, every=4)
    optimizer = train(model, (x, y), 1, rec, lr=0.0)   # step 0, measured: the general path names the gradient
    assert rec.nonfinite_grad is not None and rec.nonfinite_grad["step"] == 0
    for _ in range(3):                                  # unmeasured NaN steps: no replay, the short path
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    rec.detach()
    assert len(calls) == 4, "a replay ran: a NaN in the batch names no module"
    assert len(rec.total_grad_norms) == 4 and not any(math.isfinite(v) for v in rec.total_grad_norms)
    assert len(rec.grad_norms["0"]) == 4 and rec.nonfinite_forward is None


# --- without the moments, a measured step after the first hooks the activation leaves only -------------------
def test_lean_steps_hook_only_the_activation_leaves_and_keep_their_units_axis():
    """[N, C, T] out of a Conv1d: the ReLU's units are its channels (dim 1), which the lean steps take from the
    full one (the rule without a feeder would read the last dim)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8, 3), nn.Tanh())
    with torch.no_grad():
        model[0].bias[:2] = -100.0   # two channels that never fire
    twin = copy.deepcopy(model)
    x, y = torch.randn(16, 4, 10), torch.randint(0, 3, (16,))
    lean, full = Recorder(model, every=2, moments=False), Recorder(twin, every=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    lean.attach_optimizer(optimizer)
    seen = []
    for _ in range(6):
        seen.append(hooked(model))
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    lean.detach()
    train(twin, (x, y), 6, full)
    full.detach()
    leaves = sum(1 for m in model.modules() if not list(m.children()))
    assert seen == [leaves + 1, 0, 2, 0, 2, 0] and hooked(model) == 0   # the ReLU and the Tanh on steps 2, 4
    assert lean.units_axis["1"] == full.units_axis["1"] == 1
    assert lean.activation_steps == full.activation_steps == [0, 2, 4]
    assert lean.dead_per_call["1"] == pytest.approx(full.dead_per_call["1"]) and min(lean.dead_per_call["1"]) >= 2 / 6
    assert lean.saturated["4"] == pytest.approx(full.saturated["4"])
    assert lean.total_grad_norms == pytest.approx(full.total_grad_norms)


def test_a_lean_step_whose_gradients_are_not_finite_adds_no_shares():
    """relu(NaN) counts as not active: a share read off a NaN step would call every unit dead."""
    torch.manual_seed(0)
    model, x, y = blowup_net(), torch.randn(8, 10), torch.randint(0, 3, (8,))
    with torch.no_grad():
        model[0].bias.fill_(1.0)
    rec = Recorder(model, every=1, moments=False)
    train(model, (x, y), 4, rec, lr=0.0)
    rec.detach()
    assert rec.nonfinite_forward["module"] == "2" and rec.nonfinite_forward["step"] == 2
    assert len(rec.dead_per_call["1"]) == 2 and rec.activation_steps == [0, 1]

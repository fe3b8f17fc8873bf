"""The structure probe and the module-tree diagnoses, on tiny sick patients."""

import functools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nandoctor.diagnoses import get
from nandoctor.records import Evidence, ProbeResult
from patients import battery, blobs, codes, make_patient, mlp

PROBES = ["structure", "overfit"]


class LayerInForward(nn.Module):
    """Seed 002 in small: a layer built inside forward() and assigned to self."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x):
        self.adj = nn.Linear(16, 16)
        return self.b(torch.relu(self.adj(torch.relu(self.a(x)))))


class LayersInList(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = [nn.Linear(10, 32), nn.Linear(32, 3)]
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return self.layers[1](torch.relu(self.layers[0](x))) + self.bias


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(self.body(x).detach())


class StridedPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool1d(kernel_size=2, stride=4)
        self.head = nn.Linear(8 * 3, 3)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x.unsqueeze(1)))).flatten(1))


def all_frozen():
    model = mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def head_only(params, lr):
    """An optimizer factory that (wrongly) hands Adam only the last layer."""
    return torch.optim.Adam(list(params)[-2:], lr=lr)


def step_without_zero_grad(model, batch, loss_fn, optimizer):
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss


def step_with_zero_grad(model, batch, loss_fn, optimizer):
    optimizer.zero_grad()
    return step_without_zero_grad(model, batch, loss_fn, optimizer)


def top(report):
    return report.findings[0]


def test_layer_built_in_forward_is_unregistered_and_named():
    report = battery(make_patient(model=LayerInForward), probes=PROBES)
    assert codes(report)[0] == "unregistered-module"
    group = top(report).evidence["unregistered"][0]
    assert group["name"] == "adj" and group["fresh_each_call"] is True
    assert ["weight", [16, 16]] in group["shapes"]


def test_layer_built_in_forward_is_cured_by_keeping_the_first_instance():
    report = battery(make_patient(model=LayerInForward), probes=PROBES, budget=30)
    finding = top(report)
    assert finding.treatment is not None and finding.treatment["cured"] is True


def test_layers_in_a_plain_list_are_unregistered():
    report = battery(make_patient(model=LayersInList), probes=PROBES)
    assert codes(report)[0] == "unregistered-module"
    names = {g["name"] for g in top(report).evidence["unregistered"]}
    assert {"layers[0]", "layers[1]"} <= names
    assert all(g["fresh_each_call"] is False for g in top(report).evidence["unregistered"])


def test_layers_in_a_plain_list_are_cured_by_registering_them():
    report = battery(make_patient(model=LayersInList), probes=PROBES, budget=30)
    finding = top(report)
    assert finding.code == "unregistered-module" and finding.status == "confirmed", finding.treatment
    assert finding.treatment["tried"].startswith("registered layers as nn.ModuleList")


class StrayLinear(nn.Module):
    """A layer built and called in forward() without being assigned: ``nn.Linear(h, h)(x)``."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(10, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.relu(nn.Linear(16, 16)(torch.relu(self.inp(x)))))


def test_a_layer_built_in_forward_and_never_assigned_is_cured_by_reusing_its_first_weights():
    report = battery(make_patient(model=StrayLinear), probes=PROBES, budget=30)
    finding = top(report)
    assert finding.code == "unregistered-module" and finding.status == "confirmed", finding.treatment
    assert finding.treatment["tried"].startswith("built the layers forward() creates once")
    assert finding.treatment["before"]["call_to_call_change"] > 1e-3 >= finding.treatment["after"]["call_to_call_change"]


def test_optimizer_missing_parameters_ranks_first_and_names_them():
    patient = make_patient(model=lambda: mlp(hidden=64), optimizer=functools.partial(head_only, lr=1e-2))
    report = battery(patient, probes=PROBES)
    assert codes(report)[0] == "params-not-in-optimizer"
    left_out = {p["name"] for p in top(report).evidence["left_out"]}
    assert left_out == {"0.weight", "0.bias"}


def test_all_frozen_model_ranks_no_trainable_params_above_the_crash():
    report = battery(make_patient(model=all_frozen), probes=PROBES)
    assert codes(report)[0] == "no-trainable-params"
    assert "training-crashed" in codes(report)
    assert report.findings[0].treatment["cured"] is True


def test_detached_body_gets_no_gradient():
    report = battery(make_patient(model=Detached), probes=PROBES)
    assert codes(report)[0] == "no-trainable-params"
    assert {e["module"] for e in top(report).evidence["cut_off"]} == {"body.0", "body.2"}


def regression(n=256, features=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    y = x @ torch.randn(features, 1, generator=gen) + 0.05 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x, y)


def test_missing_zero_grad_is_found_and_cured():
    patient = make_patient(model=lambda: mlp(classes=1), data=regression(), loss=nn.MSELoss(),
                           train_step=step_without_zero_grad, lr=1e-2)
    report = battery(patient, probes=PROBES, budget=30)
    assert codes(report)[0] == "missing-zero-grad"
    assert top(report).evidence["ratio"] == pytest.approx(2.0, rel=1e-3)
    assert top(report).treatment is not None and top(report).treatment["cured"] is True


def test_pool_stride_larger_than_kernel():
    report = battery(make_patient(model=StridedPool, data=blobs(features=12)), probes=PROBES)
    assert codes(report)[0] == "pool-stride-gt-kernel"
    layer = top(report).evidence["layers"][0]
    assert layer["module"] == "pool" and layer["stride"] == [4] and layer["kernel"] == [2]


@pytest.mark.parametrize("kw", [{}, {"train_step": step_with_zero_grad}], ids=["default-step", "own-step"])
def test_healthy_patients_get_nothing_from_the_structure_probe(kw):
    report = battery(make_patient(**kw), probes=PROBES)
    assert report.verdict == "healthy", codes(report)


def structure_evidence(**metrics):
    base = {"parameters": 100, "trainable_parameters": 100, "trainable_tensors": 2, "loss_requires_grad": True,
            "grads_at_step": True, "unregistered": [], "no_grad_path": [], "strided": [], "accumulation": None,
            "not_in_optimizer": [], "not_in_optimizer_numel": 0, "not_in_optimizer_count": 0}
    return Evidence({"structure": ProbeResult(name="structure", metrics={**base, **metrics})})


def test_one_by_one_strided_convolution_is_a_resnet_shortcut_not_a_gap():
    from nandoctor.probes.structure import skips_inputs
    assert not skips_inputs({"op": "conv2d", "kernel": [1, 1], "stride": [2, 2], "dilation": [1, 1]})
    assert skips_inputs({"op": "max_pool2d", "kernel": [2, 2], "stride": [3, 3], "dilation": [1, 1]})
    assert not skips_inputs({"op": "max_pool2d", "kernel": [2, 2], "stride": [3, 3], "dilation": [2, 2]})


def test_zero_grad_ratio_threshold_from_hand_built_evidence():
    diag = get("missing-zero-grad")
    assert diag.check(structure_evidence(accumulation={"ratio": 1.0, "cosine": 1.0})) is None
    assert diag.check(structure_evidence(accumulation={"ratio": 2.0, "cosine": 1.0})).confidence > 0.9


def test_unused_layers_are_only_info():
    ev = structure_evidence(no_grad_path=[{"module": "aux", "called": False, "numel": 40, "parameters": ["aux.weight"]}])
    finding = get("no-trainable-params").check(ev)
    assert finding.severity == "info"


MY_CODES = ["unregistered-module", "params-not-in-optimizer", "no-trainable-params", "missing-zero-grad",
            "pool-stride-gt-kernel", "dead-relu", "saturated-activation", "nonfinite-source"]


@pytest.mark.parametrize("code", MY_CODES)
def test_every_code_has_a_full_doc_page(code):
    from nandoctor.diagnoses import DOC_SECTIONS
    page = get(code).page()
    assert all(f"## {section}" in page for section in DOC_SECTIONS)
    assert get(code).thresholds or code in ("pool-stride-gt-kernel",)


def step_with_autograd_backward(model, batch, loss_fn, optimizer):
    optimizer.zero_grad()
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    torch.autograd.backward(loss)
    optimizer.step()
    return loss.item()


def test_a_step_without_tensor_backward_is_not_mistaken_for_a_cut_graph():
    report = battery(make_patient(train_step=step_with_autograd_backward), probes=PROBES)
    assert report.verdict == "healthy", codes(report)


class ZeroGate(nn.Module):
    """A layer multiplied by a constant zero gate: in the graph, yet its gradient is always exactly zero."""

    def __init__(self):
        super().__init__()
        self.main = nn.Linear(10, 3)
        self.side = nn.Linear(10, 3)
        self.register_buffer("gate", torch.zeros(1))

    def forward(self, x):
        return self.main(x) + self.gate * self.side(x)


def test_gradient_that_stays_zero_is_a_warning():
    report = battery(make_patient(model=ZeroGate), probes=PROBES)
    assert codes(report)[0] == "no-trainable-params"
    assert report.findings[0].severity == "warning"
    assert [e["module"] for e in report.findings[0].evidence["zero_gradient"]] == ["side"]


class LayerInForwardThatCrashes(LayerInForward):
    """The layer built in forward() lands on the wrong dtype (on a GPU: the wrong device) and the call raises."""

    def forward(self, x):
        self.adj = nn.Linear(16, 16, dtype=torch.float64)
        return self.b(torch.relu(self.adj(torch.relu(self.a(x)))))


def test_layer_built_in_forward_is_found_even_when_the_step_crashes():
    report = battery(make_patient(model=LayerInForwardThatCrashes), probes=PROBES)
    assert codes(report)[:2] == ["unregistered-module", "training-crashed"]
    assert report.findings[0].evidence["unregistered"][0]["name"] == "adj"


def test_missing_zero_grad_cure_counts_even_when_the_batch_was_memorised_anyway():
    patient = make_patient(train_step=step_without_zero_grad, optimizer=torch.optim.SGD, lr=0.05)
    report = battery(patient, probes=PROBES)
    top_finding = top(report)
    assert top_finding.code == "missing-zero-grad"
    assert top_finding.treatment["cured"] is True and top_finding.treatment["after"]["gradient_ratio"] == pytest.approx(1.0)


def accumulate_four(model, batch, loss_fn, optimizer):
    """A train_step that accumulates on purpose: optimizer.step() and zero_grad() every 4th call (of this
    optimizer: every probe makes its own)."""
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    (loss / 4).backward()
    optimizer.calls = getattr(optimizer, "calls", 0) + 1
    if optimizer.calls % 4 == 0:
        optimizer.step()
        optimizer.zero_grad()
    return loss


def test_a_step_that_applies_the_summed_gradient_is_told_from_accumulation_on_purpose():
    """optimizer.step() in every call without zero_grad() applies the sum; stepping every 4th call is deliberate
    accumulation, which the gradient ratio alone cannot tell apart: zeroing it is not confirmed as a cure."""
    missing = battery(make_patient(train_step=step_without_zero_grad, lr=1e-2), probes=PROBES, budget=20)
    assert top(missing).code == "missing-zero-grad" and top(missing).evidence["stepped_every_call"] is True
    deliberate = battery(make_patient(train_step=accumulate_four, lr=1e-2), probes=PROBES, budget=20)
    found = [f for f in deliberate.findings if f.code == "missing-zero-grad"]
    assert found and found[0].evidence["stepped_every_call"] is False
    assert found[0].status != "confirmed", found[0].treatment


def pinned_first_layer():
    """Pre-activations near 40 into a sigmoid (a bias far off): every unit pinned at 1, its gradient exactly zero."""
    model = nn.Sequential(nn.Linear(10, 16), nn.Sigmoid(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].bias.fill_(40.0)
    return model


def test_a_zero_gradient_under_a_pinned_sigmoid_is_left_to_saturated_activation():
    report = battery(make_patient(model=pinned_first_layer), probes=PROBES)
    stuck = [f for f in report.findings if f.code == "no-trainable-params"]
    assert not stuck, [(f.code, f.title) for f in report.findings]
    rec = report.probes["overfit"].data["recorder"]
    assert rec.grad_norms["0"] and all(v == 0.0 for v in rec.grad_norms["0"])   # the gradient is exactly zero


class FixedBatchView(nn.Module):
    """``scores.view(32, 3)``: the batch size written into forward()."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        return self.fc(x).view(32, 3)


def test_a_model_that_fixes_the_batch_size_dies_on_the_last_batch_of_the_epoch():
    from patients import blobs
    report = battery(make_patient(model=FixedBatchView, data=blobs(n=200), batch_size=32), probes=PROBES)
    top = report.findings[0]
    assert top.code == "training-crashed" and top.severity == "critical", codes(report)
    assert top.evidence["last_batch_samples"] == 200 % 32 and top.evidence["phase"] == "the last batch of an epoch"
    assert "test_structure.py" in (top.evidence["where"] or "") and "drop_last=True" in top.fix


@pytest.mark.parametrize("n", [200, 256])   # a last batch of 8 samples, and none
def test_a_model_that_follows_its_batch_trains_the_last_batch_too(n):
    from patients import blobs
    report = battery(make_patient(data=blobs(n=n), batch_size=32), probes=PROBES)
    assert "training-crashed" not in codes(report)
    last = report.probes["structure"].metrics["last_batch"]
    assert (last is None) == (n % 32 == 0) and (last is None or "error" not in last)


def test_a_loader_that_drops_the_last_batch_never_draws_it():
    from patients import blobs
    report = battery(make_patient(model=FixedBatchView, data=blobs(n=200), batch_size=32, drop_last=True),
                     probes=PROBES)
    assert "training-crashed" not in codes(report) and report.probes["structure"].metrics["last_batch"] is None


def step_loss_rebuilt(model, batch, loss_fn, optimizer):
    """'does not require grad' answered with a new tensor: torch.tensor(loss.item(), requires_grad=True)."""
    x, y = batch
    optimizer.zero_grad()
    loss = torch.tensor(loss_fn(model(x), y).item(), requires_grad=True)
    loss.backward()
    optimizer.step()
    return loss


def step_zero_grad_between(model, batch, loss_fn, optimizer):
    x, y = batch
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
    return loss


def test_a_loss_rebuilt_from_its_value_reaches_no_parameter_and_is_not_a_stray_weight():
    """The rebuilt loss is a leaf that takes a gradient: it is the loss, not an unregistered tensor of the model."""
    patient = make_patient(train_step=step_loss_rebuilt)
    report = battery(patient, probes=PROBES, budget=30)
    structure = report.probes["structure"].metrics
    assert structure["loss_rebuilt"] is True and structure["unregistered"] == []
    assert codes(report)[0] == "no-trainable-params" and "unregistered-module" not in codes(report)
    assert top(report).evidence["loss_rebuilt"] is True and "made anew from its value" in top(report).title


@pytest.mark.parametrize("step", [step_loss_rebuilt, step_zero_grad_between])
def test_a_gradient_lost_in_train_step_is_confirmed_by_the_standard_step(step):
    """The same model, loss and optimizer with the standard step (zero_grad, forward, loss, backward, step) train:
    the user's step is where the gradient goes missing."""
    report = battery(make_patient(train_step=step), probes=PROBES, budget=30)
    found = top(report)
    assert found.code == "no-trainable-params" and found.status == "confirmed", (found.code, found.status)
    assert "standard step" in found.treatment["tried"]


def test_a_gradient_lost_by_the_model_itself_gets_no_standard_step_cure():
    """A detached body loses the gradient in forward(): replacing a step the user did not write changes nothing."""
    report = battery(make_patient(model=Detached), probes=PROBES)
    assert top(report).code == "no-trainable-params" and top(report).status != "confirmed"


def test_outputs_that_are_all_zero_are_a_zero_init_not_a_relu_output():
    """A linear model initialised to zero (fine: no hidden units) hands the loss exact zeros at the start, with no
    positive value beside them: no ReLU clips anything, and nothing critical is found."""
    class ZeroLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(10, 3, bias=False)
            nn.init.zeros_(self.linear.weight)

        def forward(self, x):
            return self.linear(x)

    report = battery(make_patient(model=ZeroLinear))
    assert not [f.code for f in report.findings if f.severity == "critical"], codes(report)

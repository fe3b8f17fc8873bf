"""dead-relu and saturated-activation: tiny sick patients and hand-built recorder evidence."""

from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.data import TensorDataset

from nandoctor.diagnoses import get
from nandoctor.records import Evidence, ProbeResult
from patients import battery, blobs, codes, make_patient

PROBES = ["structure", "overfit"]


def dead_hidden_layer():
    """Biases so negative that the hidden ReLU never fires: the output cannot depend on the input."""
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))
    with torch.no_grad():
        model[0].bias.fill_(-50.0)
    return model


def saturated_hidden_layer():
    """Huge initial weights in front of a tanh: almost every hidden unit sits at +-1."""
    model = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 3))
    with torch.no_grad():
        model[0].weight.mul_(40.0)
    return model


def test_dead_relu_layer_ranks_first():
    report = battery(make_patient(model=dead_hidden_layer), probes=PROBES)
    assert codes(report)[0] == "dead-relu"
    layer = report.findings[0].evidence["layers"][0]
    assert layer["layer"] == "1" and layer["dead_share"] > 0.9


def test_saturated_tanh_layer_ranks_first():
    report = battery(make_patient(model=saturated_hidden_layer), probes=PROBES)
    assert codes(report)[0] == "saturated-activation"
    assert report.findings[0].evidence["layers"][0]["saturated_at_start"] > 0.5


def test_healthy_relu_and_tanh_nets_are_quiet():
    tanh_net = lambda: nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))  # noqa: E731
    for model in (None, tanh_net):
        report = battery(make_patient(model=model), probes=PROBES)
        assert not {"dead-relu", "saturated-activation"} & set(codes(report)), codes(report)


def evidence(recorder, memorised=True):
    return Evidence({"overfit": ProbeResult(name="overfit", metrics={"memorised": memorised},
                                            data={"recorder": recorder})})


def fake_recorder(**kw):
    base = dict(layer_types={}, dead_per_call={}, saturated={}, forward_order=[])
    return SimpleNamespace(**{**base, **kw})


def test_dead_relu_threshold_is_half_the_layer():
    rec = fake_recorder(layer_types={"h": "ReLU", "out": "Linear"}, forward_order=["h", "out"],
                        dead_per_call={"h": [0.1] * 80 + [0.45] * 20})
    assert get("dead-relu").check(evidence(rec)) is None
    rec.dead_per_call["h"] = [0.1] * 80 + [0.6] * 20
    finding = get("dead-relu").check(evidence(rec))
    assert finding.severity == "warning" and "during training" in finding.title and finding.role == "symptom"


def test_output_relu_and_leaky_relu_are_not_judged():
    rec = fake_recorder(layer_types={"h": "LeakyReLU", "out": "ReLU"}, forward_order=["h", "out"],
                        dead_per_call={"h": [1.0] * 10, "out": [1.0] * 10})
    assert get("dead-relu").check(evidence(rec)) is None


def test_late_saturation_counts_only_when_the_batch_is_not_memorised():
    rec = fake_recorder(layer_types={"t": "Tanh", "out": "Linear"}, forward_order=["t", "out"],
                        saturated={"t": [0.0] * 80 + [0.9] * 20})
    assert get("saturated-activation").check(evidence(rec, memorised=True)) is None
    assert get("saturated-activation").check(evidence(rec, memorised=False)) is not None


class TokenMLP(nn.Module):
    """A transformer-style MLP over ``[N, T, C]`` tokens whose hidden ReLU units are 3/4 dead from init."""

    def __init__(self, features=10, classes=3):
        super().__init__()
        d = features
        self.fc, self.act, self.proj = nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, classes)
        with torch.no_grad():
            self.fc.bias[: 3 * d] = -50.0

    def forward(self, x):                                   # [N, T, d]
        return self.head((x + self.proj(self.act(self.fc(x)))).mean(1))


def token_blobs(tokens=6):
    """The blobs, each sample spread over a few noisy tokens: ``[N, T, 10]``."""
    x, y = blobs().tensors
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(x[:, None, :] + 0.1 * torch.randn(x.shape[0], tokens, x.shape[1], generator=gen), y)


def test_dead_units_of_a_token_mlp_are_its_features():
    """Units are the last dim of [N, T, C]: read along the tokens, every position has live units (0% dead)."""
    report = battery(make_patient(model=TokenMLP, data=token_blobs()), probes=PROBES)
    finding = next(f for f in report.findings if f.code == "dead-relu")
    layer = finding.evidence["layers"][0]
    assert layer["layer"] == "act" and abs(layer["dead_share"] - 0.75) < 0.05
    assert abs(layer["dead_share_at_init"] - 0.75) < 0.05

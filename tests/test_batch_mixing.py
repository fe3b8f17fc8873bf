"""batch-mixing: a sample's output that changes with the other samples of its batch; the probe's measurement,
the healthy models that keep their samples apart, and the batch_first cure."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from nandoctor.diagnoses import get
from nandoctor.probes.batch_mixing import batch_mixing
from nandoctor.records import Evidence, ProbeResult
from patients import battery, make_patient


class Encoder(nn.Module):
    """Token embedding -> one transformer layer -> mean over tokens -> classes, fed [batch, tokens]."""

    def __init__(self, batch_first=True, vocab=50, width=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layer = nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=batch_first)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.layer(self.embed(x)).mean(1))


class Tagger(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.gru, self.head = nn.GRU(5, 16, batch_first=batch_first), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1])


class SoftmaxOverBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(10, 3)

    def forward(self, x):
        return torch.log(torch.softmax(self.body(x), 0))   # dim 0: the batch


class NoisyInEval(nn.Module):
    """Dropout that ignores the mode: random in eval too, so nothing can be compared."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(10, 3)

    def forward(self, x):
        return self.body(F.dropout(x, 0.5, training=True))


def tokens(n=256, length=12, seed=0):
    """Class = which of three token ranges dominates the sequence."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randint(1, 50, (n, length), generator=g)
    favoured = 1 + 16 * y[:, None] + torch.randint(0, 16, (n, length), generator=g)
    keep = torch.rand(n, length, generator=g) < 0.6
    return TensorDataset(torch.where(keep, favoured, x), y)


def test_a_batch_first_false_layer_fed_the_batch_on_dim_0_is_named():
    torch.manual_seed(0)
    mix = batch_mixing(Encoder(batch_first=False), torch.randint(1, 50, (16, 12)))
    assert mix["difference"] > 1e-2
    assert mix["module"] == "layer.self_attn" and mix["module_type"] == "MultiheadAttention"
    assert mix["batch_first_mismatch"] and mix["batch_first_layers"] == ["layer.self_attn"]
    gru = batch_mixing(Tagger(batch_first=False), torch.randn(16, 7, 5))
    assert gru["module"] == "gru" and gru["batch_first_mismatch"]   # the state runs from sample to sample


def test_models_that_keep_their_samples_apart_do_not_mix():
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3))
    for model, x in ((Encoder(), torch.randint(1, 50, (16, 12))), (Tagger(), torch.randn(16, 7, 5)),
                     (bn, torch.randn(16, 3, 8, 8))):
        mix = batch_mixing(model, x)
        assert mix["difference"] < 1e-5 and "module" not in mix, type(model).__name__
    # a model that is random in eval mode cannot be judged
    assert batch_mixing(NoisyInEval(), torch.randn(16, 10)) is None


def test_mixing_in_the_models_own_forward_names_the_last_module_that_agreed():
    mix = batch_mixing(SoftmaxOverBatch(), torch.randn(16, 10))
    assert mix["difference"] > 1e-2 and mix["module"] is None and mix["after"] == "body"


def evidence(mix):
    return Evidence({"outputs": ProbeResult("outputs", "ok", metrics={"batch_mixing": mix})})


def test_batchnorm_on_batch_statistics_is_a_note_and_rounding_is_nothing():
    diag = get("batch-mixing")
    by_design = {"difference": 0.2, "samples": [16, 8], "batch_first_layers": [], "module": "bn",
                 "module_type": "BatchNorm1d", "batch_first_mismatch": False}
    assert diag.check(evidence(by_design)).severity == "info"
    assert diag.check(evidence({"difference": 5e-4, "samples": [16, 8], "batch_first_layers": []})) is None


def test_batch_first_false_is_diagnosed_first_and_confirmed_by_batch_first_true():
    torch.manual_seed(0)
    patient = make_patient(model=lambda: Encoder(batch_first=False), data=tokens(), lr=3e-3)
    report = battery(patient, budget=25)
    top = report.findings[0]
    assert top.code == "batch-mixing", [(f.code, f.status) for f in report.findings]
    assert top.status == "confirmed" and top.severity == "critical"
    assert "batch_first=True on `layer.self_attn`" in top.treatment["tried"]
    assert top.treatment["after"]["batch_mixing"] < 1e-3 < top.treatment["before"]["batch_mixing"]


def test_the_healthy_encoder_gets_no_batch_mixing():
    torch.manual_seed(0)
    report = battery(make_patient(model=Encoder, data=tokens(), lr=3e-3), probes=["outputs"])
    assert "batch-mixing" not in [f.code for f in report.findings]
    assert report.probes["outputs"].metrics["batch_mixing"]["difference"] == 0.0

"""Tiny patients, healthy and sick, built from Python objects (no config file needed).

    report = battery(make_patient(model=..., loss=...), probes=["overfit"])
    assert report.findings[0].code == "cannot-overfit-batch"
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

import nandoctor
from nandoctor.patient import Patient


def blobs(n=256, features=10, classes=3, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=gen) * 2.0
    y = torch.randint(0, classes, (n,), generator=gen)
    x = (centers[y] + torch.randn(n, features, generator=gen)) * scale
    return TensorDataset(x, y)


def mlp(features=10, classes=3, hidden=32, last=None):
    layers = [nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)]
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


def make_patient(model=None, data=None, loss=None, optimizer=torch.optim.Adam, lr=1e-2, **kw) -> Patient:
    """A patient from objects; ``model`` may be a factory (preferred) or an instance."""
    model = model if model is not None else (lambda: mlp())
    return Patient.from_objects(model, data if data is not None else blobs(), loss or nn.CrossEntropyLoss(),
                                optimizer, lr=lr, device="cpu", **kw)


def battery(patient, probes=None, budget=20.0, out=None, **kw):
    return nandoctor.diagnose(patient, probes=probes, budget=budget, out=out, **kw)


def codes(report):
    return [f.code for f in report.findings]

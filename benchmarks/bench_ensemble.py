"""Batched ensemble (stack_module_state + functional_call + vmap) against training the variants one by one.

The init probe trains K copies of one architecture (the user's init and four standard
ones) for the same steps on the same batches. This prints the wall time of both paths
for small models, where per-step overhead dominates and batching pays most, and for a
wider one, and checks that both give the same losses. Alternating repeats, median.
On CPU, vmap'd matrix products of wide layers are slower than K plain ones: the init
probe batches on CPU only when a step is fast (``ENSEMBLE_CPU_MAX_STEP``), always on GPU.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

from nandoctor.patient import Patient
from nandoctor.probes.ensemble import train_many
from nandoctor.probes.init_compare import STANDARD, scheme_factory

REPEATS = 3
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STEPS = 60
SCHEMES = ("as configured",) + STANDARD   # K = 5, as in the init probe


def data(n=512, features=32, classes=10) -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, features, generator=gen), torch.randint(0, classes, (n,), generator=gen))


def mlp(hidden: int, depth: int):
    def build() -> nn.Module:
        layers, width = [], 32
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, 10))
    return build


CASES = {"mlp 64x3, batch 32": (mlp(64, 3), 32), "mlp 256x4, batch 64": (mlp(256, 4), 64),
         "mlp 1024x2, batch 128": (mlp(1024, 2), 128)}


def timed(patient: Patient, batched: bool) -> tuple[float, list]:
    models = [patient.variant(s, model_factory=scheme_factory(patient, s)).new_model() for s in SCHEMES]
    batches = [patient.fixed_batch(offset=i) for i in range(4)]
    start = time.perf_counter()
    runs, mode = train_many(patient, models, batches, STEPS, batched=batched)
    assert mode == ("ensemble" if batched else "sequential"), mode
    return time.perf_counter() - start, runs


def main() -> None:
    torch.set_num_threads(1)
    for name, (factory, batch) in CASES.items():
        patient = Patient.from_objects(factory, data(), nn.CrossEntropyLoss(), torch.optim.Adam, lr=1e-3,
                                       batch_size=batch, device=DEVICE)
        seq, ens = [], []
        for _ in range(REPEATS):
            t_seq, runs_seq = timed(patient, batched=False)
            t_ens, runs_ens = timed(patient, batched=True)
            seq.append(t_seq)
            ens.append(t_ens)
        gap = max(abs(a - b) for ra, rb in zip(runs_seq, runs_ens) for a, b in zip(ra.losses, rb.losses))
        s, e = statistics.median(seq), statistics.median(ens)
        print(f"[{DEVICE}] {name:22s} K={len(SCHEMES)} x {STEPS} steps: sequential {s * 1e3:7.1f} ms, "
              f"ensemble {e * 1e3:7.1f} ms, speed-up {s / e:4.2f}x (max loss difference {gap:.1e})")


if __name__ == "__main__":
    main()

"""What the module-tree checks cost, in plain training steps measured in the same run.

For three models (an MLP, a small CNN, the seed 002 ResNet) this prints:
- structure / step:   the whole structure probe (two traced steps, graph walk, two eval calls)
                      against one plain training step (zero_grad, forward, backward, step);
- recorder / step:    a step with the overfit probe's Recorder attached (with the dead-unit
                      statistics) against a plain step;
- checked / step:     a step run under the nonfinite probe's per-call checks and
                      detect_anomaly against a plain step (paid only when a NaN appeared).
Baselines and measurements share the process, the threads and the batch.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "configs"), str(ROOT / "sample_runs" / "seed002_layer_in_forward")]

from nandoctor.patient import Patient  # noqa: E402
from nandoctor.probes import ProbeContext  # noqa: E402
from nandoctor.probes.instrument import Recorder  # noqa: E402
from nandoctor.probes.nonfinite import NonFinite  # noqa: E402
from nandoctor.probes.structure import Structure  # noqa: E402
from nandoctor.records import Evidence  # noqa: E402

REPEATS = 7   # median of this many timings per measurement
STEPS = 10    # steps per timing


def patients() -> dict[str, Patient]:
    import examples
    import resnet
    return {
        "mlp": Patient.from_objects(lambda: examples.MLP(20, 64, 3), examples.blobs(512), nn.CrossEntropyLoss(),
                                    torch.optim.Adam, lr=1e-3, device="cpu"),
        "small-cnn": Patient.from_objects(lambda: examples.SmallCNN(3, 4), examples.images(256), nn.CrossEntropyLoss(),
                                          torch.optim.Adam, lr=1e-3, device="cpu"),
        "seed002-resnet": Patient.from_objects(resnet.ResNet, resnet.tiles(256), nn.CrossEntropyLoss(),
                                               torch.optim.Adam, lr=1e-3, device="cpu"),
    }


def median_time(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plain_steps(patient: Patient, recorder: bool = False) -> float:
    model = patient.new_model()
    opt = patient.make_optimizer(model)
    batch = patient.fixed_batch()
    rec = Recorder(model) if recorder else None
    if rec is not None:
        rec.attach_optimizer(opt)
    patient.step(model, opt, batch)  # warm
    return median_time(lambda: [patient.step(model, opt, batch) for _ in range(STEPS)]) / STEPS


def structure_probe(patient: Patient) -> float:
    ctx = ProbeContext(patient=patient, seconds=60, step_time=0.01, evidence=Evidence())
    return median_time(lambda: Structure().run(ctx))


def checked_step(patient: Patient) -> float:
    model = patient.new_model()
    opt = patient.make_optimizer(model)
    batch = patient.fixed_batch()
    return median_time(lambda: NonFinite._checked_step(patient, model, opt, batch))


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'model':<16}{'step ms':>9}{'structure/step':>16}{'recorder/step':>15}{'checked/step':>14}")
    for name, patient in patients().items():
        step = plain_steps(patient)
        ratios = (structure_probe(patient) / step, plain_steps(patient, recorder=True) / step,
                  checked_step(patient) / step)
        print(f"{name:<16}{step * 1e3:>9.2f}{ratios[0]:>16.1f}{ratios[1]:>15.2f}{ratios[2]:>14.2f}")


if __name__ == "__main__":
    main()

"""The 0.2 set-up keys: scheduler, precision, grad_scaler, data.collate_fn, grad_clip, accumulate.

Good values reach the patient; bad ones exit 2 from the CLI with the key, the file and line, and a hint.
"""

import functools
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.config import load_config
from nandoctor.loading import build_patient
from nandoctor.patient import training_state

NET = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    NOT_CALLABLE = 3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
        def forward(self, x):
            return self.fc(x)

    def data(n=32):
        return TensorDataset(torch.randn(n, 4), torch.randint(0, 3, (n,)))

    def halve_lr(optimizer, every=2):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=0.5)

    def no_scheduler(optimizer):
        return None

    def stack(samples, scale=1.0):
        xs, ys = zip(*samples)
        return torch.stack(xs) * scale, torch.stack(ys)
''')

GOOD = textwrap.dedent('''
    model:
      _target_: net.py:Net
    data:
      train:
        _target_: net.py:data
      batch_size: 8
    loss:
      _target_: torch.nn.CrossEntropyLoss
    optimizer:
      _target_: torch.optim.SGD
      lr: 0.1
''')


def write(tmp_path, extra: str = "", data_extra: str = ""):
    (tmp_path / "net.py").write_text(NET)
    text = GOOD.replace("  batch_size: 8\n", "  batch_size: 8\n" + textwrap.indent(textwrap.dedent(data_extra), "  ")
                        if data_extra else "  batch_size: 8\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text + textwrap.dedent(extra))
    return cfg


def cli(cfg, *extra):
    result = CliRunner().invoke(app, ["diagnose", str(cfg), "--out", str(cfg.parent / "out"), "--budget", "5",
                                      "--probes", "overfit", "-q", *extra])
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def line_of(cfg, key: str) -> int:
    return next(i for i, line in enumerate(cfg.read_text().splitlines(), 1) if line.lstrip().startswith(f"{key}:"))


# --- good values reach the patient ------------------------------------------------------------------


def test_defaults_are_a_plain_fp32_loop(tmp_path):
    patient = build_patient(load_config(write(tmp_path)))
    assert (patient.precision, patient.grad_scaler, patient.grad_clip, patient.accumulate) == ("fp32", True, None, 1)
    assert patient.scheduler is None and patient.collate_fn is None and patient.scheduler_interval == "step"


def test_scheduler_class_with_interval(tmp_path):
    cfg = write(tmp_path, """
        scheduler:
          _target_: torch.optim.lr_scheduler.StepLR
          step_size: 3
          gamma: 0.5
          interval: epoch
    """)
    patient = build_patient(load_config(cfg))
    assert patient.scheduler_interval == "epoch"
    sched = training_state(patient.make_optimizer(patient.new_model())).scheduler
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and (sched.step_size, sched.gamma) == (3, 0.5)


def test_scheduler_factory_from_a_file(tmp_path):
    patient = build_patient(load_config(write(tmp_path, "scheduler: {_target_: net.py:halve_lr, every: 4}\n")))
    assert isinstance(patient.scheduler, functools.partial)
    assert training_state(patient.make_optimizer(patient.new_model())).scheduler.step_size == 4


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_precision(tmp_path, precision):
    patient = build_patient(load_config(write(tmp_path, f"precision: {precision}\n")))
    assert patient.precision == precision
    assert patient.uses_grad_scaler == (precision == "fp16")


def test_grad_scaler_off(tmp_path):
    patient = build_patient(load_config(write(tmp_path, "precision: fp16\ngrad_scaler: false\n")))
    assert not patient.uses_grad_scaler
    assert training_state(patient.make_optimizer(patient.new_model())).scaler is None


def test_grad_scaler_without_fp16_is_accepted_silently(tmp_path):
    result, text = cli(write(tmp_path, "grad_scaler: true\n"))
    assert result.exit_code == 0, text
    assert "'grad_scaler'" not in text and "error" not in text.lower()


def test_collate_fn_is_bound_with_its_keywords(tmp_path):
    cfg = write(tmp_path, data_extra="collate_fn: {_target_: net.py:stack, scale: 0.0}\n")
    patient = build_patient(load_config(cfg))
    assert isinstance(patient.collate_fn, functools.partial)
    inputs, _ = patient.fixed_batch()
    assert torch.count_nonzero(inputs) == 0  # scale 0 came through the user's collate_fn


def test_grad_clip_and_accumulate(tmp_path):
    patient = build_patient(load_config(write(tmp_path, "grad_clip: 2\naccumulate: 4\n")))
    assert patient.grad_clip == 2.0 and isinstance(patient.grad_clip, float) and patient.accumulate == 4


def test_every_key_together_through_the_cli(tmp_path):
    cfg = write(tmp_path, """
        scheduler: {_target_: torch.optim.lr_scheduler.CosineAnnealingLR, T_max: 100}
        precision: bf16
        grad_clip: 1.0
        accumulate: 2
    """, data_extra="collate_fn: {_target_: net.py:stack}\n")
    result, text = cli(cfg)
    assert result.exit_code == 0, text
    import json
    facts = json.loads((tmp_path / "out" / "report.json").read_text())["patient"]
    assert (facts["precision"], facts["scheduler"], facts["grad_clip"], facts["accumulate"], facts["collate_fn"]) == \
        ("bf16", "CosineAnnealingLR", 1.0, 2, "stack")


# --- bad values: exit 2, the key, the file and line, what to do ----------------------------------------


BAD = [
    ("precision", "precision: fp8\n"),
    ("precision", "precision: 16\n"),
    ("grad_scaler", "precision: fp16\ngrad_scaler: 'yes'\n"),
    ("grad_clip", "grad_clip: -1.0\n"),
    ("grad_clip", "grad_clip: 0\n"),
    ("grad_clip", "grad_clip: big\n"),
    ("grad_clip", "grad_clip: true\n"),
    ("accumulate", "accumulate: 0\n"),
    ("accumulate", "accumulate: 1.5\n"),
    ("accumulate", "accumulate: true\n"),
    ("scheduler.interval", "scheduler:\n  _target_: torch.optim.lr_scheduler.StepLR\n  step_size: 1\n  interval: batch\n"),
]


@pytest.mark.parametrize("key, extra", BAD, ids=[f"{k}={e.splitlines()[-1].split(':', 1)[1].strip()}" for k, e in BAD])
def test_bad_scalar_values(tmp_path, key, extra):
    cfg = write(tmp_path, extra)
    result, text = cli(cfg)
    assert result.exit_code == 2, text
    assert "Traceback" not in text and f"'{key}'" in text and "What to do" in text
    assert f"line {line_of(cfg, key.split('.')[-1])}" in text and "config.yaml" in text


SCHEDULER_BAD = [
    ("not callable", "scheduler: {_target_: net.py:NOT_CALLABLE}\n", ["cannot be called", "scheduler"]),
    ("missing argument", "scheduler: {_target_: torch.optim.lr_scheduler.StepLR}\n", ["StepLR", "step_size"]),
    ("unknown argument", "scheduler: {_target_: torch.optim.lr_scheduler.StepLR, step_size: 1, stepsize: 2}\n",
     ["StepLR", "stepsize"]),
    ("no step method", "scheduler: {_target_: net.py:no_scheduler}\n", ["no step() method"]),
    ("does not resolve", "scheduler: {_target_: torch.optim.lr_scheduler.StepLRR, step_size: 1}\n",
     ["scheduler._target_", "'StepLRR' was not found"]),
    ("no target", "scheduler: {step_size: 1}\n", ["'scheduler' has no '_target_'"]),
]


@pytest.mark.parametrize("what, extra, needles", SCHEDULER_BAD, ids=[s[0] for s in SCHEDULER_BAD])
def test_bad_scheduler(tmp_path, what, extra, needles):
    cfg = write(tmp_path, extra)
    result, text = cli(cfg)
    assert result.exit_code == 2, text
    assert "Traceback" not in text and "What to do" in text
    assert "scheduler" in text and f"line {line_of(cfg, 'scheduler')}" in text
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"


@pytest.mark.parametrize("extra, needles", [
    ("collate_fn: {_target_: net.py:stak}\n", ["data.collate_fn._target_", "did you mean 'stack'"]),
    ("collate_fn: {scale: 2}\n", ["'data.collate_fn' has no '_target_'"]),
    ("collate_fn: [1, 2]\n", ["'data.collate_fn' must be a mapping"]),
], ids=["does not resolve", "no target", "not a mapping"])
def test_bad_collate_fn(tmp_path, extra, needles):
    cfg = write(tmp_path, data_extra=extra)
    result, text = cli(cfg)
    assert result.exit_code == 2, text
    assert "Traceback" not in text and "What to do" in text and f"line {line_of(cfg, 'collate_fn')}" in text
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"


# --- data.drop_last: the epoch's last, smaller batch ---------------------------------------------------------
@pytest.mark.parametrize("value, expected", [(None, False), ("true", True), ("false", False)])
def test_drop_last_reaches_the_patient_and_its_loaders(tmp_path, value, expected):
    cfg = write(tmp_path, data_extra=f"drop_last: {value}\n" if value else "")
    patient = build_patient(load_config(cfg))   # 32 samples, batch 8: no partial batch; one of 5 with 36
    assert patient.drop_last is expected and patient.loader().drop_last is expected
    short = type(patient)(**{**patient.__dict__, "train_data": torch.utils.data.TensorDataset(
        torch.randn(36, 4), torch.randint(0, 3, (36,)))})
    assert short.epoch_batches == (4 if expected else 5)


@pytest.mark.parametrize("value", ["yes please", "1", "[true]"])
def test_bad_drop_last(tmp_path, value):
    cfg = write(tmp_path, data_extra=f"drop_last: {value}\n")
    result, text = cli(cfg)
    assert result.exit_code == 2, text
    assert "Traceback" not in text and "'data.drop_last'" in text and "What to do" in text
    assert f"line {line_of(cfg, 'drop_last')}" in text and "drop_last=True" in text

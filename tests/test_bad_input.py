"""Bad input: exit status 2 and one paragraph that names the problem, never a traceback."""

import textwrap

import pytest
from typer.testing import CliRunner

from nandoctor.cli import app

NET = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    class Net(nn.Module):
        def __init__(self, classes=3):
            super().__init__()
            self.fc = nn.Linear(4, classes)
        def forward(self, x):
            return self.fc(x)

    def data(n=32):
        return TensorDataset(torch.randn(n, 4), torch.randint(0, 3, (n,)))

    def empty():
        return TensorDataset(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))

    def broken(n=32):
        raise ValueError("could not open shard 7 of the dataset")

    class Triples(torch.utils.data.Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            return torch.randn(4), 0, "extra"
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
      _target_: torch.optim.Adam
      lr: 1.0e-3
''')


def run(tmp_path, config_text, name="config.yaml"):
    (tmp_path / "net.py").write_text(NET)
    cfg = tmp_path / name
    if config_text is not None:
        cfg.write_text(config_text)
    result = CliRunner().invoke(app, ["diagnose", str(cfg), "--out", str(tmp_path / "out"), "--budget", "10", "-q"])
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def assert_bad_input(result, text, *needles):
    assert result.exit_code == 2, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"


def test_missing_config_file(tmp_path):
    result, text = run(tmp_path, None, name="nope.yaml")
    assert_bad_input(result, text, "nope.yaml", "does not exist")


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    result, text = run(tmp_path, "model:\n  _target_: net.py:Net\n data: [\n")
    assert_bad_input(result, text, "YAML syntax error", "line 3", "column")


def test_missing_required_key(tmp_path):
    result, text = run(tmp_path, GOOD.replace("loss:\n  _target_: torch.nn.CrossEntropyLoss\n", ""))
    assert_bad_input(result, text, "'loss'", "missing", "What to do")


def test_unknown_key_suggests_the_right_one(tmp_path):
    result, text = run(tmp_path, GOOD.replace("optimizer:", "optimiser:"))
    assert_bad_input(result, text, "unknown config key 'optimiser'", "Did you mean 'optimizer'", "line 10")


def test_unknown_data_key(tmp_path):
    result, text = run(tmp_path, GOOD.replace("batch_size: 8", "batchsize: 8"))
    assert_bad_input(result, text, "data.batchsize", "Did you mean 'batch_size'")


@pytest.mark.parametrize("target,needles", [
    ("net.py:Nett", ["'Nett' was not found", "net.py", "Net", "did you mean 'Net'"]),
    ("missing_file.py:Net", ["missing_file.py", "does not exist"]),
    ("torch.nn.Linearr", ["'Linearr' was not found in the module 'torch.nn'", "Linear"]),
    ("nosuchpackage.models.Net", ["no module named 'nosuchpackage'"]),
])
def test_target_that_does_not_resolve(tmp_path, target, needles):
    result, text = run(tmp_path, GOOD.replace("net.py:Net", target))
    assert_bad_input(result, text, "model._target_", *needles)


def test_factory_that_raises_shows_users_message_and_line(tmp_path):
    result, text = run(tmp_path, GOOD.replace("net.py:data", "net.py:broken"))
    assert_bad_input(result, text, "could not open shard 7", "ValueError", "net.py:", "in broken")


def test_empty_dataset(tmp_path):
    result, text = run(tmp_path, GOOD.replace("net.py:data", "net.py:empty"))
    assert_bad_input(result, text, "data.train", "empty")


def test_batch_not_a_pair_without_train_step(tmp_path):
    result, text = run(tmp_path, GOOD.replace("net.py:data", "net.py:Triples"))
    assert_bad_input(result, text, "not an (inputs, targets) pair", "train_step")


def test_wrong_constructor_arguments(tmp_path):
    result, text = run(tmp_path, GOOD.replace("_target_: net.py:Net", "_target_: net.py:Net\n  clases: 3"))
    assert_bad_input(result, text, "clases", "do not fit")


def test_bad_optimizer_settings(tmp_path):
    result, text = run(tmp_path, GOOD.replace("lr: 1.0e-3", "lr: -1"))
    assert_bad_input(result, text, "optimizer", "Adam")


def test_unknown_probe_name(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "config.yaml").write_text(GOOD)
    result = CliRunner().invoke(app, ["diagnose", str(tmp_path / "config.yaml"), "--probes", "overfitt", "-q"])
    assert_bad_input(result, result.output, "overfitt", "choose from")


def test_good_config_is_accepted(tmp_path):
    result, text = run(tmp_path, GOOD)
    assert result.exit_code == 0, text
    assert (tmp_path / "out" / "report.json").exists()

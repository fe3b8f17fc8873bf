"""Bad input, fuzzed: random YAML shapes and values thrown at ``load_config`` and at the CLI.

Every case ends in a loaded config (exit 0) or a ``NandoctorError`` (exit 2) whose message names
the key (or, for the whole file, the file), never a traceback. The shapes include the 0.2 keys
(scheduler, precision, grad_scaler, grad_clip, accumulate, data.collate_fn): until config.py knows
them, "unknown config key" with exit 2 is the accepted answer for them. Each test prints its
counts (run with ``-s`` to see them) and fails on the first traceback.
"""

from __future__ import annotations

import copy
import re
import tempfile
import textwrap
import traceback
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nandoctor.config import load_config
from nandoctor.errors import NandoctorError

KEYS_01 = ("model", "data", "loss", "optimizer", "train_step", "seed", "device")
DATA_01 = ("train", "val", "batch_size", "shuffle", "num_workers")
KEYS_02 = ("scheduler", "precision", "grad_scaler", "grad_clip", "accumulate")
DATA_02 = ("collate_fn",)
FILE_LEVEL = ("config file", "YAML", "the config must be a mapping", "empty", "does not exist")

# targets that are safe to import and call with random arguments (never os.system and the like)
TARGETS = ("net.py:Net", "net.py:data", "net.py:step", "net.py:pad", "net.py:Nope", "missing.py:Net", "net.py",
           "torch.nn.CrossEntropyLoss", "torch.nn.NLLLoss", "torch.nn.MSELoss", "torch.optim.SGD",
           "torch.optim.Adam", "torch.optim:AdamW", "torch.optim.lr_scheduler.StepLR",
           "torch.optim.lr_scheduler.OneCycleLR", "torch.nn.Linear", "torch.nn.functional.cross_entropy",
           "nandoctor.datasets.CSVDataset", "no.such.module.Thing", "torch.optim.NoSuchOptim", "math.pi", "",
           "  ", "net.py:Net:extra", ":", "torch..optim")

NET = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def _small_int(value, name):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
            raise ValueError(f"{name} must be a whole number from 1 to 64, not {value!r}")
        return value

    class Net(nn.Module):
        def __init__(self, classes=3):
            super().__init__()
            self.fc = nn.Linear(4, _small_int(classes, "classes"))
        def forward(self, x):
            return self.fc(x)

    def data(n=32, split="train"):
        n = _small_int(n, "n")
        return TensorDataset(torch.randn(n, 4), torch.randint(0, 3, (n,)))

    def step(model, batch, loss_fn, optimizer):
        optimizer.zero_grad()
        loss = loss_fn(model(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        return loss

    def pad(samples):
        return torch.utils.data.default_collate(samples)
''')

BASE = {
    "model": {"_target_": "net.py:Net", "classes": 3},
    "data": {"train": {"_target_": "net.py:data"}, "val": {"_target_": "net.py:data", "split": "val"},
             "batch_size": 8, "shuffle": True, "num_workers": 0},
    "loss": {"_target_": "torch.nn.CrossEntropyLoss"},
    "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1},
    "seed": 0,
    "device": "cpu",
}

# --- strategies -----------------------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(TARGETS),
    st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:7", "mps", "tpu", "bf16", "fp16", "fp32", "step",
                     "epoch", "true", "null", "~", "1e-3", "0x10", "<script>", "ä∑", "a" * 300]),
    st.text(max_size=12))
keys = st.one_of(st.sampled_from(KEYS_01 + KEYS_02 + DATA_01 + DATA_02 + ("_target_", "lr", "interval")),
                 st.text(min_size=1, max_size=8), st.integers(-3, 3))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(keys, inner, max_size=4),
    st.fixed_dictionaries({"_target_": st.sampled_from(TARGETS)}, optional={"lr": inner, "classes": inner,
                                                                           "n": inner, "interval": inner})),
    max_leaves=8)

valid_02 = {
    "scheduler": st.fixed_dictionaries({"_target_": st.sampled_from(["torch.optim.lr_scheduler.StepLR"]),
                                        "step_size": st.integers(1, 5)},
                                       optional={"interval": st.sampled_from(["step", "epoch"])}),
    "precision": st.sampled_from(["fp32", "bf16", "fp16"]),
    "grad_scaler": st.booleans(),
    "grad_clip": st.floats(0.1, 10.0),
    "accumulate": st.integers(1, 8),
}


plausible = {  # values a user could mean, for each key: they reach the loading of the objects
    "model": st.fixed_dictionaries({"_target_": st.just("net.py:Net")}, optional={"classes": st.integers(-1, 80)}),
    "train": st.fixed_dictionaries({"_target_": st.sampled_from(["net.py:data", "net.py:Net"])},
                                   optional={"n": st.integers(0, 80), "split": st.text(max_size=4)}),
    "val": st.one_of(st.none(), st.fixed_dictionaries({"_target_": st.just("net.py:data")},
                                                      optional={"n": st.integers(0, 80)})),
    "batch_size": st.integers(-1, 10 ** 6), "shuffle": st.booleans(), "num_workers": st.integers(-1, 0),
    "loss": st.sampled_from(["torch.nn.CrossEntropyLoss", "torch.nn.NLLLoss", "torch.nn.MSELoss",
                             "torch.nn.functional.cross_entropy", "torch.optim.SGD", "net.py:Net"]),
    "optimizer": st.fixed_dictionaries({"_target_": st.sampled_from(["torch.optim.SGD", "torch.optim.Adam",
                                                                     "torch.nn.MSELoss"])},
                                       optional={"lr": st.floats(allow_nan=True), "momentum": st.floats(-1, 2),
                                                 "betas": st.lists(st.floats(0, 1), max_size=3)}),
    "train_step": st.sampled_from(["net.py:step", "net.py:data", "torch.optim.SGD"]),
    "seed": st.integers(0, 2 ** 33), "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:3", "mps"]),
}


@st.composite
def config_docs(draw):
    """A config document: the valid base with keys dropped, replaced, added (0.2 keys included), or pure noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(values)  # any YAML at all: a list, a number, a string, nested noise
    doc = copy.deepcopy(BASE)
    # the 0.2 keys, in a quarter of the cases (until config.py knows them they end the validation early)
    if draw(st.integers(0, 3)) == 0:
        for key in draw(st.lists(st.sampled_from(KEYS_02), unique=True, min_size=1, max_size=3)):
            doc[key] = draw(valid_02[key]) if draw(st.booleans()) else draw(values)
        if draw(st.booleans()):
            doc["data"]["collate_fn"] = draw(st.one_of(st.just({"_target_": "net.py:pad"}), values))
    for _ in range(draw(st.integers(1, 3))):  # mutations, mostly of the keys that exist
        where = doc["data"] if isinstance(doc.get("data"), dict) and draw(st.booleans()) else doc
        action = draw(st.sampled_from(["drop", "set", "set", "set", "set", "set", "set", "nest", "nest", "add"]))
        key = draw(st.sampled_from(sorted(map(str, where)) or ["model"]))
        if action == "drop":
            where.pop(key, None)
        elif action == "set" and key in plausible and draw(st.booleans()):
            where[key] = draw(plausible[key])
        elif action == "set":
            where[key] = draw(st.one_of(st.none(), scalars, values))
        elif action == "nest" and isinstance(where.get(key), dict) and "_target_" in where[key]:
            where[key][draw(st.one_of(st.sampled_from(["classes", "n", "lr", "split", "reduction"]), keys))] = \
                draw(values)  # a keyword argument for the user's object
        else:
            where[draw(keys)] = draw(values)
    return doc


@st.composite
def config_texts(draw):
    """YAML text: a dumped document, sometimes damaged (syntax errors, tabs, tags, anchors, truncation)."""
    text = yaml.safe_dump(draw(config_docs()), sort_keys=False, allow_unicode=True)
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "insert", "tag", "anchor", "tab"]))
    if damage == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif damage == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([":", "- ", "[", "{", "'", '"', "&a ", "*a", "\n  ", "%", "@"])) \
            + text[at:]
    elif damage == "tag":
        text += draw(st.sampled_from(["extra: !!python/object/apply:os.getcwd []\n", "seed: !!float 1\n",
                                      "model: !custom {x: 1}\n", "seed: !!binary aGk=\n"]))
    elif damage == "anchor":  # the optimizer's block shared (and, once in a while, made to contain itself)
        text = text.replace("optimizer:", "optimizer: &o", 1) + draw(st.sampled_from(
            ["train_step: *o\n", "loss: *o\n", "seed: *o\n", "extra: &l [*l]\n"]))
    elif damage == "tab":
        text = text.replace("  ", "\t", 1)
    return text


# --- the checks -------------------------------------------------------------------------------------------------
def names_a_key(message: str) -> bool:
    """The one paragraph names the key involved ('model', 'data.batch_size', key '...'), or the file itself."""
    return bool(re.search(r"'[^']+'", message)) or any(w in message for w in FILE_LEVEL)


def classify_load(text: str, folder: Path) -> str:
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
        return "exit 0"
    except NandoctorError as exc:
        message = exc.render()
        assert names_a_key(message), message
        assert "Traceback" not in message
        return "exit 2"


def test_load_config_answers_every_document_with_a_config_or_a_named_key(capsys):
    counts: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(text=config_texts())
        def check(text):
            counts["cases"] += 1
            try:
                counts[classify_load(text, folder)] += 1
            except AssertionError:
                raise
            except Exception:
                counts["tracebacks"] += 1
                raise AssertionError(f"traceback for:\n{text}\n{traceback.format_exc()}")

        check()
    with capsys.disabled():
        print(f"\nload_config fuzz: {dict(counts)}")
    assert counts["tracebacks"] == 0 and counts["cases"] >= 100
    assert counts["exit 0"] > 0 and counts["exit 2"] > 0  # both answers happen: the fuzz reaches valid configs


@pytest.fixture
def cli_case(tmp_path, monkeypatch):
    """Run the CLI in-process on a config text; the battery runs no probe (loading and validation only)."""
    from nandoctor import pipeline
    from nandoctor.cli import app

    monkeypatch.setattr(pipeline, "select_probes", lambda requested: {})
    (tmp_path / "net.py").write_text(NET)
    runner = CliRunner()

    def run(text: str) -> tuple[int, str]:
        (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
        result = runner.invoke(app, ["diagnose", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "out"),
                                     "--budget", "5", "-q"])
        output = result.output + (result.stderr if result.stderr_bytes is not None else "")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            output += "".join(traceback.format_exception(result.exception))
        return result.exit_code, output
    return run


def test_the_cli_answers_every_config_with_exit_0_or_2_never_a_traceback(cli_case, capsys):
    counts: Counter = Counter()

    @settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(doc=config_docs())
    def check(doc):
        counts["cases"] += 1
        code, output = cli_case(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        if code not in (0, 2) or "Traceback" in output:
            counts["tracebacks"] += 1
            raise AssertionError(f"exit {code} for:\n{yaml.safe_dump(doc)}\n{output}")
        counts[f"exit {code}"] += 1
        if code == 2:
            if "unknown config key" in output and any(f"'{k}'" in output or f"'data.{k}'" in output
                                                      for k in KEYS_02 + DATA_02):
                counts["exit 2 (a 0.2 key not known yet)"] += 1
            assert names_a_key(output), output

    check()
    with capsys.disabled():
        print(f"\nCLI fuzz: {dict(counts)}")
    assert counts["tracebacks"] == 0 and counts["exit 0"] > 0 and counts["exit 2"] > 0


@pytest.mark.parametrize("text, needle", [
    ("model: null\ndata: {train: net.py:data}\nloss: torch.nn.MSELoss\noptimizer: torch.optim.SGD\n", "'model'"),
    ("model: net.py:Net\ndata: {train: net.py:data}\nloss: torch.nn.CrossEntropyLoss\n"
     "optimizer: {_target_: torch.optim.SGD, lr: 0.1}\nseed: 18446744073709551616\n", "'seed'"),
    ("model: net.py:Net\ndata: {train: net.py:data}\nloss: torch.nn.CrossEntropyLoss\n"
     "optimizer: {_target_: torch.optim.SGD, lr: 0.1}\ndevice: cuda:7\n", "device"),
    ("model: &m {_target_: net.py:Net, more: *m}\ndata: {train: net.py:data}\nloss: torch.nn.CrossEntropyLoss\n"
     "optimizer: torch.optim.SGD\n", "'model.more'"),
])
def test_fuzz_finds_stay_fixed(cli_case, text, needle):
    code, output = cli_case(text)
    assert code == 2 and "Traceback" not in output and needle in output, output


def test_a_billion_laughs_config_is_answered_quickly(tmp_path):
    import time

    lines = ["a0: &a0 {x: 1, y: 1}"] + [f"a{i}: &a{i} {{x: *a{i - 1}, y: *a{i - 1}}}" for i in range(1, 40)]
    (tmp_path / "config.yaml").write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(NandoctorError):
        load_config(tmp_path / "config.yaml")
    assert time.perf_counter() - start < 2

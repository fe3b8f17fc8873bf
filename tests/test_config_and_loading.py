"""Config validation and the three `_target_` forms."""

from pathlib import Path

import pytest
import torch

from nandoctor.config import load_config
from nandoctor.errors import LoadError
from nandoctor.loading import build_patient, resolve_target

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_example_config_loads_and_steps(name):
    patient = build_patient(load_config(ROOT / "configs" / name))
    model = patient.new_model()
    loss = patient.step(model, patient.make_optimizer(model), patient.fixed_batch())
    assert torch.isfinite(loss)


def test_three_target_forms(tmp_path):
    (tmp_path / "m.py").write_text("class Thing:\n    pass\n")
    assert resolve_target("torch.optim.Adam", tmp_path) is torch.optim.Adam
    assert resolve_target("torch.optim:Adam", tmp_path) is torch.optim.Adam
    assert resolve_target("m.py:Thing", tmp_path).__name__ == "Thing"
    assert resolve_target("m.py:Thing", tmp_path) is resolve_target("./m.py:Thing", tmp_path)
    with pytest.raises(LoadError, match="names a file"):
        resolve_target("m.py", tmp_path)


def test_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("model: m.py:M\ndata:\n  train: m.py:d\nloss: torch.nn.MSELoss\n"
                                     "optimizer: torch.optim.SGD\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.batch_size, cfg.shuffle, cfg.seed, cfg.device) == (32, True, 0, "auto")
    assert cfg.model_spec == {"_target_": "m.py:M"}

"""Shared fixtures. Tests are tiny sick patients: see tests/patients.py."""

import pytest
import torch

torch.set_num_threads(1)  # two cores on CI; keep tests from fighting over them


@pytest.fixture
def out(tmp_path):
    return tmp_path / "report"

"""nandoctor.datasets.CSVDataset, the example CSV config, and CSV patients end to end through a config."""

from pathlib import Path

import pandas as pd
import pytest
import torch

import nandoctor
from nandoctor.config import load_config
from nandoctor.datasets import CSVDataset
from nandoctor.errors import DataError
from nandoctor.loading import build_patient

ROOT = Path(__file__).resolve().parents[1]


def frame(n=120, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return pd.DataFrame({"a": x[:, 0].numpy(), "b": x[:, 1].numpy(), "c": x[:, 2].numpy(), "label": y.numpy()})


def test_missing_values_are_kept_and_integer_labels_are_long(tmp_path):
    df = frame()
    df.loc[[3, 50], "b"] = None
    df.to_csv(tmp_path / "d.csv", index=False)
    ds = CSVDataset(tmp_path / "d.csv", target_column="label")
    x, y = ds[3]
    assert torch.isnan(x[1]) and x.shape == (3,) and y.dtype == torch.long and y.shape == ()
    assert ds.feature_names == ["a", "b", "c"] and ds.index_columns == []


def test_float_target_is_a_column_vector(tmp_path):
    frame().to_csv(tmp_path / "d.csv", index=False)
    ds = CSVDataset(tmp_path / "d.csv", target_column="a")
    assert ds[0][1].shape == (1,) and ds[0][1].dtype == torch.float32
    assert CSVDataset(tmp_path / "d.csv", target_column="label", target_dtype="float")[0][1].dtype == torch.float32


def test_saved_index_is_named(tmp_path):
    frame().to_csv(tmp_path / "d.csv")  # with the index: it comes back as 'Unnamed: 0'
    ds = CSVDataset(tmp_path / "d.csv", target_column="label")
    assert ds.index_columns == ["Unnamed: 0"] and ds.feature_names[0] == "Unnamed: 0"
    assert CSVDataset(tmp_path / "d.csv", target_column="label", feature_columns=["a", "b"]).index_columns == []


def test_non_numeric_columns_are_refused_by_name(tmp_path):
    df = frame()
    df["city"] = ["Oslo", "Riga"] * 60
    df.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match=r"non-numeric column\(s\): city \("):
        CSVDataset(tmp_path / "d.csv", target_column="label")
    with pytest.raises(DataError, match="no column"):
        CSVDataset(tmp_path / "d.csv", target_column="nope")


def test_example_csv_config_loads_relative_to_its_folder():
    patient = build_patient(load_config(ROOT / "configs" / "csv.yaml"))
    ds = patient.train_data
    assert isinstance(ds, CSVDataset) and len(ds) == 180
    assert ds.feature_names == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    x, y = ds[0]
    assert x.shape == (4,) and y.dtype == torch.long


def test_example_csv_config_is_healthy_for_the_data_scan():
    report = nandoctor.diagnose(ROOT / "configs" / "csv.yaml", probes=["data_scan"], budget=8)
    assert report.probes["data_scan"].metrics["samples_scanned"] == 180
    assert not [f for f in report.findings if f.severity in ("warning", "critical")]


def test_csv_saved_with_its_index_ranks_csv_index_column_first(tmp_path):
    frame(n=400).to_csv(tmp_path / "train.csv")
    (tmp_path / "config.yaml").write_text(
        "model: {_target_: torch.nn.Linear, in_features: 4, out_features: 3}\n"
        "data:\n  train: {_target_: nandoctor.datasets.CSVDataset, path: train.csv, target_column: label}\n"
        "loss: torch.nn.CrossEntropyLoss\noptimizer: {_target_: torch.optim.SGD, lr: 0.01}\n")
    report = nandoctor.diagnose(tmp_path / "config.yaml", probes=["data_scan"], budget=8)
    top = report.findings[0]
    assert top.code == "csv-index-column" and top.severity == "critical"
    assert top.evidence["columns"][0]["name"] == "Unnamed: 0"

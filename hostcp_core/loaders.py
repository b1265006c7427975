"""Read datasets from CSV, Parquet, NumPy .npz and LIBSVM/svmlight files."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hostcp_core.data import Dataset, check_compatible, make_dataset, validate_train
from hostcp_core.errors import DataError

FORMATS = ("csv", "parquet", "npz", "libsvm")
_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
             ".npz": "npz", ".svm": "libsvm", ".libsvm": "libsvm", ".svmlight": "libsvm"}
DEFAULT_LABEL_COLUMNS = ("label", "y", "target", "class")
DEFAULT_ID_COLUMN = "id"


def detect_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(f"{path}: cannot tell the format from the suffix {suffix!r}; "
                        f"use one of {', '.join(FORMATS)}")
    return _SUFFIXES[suffix]


def load_dataset(
    path: str | os.PathLike,
    *,
    label_column: str | None = None,
    id_column: str | None = None,
    format: str | None = None,
    classes: Sequence[str] | None = None,
    n_features: int | None = None,
    name: str | None = None,
) -> Dataset:
    """Load one labelled table.

    CSV/Parquet: the label is ``label_column`` or else the first of
    ``label, y, target, class`` present, or else the last column; ``id_column`` (default: a
    column named ``id``, if any) holds row identifiers, not features.
    NPZ: arrays ``X`` and ``y`` (optional ``ids``, ``feature_names``); never unpickles.
    LIBSVM: ``n_features`` pads to the training width. ``classes`` encodes labels against a
    training set's classes (unknown labels are an error).
    """
    path = Path(path)
    name = name or path.name
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"{name}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{name}: the file is empty")
    if fmt == "npz":
        return _load_npz(path, classes, name)
    if fmt == "libsvm":
        return _load_libsvm(path, classes, n_features, name)
    return _load_table(path, fmt, label_column, id_column, classes, name)


def load_train_test(
    train_path: str | os.PathLike, test_path: str | os.PathLike, **kwargs
) -> tuple[Dataset, Dataset]:
    """Load a training and a test file, encode both alike and check that they match."""
    train = validate_train(load_dataset(train_path, **kwargs))
    test = load_dataset(test_path, classes=train.classes, n_features=train.n_features, **kwargs)
    check_compatible(train, test)
    return train, test


def _load_table(path, fmt, label_column, id_column, classes, name) -> Dataset:
    import pandas as pd

    if fmt == "csv":
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        _check_not_ragged(path, sep, name)
        try:
            df = pd.read_csv(path, sep=sep)
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{name}: not a readable CSV ({_first_line(exc)})") from None
    else:
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise DataError(f"{name}: not a readable Parquet file ({_first_line(exc)})") from None
    if df.shape[0] == 0:
        raise DataError(f"{name}: no rows")
    df.columns = [str(c) for c in df.columns]
    label_column = _pick_label_column(df.columns, label_column, name)
    if id_column is None and DEFAULT_ID_COLUMN in df.columns and label_column != "id":
        id_column = DEFAULT_ID_COLUMN
    if id_column is not None and id_column not in df.columns:
        raise DataError(f"{name}: no id column {id_column!r}")
    labels = df[label_column].to_numpy()
    if pd.isna(df[label_column]).any():
        raise DataError(f"{name}: missing labels in column {label_column!r}")
    ids = df[id_column].to_numpy() if id_column else None
    feats = df.drop(columns=[c for c in (label_column, id_column) if c])
    non_numeric = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
    if non_numeric:
        raise DataError(f"{name}: non-numeric feature column(s) "
                        f"{', '.join(map(repr, non_numeric[:3]))}")
    return make_dataset(feats.to_numpy(dtype=np.float64), labels, classes=classes, ids=ids,
                        feature_names=list(feats.columns), name=name)


def _check_not_ragged(path: Path, sep: str, name: str) -> None:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter=sep)
            header = next(reader, None)
            if not header:
                raise DataError(f"{name}: the file is empty")
            for row in reader:
                if row and len(row) != len(header):
                    raise DataError(f"{name}: ragged rows: line {reader.line_num} has {len(row)} "
                                    f"fields, the header has {len(header)}")
    except UnicodeDecodeError:
        raise DataError(f"{name}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"{name}: not a readable CSV ({exc})") from None


def _pick_label_column(columns: Sequence[str], label_column: str | None, name: str) -> str:
    if len(columns) < 2:
        raise DataError(f"{name}: needs at least one feature column and a label column")
    if label_column is not None:
        if label_column not in columns:
            raise DataError(f"{name}: no label column {label_column!r} "
                            f"(columns: {', '.join(list(columns)[:8])})")
        return label_column
    for cand in DEFAULT_LABEL_COLUMNS:
        if cand in columns:
            return cand
    return columns[-1]


def _load_npz(path: Path, classes, name) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if not {"X", "y"} <= keys:
                raise DataError(f"{name}: an .npz needs arrays 'X' and 'y' (found "
                                f"{', '.join(sorted(keys)) or 'none'})")
            X, y = npz["X"], npz["y"]
            ids = npz["ids"] if "ids" in keys else None
            fnames = list(npz["feature_names"]) if "feature_names" in keys else None
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickle: refused
        raise DataError(f"{name}: refused ({_first_line(exc)})") from None
    except Exception as exc:
        raise DataError(f"{name}: not a readable .npz ({_first_line(exc)})") from None
    if X.dtype.kind not in "biuf":
        raise DataError(f"{name}: X must be numeric, got dtype {X.dtype}")
    return make_dataset(X, y, classes=classes, ids=ids, feature_names=fnames, name=name)


def _load_libsvm(path: Path, classes, n_features, name) -> Dataset:
    from sklearn.datasets import load_svmlight_file

    try:
        X, y = load_svmlight_file(str(path), n_features=n_features)
    except Exception as exc:
        raise DataError(f"{name}: not a readable LIBSVM file ({_first_line(exc)})") from None
    return make_dataset(X.toarray(), y, classes=classes, name=name)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]

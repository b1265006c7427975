"""Read datasets from CSV, Parquet, NumPy .npz and LIBSVM/svmlight files."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hostcp_core.data import (
    Dataset,
    _label_str,
    check_compatible,
    make_dataset,
    validate_train,
)
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


# --- streamed parsing (bounded memory) --------------------------------------------------------
# load_dataset reads a whole table into pandas (about 10x the file in memory at peak). The
# service parses CSV and Parquet uploads with pyarrow's streaming readers instead: one batch of
# rows at a time, each validated like load_dataset validates the whole table, so a consumer can
# write the batches out and keep only the running totals.

STREAM_FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class TableBatch:
    """Consecutive rows: float32 features (finite), labels as codes into the batch's own
    ``label_values`` (strings, as load_dataset would name the classes), ids as strings."""

    X: np.ndarray
    label_codes: np.ndarray
    label_values: list[str]
    ids: np.ndarray | None


class TableStream:
    """A CSV or Parquet table read batch by batch (iterate it once).

    ``feature_names``, ``label_column`` and ``id_column`` are known on construction (from the
    header or the Parquet schema); the batches are parsed while iterating, and any problem is a
    ``DataError`` worded like load_dataset's. CSV labels arrive as text: pass the distinct
    labels to ``class_names`` for the names pandas' type inference would give them.
    """

    def __init__(self, path: str | os.PathLike, *, format: str | None = None,
                 label_column: str | None = None, id_column: str | None = None,
                 name: str | None = None, batch_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self.format = format or detect_format(self.path)
        if self.format not in STREAM_FORMATS:
            raise DataError(f"{self.name}: {self.format} is not read as a stream")
        if not self.path.is_file():
            raise DataError(f"{self.name}: no such file")
        if self.path.stat().st_size == 0:
            raise DataError(f"{self.name}: the file is empty")
        self._batch_bytes = batch_bytes
        columns = self._csv_header() if self.format == "csv" else self._parquet_schema()
        self.columns = columns
        self.label_column = _pick_label_column(columns, label_column, self.name)
        if id_column is None and DEFAULT_ID_COLUMN in columns and self.label_column != "id":
            id_column = DEFAULT_ID_COLUMN
        if id_column is not None and id_column not in columns:
            raise DataError(f"{self.name}: no id column {id_column!r}")
        self.id_column = id_column
        self._label_pos = columns.index(self.label_column)
        self._id_pos = columns.index(id_column) if id_column else None
        self._feature_pos = [i for i in range(len(columns))
                             if i not in (self._label_pos, self._id_pos)]
        self.feature_names = [columns[i] for i in self._feature_pos]
        self.n_rows = 0

    @property
    def n_features(self) -> int:
        return len(self._feature_pos)

    # -- headers --

    def _csv_header(self) -> list[str]:
        self._sep = "\t" if self.path.suffix.lower() == ".tsv" else ","
        try:
            with open(self.path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh, delimiter=self._sep), None)
        except UnicodeDecodeError:
            raise DataError(f"{self.name}: not UTF-8 text") from None
        except csv.Error as exc:
            raise DataError(f"{self.name}: not a readable CSV ({exc})") from None
        if not header:
            raise DataError(f"{self.name}: the file is empty")
        return _dedupe(header)

    def _parquet_schema(self) -> list[str]:
        import pyarrow.parquet as pq

        try:
            # buffered column reads, no pre-buffering: a batch, not a row group, in memory
            self._pq = pq.ParquetFile(self.path, buffer_size=1 << 20, pre_buffer=False)
            schema = self._pq.schema_arrow
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise DataError(f"{self.name}: not a readable Parquet file "
                            f"({_first_line(exc)})") from None
        return [str(c) for c in schema.names]

    # -- batches --

    def __iter__(self):
        if self.format == "parquet":
            self._check_parquet_types()
        batches = self._csv_batches() if self.format == "csv" else self._parquet_batches()
        for rb in batches:
            if rb.num_rows:
                yield self._convert(rb)
        if self.n_rows == 0:
            raise DataError(f"{self.name}: no rows")

    def _csv_batches(self):
        import pyarrow as pa
        import pyarrow.csv as pcsv

        types = {c: pa.float64() for c in self.columns}
        types[self.label_column] = pa.string()
        if self.id_column:
            types[self.id_column] = pa.string()
        try:
            reader = pcsv.open_csv(
                self.path,
                # one block in flight: parallel parsing would keep several (~40x block_size)
                read_options=pcsv.ReadOptions(column_names=self.columns, skip_rows=1,
                                              block_size=self._batch_bytes, use_threads=False),
                parse_options=pcsv.ParseOptions(delimiter=self._sep, newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(column_types=types,
                                                    strings_can_be_null=True))
            yield from reader
        except Exception as exc:
            raise DataError(self._csv_problem(exc)) from None

    def _csv_problem(self, exc: BaseException) -> str:
        msg = _first_line(exc)
        if "Expected" in msg and "columns" in msg:
            return f"{self.name}: ragged rows ({msg})"
        if "conversion error to double" in msg:
            col = self._column_of(msg)
            return (f"{self.name}: non-numeric feature column(s) "
                    f"{col!r}" if col else f"{self.name}: non-numeric feature values ({msg})")
        if "UTF8" in msg or "UTF-8" in msg:
            return f"{self.name}: not UTF-8 text"
        return f"{self.name}: not a readable CSV ({msg})"

    def _column_of(self, msg: str) -> str | None:
        import re

        m = re.search(r"column #(\d+)", msg)
        k = int(m.group(1)) if m else -1
        return self.columns[k] if 0 <= k < len(self.columns) else None

    def _check_parquet_types(self) -> None:
        import pyarrow as pa

        schema = self._pq.schema_arrow
        bad = [self.columns[i] for i in self._feature_pos
               if not _numeric_arrow(schema.field(i).type, pa)]
        if bad:
            raise DataError(f"{self.name}: non-numeric feature column(s) "
                            f"{', '.join(map(repr, bad[:3]))}")

    def _parquet_batches(self):
        rows = max(1024, self._batch_bytes // max(8 * len(self.columns), 1))
        try:
            yield from self._pq.iter_batches(batch_size=rows, use_threads=False)
        except Exception as exc:
            raise DataError(f"{self.name}: not a readable Parquet file "
                            f"({_first_line(exc)})") from None

    def _convert(self, rb) -> TableBatch:
        import pyarrow as pa
        import pyarrow.compute as pc

        start = self.n_rows
        n = rb.num_rows
        X = np.empty((n, self.n_features), dtype=np.float32)
        for j, i in enumerate(self._feature_pos):
            col = rb.column(i)
            if pa.types.is_null(col.type):
                col = pa.array(np.full(n, np.nan))
            elif not pa.types.is_floating(col.type):
                col = pc.cast(col, pa.float64())
            # nulls become NaN, refused below like any non-finite value
            X[:, j] = col.to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(X)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(f"{self.name}: NaN/inf feature values (first at row {start + r}, "
                            f"column {c})")
        labels = rb.column(self._label_pos)
        if labels.null_count:
            raise DataError(f"{self.name}: missing labels in column {self.label_column!r}")
        enc = pc.dictionary_encode(labels) if not pa.types.is_dictionary(labels.type) else labels
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        values = [_label_str(v) for v in enc.dictionary.to_pylist()]
        ids = None
        if self._id_pos is not None:
            col = rb.column(self._id_pos)
            if pa.types.is_dictionary(col.type):
                col = col.dictionary_decode()
            # a missing id reads as pandas' NaN did
            ids = np.asarray(pc.fill_null(pc.cast(col, pa.string()), "nan")
                             .to_numpy(zero_copy_only=False), dtype=str)
        self.n_rows += n
        return TableBatch(X, codes, values, ids)

    def class_names(self, labels: Sequence[str]) -> dict[str, str]:
        """The class name of each distinct label. Parquet labels are typed and already named;
        CSV labels are text, named as pandas would have typed the column: all integers or
        floats → numbers (``1.0`` and ``01`` are class ``1``), all true/false → booleans,
        anything else → the text as written."""
        if self.format != "csv":
            return {s: s for s in labels}
        return _csv_class_names(labels)


def _csv_class_names(labels: Sequence[str]) -> dict[str, str]:
    if all(s.strip().lower() in ("true", "false") for s in labels):
        return {s: str(s.strip().lower() == "true") for s in labels}
    out = {}
    for s in labels:
        try:
            out[s] = str(int(s))
            continue
        except ValueError:
            pass
        try:
            out[s] = _label_str(float(s))
        except ValueError:
            return {s: s for s in labels}  # one non-number: pandas keeps every label as text
    return out


def _numeric_arrow(t, pa) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_decimal(t) or pa.types.is_null(t))


def _dedupe(header: Sequence[str]) -> list[str]:
    """Column names made unique as pandas does (``a``, ``a.1``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for col in header:
        base, k = col, seen.get(col, 0)
        while col in seen:
            k += 1
            col = f"{base}.{k}"
        seen[base] = k
        seen[col] = 0
        out.append(col)
    return out


def stream_dataset(path: str | os.PathLike, **kwargs) -> Dataset:
    """load_dataset's result built from TableStream's batches (same checks, bounded peak while
    parsing); for tests and small tables."""
    stream = TableStream(path, **kwargs)
    Xs, labels, ids = [], [], []
    for b in stream:
        Xs.append(b.X)
        labels.append(np.asarray(b.label_values, dtype=object)[b.label_codes])
        ids.append(b.ids)
    raw = np.concatenate(labels)
    names = stream.class_names(sorted(set(raw)))
    return make_dataset(np.concatenate(Xs), np.asarray([names[s] for s in raw], dtype=object),
                        ids=None if stream.id_column is None else np.concatenate(ids),
                        feature_names=stream.feature_names, name=stream.name)

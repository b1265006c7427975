"""The Dataset container and its validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hostcp_core.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Features, integer-encoded labels and the class names they stand for.

    ``X`` is float32 (n, d); ``y`` is int64 in ``range(len(classes))``; ``classes[k]`` is the
    original label of code ``k``. ``ids`` are optional user identifiers, one per row.
    """

    X: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    ids: np.ndarray | None = None
    feature_names: tuple[str, ...] | None = None
    name: str = "dataset"
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.n

    def subset(self, idx: np.ndarray | Sequence[int], name: str | None = None) -> Dataset:
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(
            X=self.X[idx],
            y=self.y[idx],
            classes=self.classes,
            ids=None if self.ids is None else self.ids[idx],
            feature_names=self.feature_names,
            name=name or self.name,
        )

    def with_labels(self, y: np.ndarray) -> Dataset:
        return Dataset(self.X, np.asarray(y, dtype=np.int64), self.classes, self.ids,
                       self.feature_names, self.name)

    def label_names(self, codes: np.ndarray | None = None) -> np.ndarray:
        codes = self.y if codes is None else codes
        return np.asarray(self.classes, dtype=object)[codes]


def make_dataset(
    X: np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    classes: Sequence[str] | None = None,
    ids: Sequence | np.ndarray | None = None,
    feature_names: Sequence[str] | None = None,
    name: str = "dataset",
) -> Dataset:
    """Build a validated Dataset from raw labels (any hashable values).

    With ``classes`` given, labels are encoded against it (a label not in it is an error);
    otherwise classes are the sorted distinct labels.
    """
    X = _as_feature_matrix(X, name)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != X.shape[0]:
        raise DataError(f"{name}: {X.shape[0]} feature rows but {labels.shape[0]} labels")
    str_labels = np.array([_label_str(v) for v in labels], dtype=object)
    if classes is None:
        classes = tuple(sorted(set(str_labels), key=_class_sort_key))
    else:
        classes = tuple(str(c) for c in classes)
    code = {c: k for k, c in enumerate(classes)}
    unknown = sorted({s for s in str_labels if s not in code})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise DataError(f"{name}: labels not seen in the training set: {shown}")
    y = np.fromiter((code[s] for s in str_labels), dtype=np.int64, count=len(str_labels))
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (X.shape[0],):
            raise DataError(f"{name}: {len(ids)} ids for {X.shape[0]} rows")
    ds = Dataset(X, y, classes, ids,
                 None if feature_names is None else tuple(str(f) for f in feature_names), name)
    return ds


def validate_train(ds: Dataset) -> Dataset:
    """Checks a training set must pass: enough rows, at least two classes present."""
    if ds.n < 2:
        raise DataError(f"{ds.name}: needs at least 2 rows, has {ds.n}")
    present = np.unique(ds.y)
    if present.size < 2:
        raise DataError(f"{ds.name}: a single class ({ds.classes[present[0]]!r}); "
                        "valuation needs at least two")
    return ds


def check_compatible(train: Dataset, test: Dataset) -> None:
    """Test features must match training features; test labels must be training classes."""
    if test.n_features != train.n_features:
        raise DataError(f"{test.name}: {test.n_features} features, but the training set "
                        f"{train.name} has {train.n_features}")
    if (train.feature_names and test.feature_names
            and tuple(train.feature_names) != tuple(test.feature_names)):
        diff = [f for f in test.feature_names if f not in set(train.feature_names)][:3]
        raise DataError(f"{test.name}: feature columns differ from the training set's "
                        f"(e.g. {', '.join(map(repr, diff)) or 'their order'})")
    if tuple(test.classes) != tuple(train.classes):
        raise DataError(f"{test.name}: its classes are not encoded like the training set's; "
                        "load it with classes=train.classes")


def _as_feature_matrix(X: np.ndarray, name: str) -> np.ndarray:
    try:
        X = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: features are not all numeric ({exc})") from None
    if X.ndim != 2:
        raise DataError(f"{name}: features must be a 2-d table, got shape {X.shape}")
    if X.shape[0] == 0:
        raise DataError(f"{name}: no rows")
    if X.shape[1] == 0:
        raise DataError(f"{name}: no feature columns")
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{name}: {int(bad.sum())} NaN/inf feature values (first at row {r}, "
                        f"column {c})")
    return np.ascontiguousarray(X)


def _label_str(v) -> str:
    # 1.0 and 1 name the same class in a CSV read as floats
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


def _class_sort_key(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def split_test(test: Dataset, holdout_fraction: float = 0.3, *, seed: int = 0
               ) -> tuple[Dataset, Dataset]:
    """Split a test set into the part that drives valuation and a disjoint held-out part used only
    to evaluate subsets, stratified by class, so results are not measured on the data that chose
    them. Returns ``(valuation_part, holdout_part)``."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    rng = np.random.default_rng(seed)
    hold = []
    for c in np.unique(test.y):
        rows = np.flatnonzero(test.y == c)
        rng.shuffle(rows)
        hold.append(rows[: int(round(holdout_fraction * len(rows)))])
    hold_idx = np.sort(np.concatenate(hold))
    mask = np.ones(test.n, dtype=bool)
    mask[hold_idx] = False
    if mask.sum() == 0 or hold_idx.size == 0:
        raise DataError(f"{test.name}: too few rows ({test.n}) to keep a held-out part")
    return (test.subset(np.flatnonzero(mask), name=f"{test.name}[valuation]"),
            test.subset(hold_idx, name=f"{test.name}[holdout]"))

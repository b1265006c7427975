"""ValuationResult: what every valuer returns."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def subset_size(n: int, fraction: float) -> int:
    """⌈γn⌉, at least 1."""
    return max(1, min(n, math.ceil(fraction * n - 1e-9)))


@dataclass
class ValuationResult:
    """One score per training point (higher = more valuable) and the selected subset.

    ``selected`` holds training-row indices; methods without a subset of their own select the
    top ⌈γn⌉ by value (``from_values``). ``extra`` keeps method-specific figures (e.g. Shapley's
    permutation count and convergence) and is JSON-serialisable.
    """

    values: np.ndarray
    selected: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_values(cls, values: np.ndarray, fraction: float, method: str, **kw) -> ValuationResult:
        values = np.asarray(values, dtype=np.float64)
        k = subset_size(len(values), fraction)
        return cls(values=values, selected=np.sort(top_k(values, k)), method=method, **kw)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def selected_mask(self) -> np.ndarray:
        mask = np.zeros(self.n, dtype=bool)
        mask[self.selected] = True
        return mask

    def ranking(self) -> np.ndarray:
        """Indices from most to least valuable (stable on ties)."""
        return np.argsort(-self.values, kind="stable")

    def to_frame(self, ids: np.ndarray | None = None):
        import pandas as pd

        rank = np.empty(self.n, dtype=np.int64)
        rank[self.ranking()] = np.arange(1, self.n + 1)
        df = pd.DataFrame({"index": np.arange(self.n), "value": self.values, "rank": rank,
                           "selected": self.selected_mask})
        if ids is not None:
            df.insert(1, "id", ids)
        return df

    def summary(self) -> dict:
        return {"method": self.method, "n": self.n, "n_selected": int(len(self.selected)),
                "params": self.params, "timings": self.timings, "extra": self.extra}

    def save(self, out_dir: str | os.PathLike, ids: np.ndarray | None = None) -> None:
        """Write values.csv, subset.csv and result.json into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        frame = self.to_frame(ids)
        frame.to_csv(out / "values.csv", index=False)
        frame[frame["selected"]].drop(columns=["selected"]).to_csv(out / "subset.csv", index=False)
        (out / "result.json").write_text(json.dumps(self.summary(), indent=2, default=to_jsonable))


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-np.asarray(values), kind="stable")[:k]


def to_jsonable(o):
    """json.dumps default for numpy scalars and arrays."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)

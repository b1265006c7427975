"""Data-OOB (Kwon & Zou 2023): out-of-bag correctness of a bagged ensemble."""

from __future__ import annotations

import numpy as np

from hostcp_core.data import Dataset
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult
from hostcp_core.valuer import Valuer


class DataOOB(Valuer):
    """value_i = mean over the bootstrap models that did not see z_i of 1[model(x_i) = y_i].

    B = ``n_estimators`` decision trees (random-forest style: ``max_features`` per split), each
    on a bootstrap sample of size ``max_samples``·n; the paper's default B = 800. Ignores the
    test set: Data-OOB values points by how well the rest of the training data vouch for them.
    Points that are never out of bag (rare for B ≥ 50) get the mean value. CPU only (sklearn);
    ``device`` is accepted for a uniform interface.
    """

    name = "data_oob"

    def __init__(self, fraction: float = 0.2, seed: int = 0, device: str = "auto",
                 n_estimators: int = 800, max_samples: float = 1.0,
                 max_features: str | float | None = "sqrt", max_depth: int | None = None):
        self.fraction = fraction
        self.seed = seed
        self.device = device
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_features = max_features
        self.max_depth = max_depth

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        from sklearn.tree import DecisionTreeClassifier

        n = train.n
        rng = np.random.default_rng(self.seed)
        m = max(1, int(round(self.max_samples * n)))
        correct = np.zeros(n)
        counts = np.zeros(n)
        for b in range(self.n_estimators):
            idx = rng.integers(0, n, m)
            oob = np.ones(n, dtype=bool)
            oob[idx] = False
            if not oob.any():
                continue
            tree = DecisionTreeClassifier(max_features=self.max_features,
                                          max_depth=self.max_depth,
                                          random_state=int(rng.integers(2**31 - 1)))
            tree.fit(train.X[idx], train.y[idx])
            correct[oob] += tree.predict(train.X[oob]) == train.y[oob]
            counts[oob] += 1
            if (b + 1) % 20 == 0 or b + 1 == self.n_estimators:
                report(progress, "data_oob:models", b + 1, self.n_estimators)
        seen = counts > 0
        values = np.full(n, np.nan)
        values[seen] = correct[seen] / counts[seen]
        values[~seen] = values[seen].mean() if seen.any() else 0.0
        extra = {"n_estimators": self.n_estimators, "min_oob_count": int(counts.min())}
        return ValuationResult.from_values(values, self.fraction, self.name, extra=extra)

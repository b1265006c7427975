"""Data-OOB (Kwon & Zou 2023): out-of-bag correctness of a bagged ensemble."""

from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hostcp_core.data import Dataset
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult
from hostcp_core.valuer import Valuer

# Up to SMALL_N rows the paper's setting is used unchanged (B = 800 bootstrap samples of size n):
# Data-OOB is our best flipped-label detector there and its values must not move.
SMALL_N = 10_000
# Above it, each tree fits at most BAG_CAP rows and B shrinks like sqrt(SMALL_N / n) to MIN_TREES,
# so fitting costs O(B · BAG_CAP log BAG_CAP) and out-of-bag prediction O(B · n): at 1M rows
# 100 trees of 50k rows each, every point out of bag in ~95 of them.
BAG_CAP = 50_000
MIN_TREES = 100


def auto_n_estimators(n: int) -> int:
    """The size-dependent default for B: 800 up to 10k rows, then 800·sqrt(10k/n), at least 100."""
    if n <= SMALL_N:
        return 800
    return max(MIN_TREES, int(round(800 * math.sqrt(SMALL_N / n))))


def auto_max_samples(n: int) -> float:
    """The size-dependent default bag size, as a fraction of n: 1.0 (a bootstrap of n) up to
    50k rows, then 50k/n (bags of 50k rows drawn with replacement)."""
    return 1.0 if n <= BAG_CAP else BAG_CAP / n


class DataOOB(Valuer):
    """value_i = mean over the bootstrap models that did not see z_i of 1[model(x_i) = y_i].

    B = ``n_estimators`` decision trees (random-forest style: ``max_features`` per split), each
    on a sample of size ``max_samples``·n drawn with replacement; the paper's default B = 800.
    ``None`` (the default) chooses both by size: up to 10k rows B = 800 and bootstrap samples
    of size n (the paper's setting, unchanged); above it, bags of at most 50k rows and
    B = 800·sqrt(10k/n), at least 100 (253 trees of 50k at 100k rows, 100 of 50k at 1M).
    Trees are grown ``n_jobs`` at a time in threads (sklearn releases the GIL; -1 = all cores);
    out-of-bag hits and counts are accumulated as integers, so values do not depend on
    ``n_jobs`` and memory is O(n + n_jobs · bag size) rather than O(n · B).
    Ignores the test set: Data-OOB values points by how well the rest of the training data
    vouch for them. Points that are never out of bag (rare for B ≥ 50) get the mean value.
    CPU only (sklearn); ``device`` is accepted for a uniform interface.
    """

    name = "data_oob"

    def __init__(self, fraction: float = 0.2, seed: int = 0, device: str = "auto",
                 n_estimators: int | None = None, max_samples: float | None = None,
                 max_features: str | float | None = "sqrt", max_depth: int | None = None,
                 n_jobs: int = -1):
        self.fraction = fraction
        self.seed = seed
        self.device = device
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_features = max_features
        self.max_depth = max_depth
        self.n_jobs = n_jobs

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        from sklearn.tree import DecisionTreeClassifier

        n = train.n
        B = auto_n_estimators(n) if self.n_estimators is None else int(self.n_estimators)
        frac = auto_max_samples(n) if self.max_samples is None else float(self.max_samples)
        m = max(1, int(round(frac * n)))
        jobs = (os.cpu_count() or 1) if self.n_jobs in (None, -1) else max(1, int(self.n_jobs))
        X, y = train.X, train.y

        def grow(idx: np.ndarray, oob: np.ndarray, state: int) -> tuple[np.ndarray, np.ndarray]:
            tree = DecisionTreeClassifier(max_features=self.max_features,
                                          max_depth=self.max_depth, random_state=state)
            tree.fit(X[idx], y[idx])
            # predicting every row costs m/n more than only the out-of-bag ones, but saves
            # copying an (n_oob, d) slice per tree
            return oob, (tree.predict(X) == y) & oob

        rng = np.random.default_rng(self.seed)
        correct = np.zeros(n, dtype=np.int32)
        counts = np.zeros(n, dtype=np.int32)
        done, last = 0, time.monotonic()
        pending: deque = deque()
        report(progress, "data_oob:models", 0, B)  # a cancel is honoured before any work
        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            for b in range(B):
                # bags and tree seeds are drawn in order in this thread: the same draws as a
                # sequential loop, whatever the number of threads
                idx = rng.integers(0, n, m)
                oob = np.ones(n, dtype=bool)
                oob[idx] = False
                if oob.any():
                    pending.append(pool.submit(grow, idx, oob, int(rng.integers(2**31 - 1))))
                else:
                    done += 1
                while pending and (len(pending) >= 2 * jobs or b + 1 == B):
                    was_oob, hit = pending.popleft().result()
                    counts += was_oob
                    correct += hit
                    done += 1
                    now = time.monotonic()
                    if done % 20 == 0 or done == B or now - last >= 1.0:
                        last = now
                        report(progress, "data_oob:models", done, B)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        seen = counts > 0
        values = np.full(n, np.nan)
        values[seen] = correct[seen] / counts[seen]
        values[~seen] = values[seen].mean() if seen.any() else 0.0
        params = {"n_estimators": B, "max_samples": frac, "n_jobs": jobs}
        extra = {"n_estimators": B, "bag_size": m, "n_jobs": jobs,
                 "min_oob_count": int(counts.min()), "mean_oob_count": float(counts.mean()),
                 "size_rule": "auto" if self.n_estimators is None or self.max_samples is None
                 else "given"}
        return ValuationResult.from_values(values, self.fraction, self.name, params=params,
                                           extra=extra)

"""Facility location on the raw (standardised) features: a coverage-only control for HOST-CP."""

from __future__ import annotations

import numpy as np

from hostcp_core.data import Dataset
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult, subset_size
from hostcp_core.valuer import Valuer


class RawFacilityLocation(Valuer):
    """Greedy facility location (max Σ_i max_{j∈S} s_ij, s = d_max − d) on standardised inputs.

    The selected set is the first ⌈γn⌉ greedy picks; values rank picks by their order and the
    rest by their marginal gain after the last pick. It never looks at labels or the test set,
    which is what it is a control for.
    """

    name = "facility_location"

    def __init__(self, fraction: float = 0.2, *, class_conditional: bool = False, seed: int = 0):
        self.fraction = fraction
        self.class_conditional = class_conditional
        self.seed = seed

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        X = train.X.astype(np.float64)
        X = (X - X.mean(0)) / np.maximum(X.std(0), 1e-12)
        sq = (X * X).sum(1)
        d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * X @ X.T, 0.0))
        sim = d.max() - d
        if self.class_conditional:
            sim = np.where(train.y[:, None] == train.y[None, :], sim, 0.0)
        n = train.n
        k = subset_size(n, self.fraction)
        cover = np.zeros(n)
        picked = np.zeros(n, dtype=bool)
        values = np.zeros(n)
        for step in range(k):
            gains = np.maximum(sim - cover[:, None], 0.0).sum(0)
            gains[picked] = -np.inf
            j = int(np.argmax(gains))
            picked[j] = True
            values[j] = 2 * n - step  # above every unpicked point's gain rank
            cover = np.maximum(cover, sim[:, j])
            report(progress, "select", step + 1, k)
        gains = np.maximum(sim - cover[:, None], 0.0).sum(0)
        rest = np.flatnonzero(~picked)
        order = np.argsort(gains[rest], kind="stable")
        values[rest[order]] = np.arange(len(rest)) / max(len(rest), 1)
        return ValuationResult(values=values, selected=np.flatnonzero(picked), method=self.name)

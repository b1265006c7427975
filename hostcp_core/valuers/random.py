"""Random scores: the control every valuer must beat."""

from __future__ import annotations

import numpy as np

from hostcp_core.data import Dataset
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult
from hostcp_core.valuer import Valuer


class RandomValuer(Valuer):
    """Uniform random values in [0, 1), reproducible for a seed; its subset is a random one."""

    name = "random"

    def __init__(self, fraction: float = 0.2, seed: int = 0, device: str = "auto"):
        self.fraction = fraction
        self.seed = seed
        self.device = device

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        values = np.random.default_rng(self.seed).random(train.n)
        report(progress, "random", 1, 1)
        return ValuationResult.from_values(values, self.fraction, self.name)

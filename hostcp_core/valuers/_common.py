"""Small helpers the valuers share: standardisation, one-hot labels, seeded generators."""

from __future__ import annotations

import numpy as np
import torch

from hostcp_core.data import Dataset


def standardise(train: Dataset, *others: Dataset) -> list[np.ndarray]:
    """Z-score every set's features by the training set's mean and spread (float64)."""
    X = train.X.astype(np.float64)
    mean, scale = X.mean(0), X.std(0)
    scale[scale < 1e-12] = 1.0  # constant columns stay constant rather than blowing up
    return [(X - mean) / scale] + [(o.X.astype(np.float64) - mean) / scale for o in others]


def one_hot(y: torch.Tensor, n_classes: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, n_classes).to(dtype)


def torch_generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU torch generator for (seed, stream...): independent, reproducible streams."""
    ss = np.random.SeedSequence([seed, *stream])
    return torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))


def chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))

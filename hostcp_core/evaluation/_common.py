"""Small helpers shared by the evaluation modules."""

from __future__ import annotations

import math

import numpy as np


def n_of(n: int, fraction: float) -> int:
    """⌈f·n⌉ clipped to [0, n]; the 1e-9 keeps 0.3·10 from rounding up to 4."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fractions must lie in [0, 1], got {fraction}")
    return min(n, max(0, math.ceil(fraction * n - 1e-9)))


def as_values(values, n: int | None = None) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if n is not None and v.shape[0] != n:
        raise ValueError(f"{v.shape[0]} values for {n} training points")
    if not np.all(np.isfinite(v)):
        raise ValueError("values contain NaN or inf")
    return v


def flip_mask(flipped_idx, n: int) -> np.ndarray:
    idx = np.asarray(flipped_idx, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"flipped indices must lie in [0, {n})")
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def lowest_first(values: np.ndarray) -> np.ndarray:
    """Indices from lowest to highest value; stable, so ties keep index order (OpenDataVal)."""
    return np.argsort(values, kind="stable")


def highest_first(values: np.ndarray) -> np.ndarray:
    return np.argsort(-values, kind="stable")

"""Flipped-label detection from values: fraction found vs inspected, F1 and AUC.

Low value = suspected flipped, throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hostcp_core.evaluation._common import as_values, flip_mask, lowest_first, n_of
from hostcp_core.evaluation.curves import DEFAULT_FRACTIONS


def flips_found_curve(values, flipped_idx, fractions: Sequence[float] = DEFAULT_FRACTIONS
                      ) -> pd.DataFrame:
    """Cumulative recall of the flipped points among the lowest-valued ⌈f·n⌉ (DVRL /
    OpenDataVal ``discover_corrupted_sample``; stable sort, so ties keep index order).

    Columns: fraction, n_inspected, n_found, found (fraction of flips found), optimal (a
    perfect detector: min(n_inspected/|F|, 1)), random (expected for a random order:
    n_inspected/n). With no flips, found and optimal are NaN.
    """
    values = as_values(values)
    n = values.shape[0]
    flipped = flip_mask(flipped_idx, n)
    n_flipped = int(flipped.sum())
    hits = np.concatenate([[0], np.cumsum(flipped[lowest_first(values)])])
    rows = []
    for f in fractions:
        k = n_of(n, f)
        found = hits[k] / n_flipped if n_flipped else np.nan
        optimal = min(k / n_flipped, 1.0) if n_flipped else np.nan
        rows.append({"fraction": float(f), "n_inspected": k, "n_found": int(hits[k]),
                     "found": float(found), "optimal": float(optimal), "random": k / n})
    return pd.DataFrame(rows)


def two_means_split(values) -> float:
    """Exact 1-D 2-means: the threshold t such that ``values < t`` is the low cluster.

    Sort, then prefix sums give every split's within-cluster squared error in O(n log n)
    (OpenDataVal ``oned_twonn_clustering``). Splits fall only between distinct values, so tied
    points share a cluster; t is the midpoint of the gap. With one distinct value there is no
    split and the low cluster is empty (t = -inf).
    """
    v = np.sort(as_values(values))
    n = v.shape[0]
    if n < 2 or v[0] == v[-1]:
        return -np.inf
    # centre first: prefix sums of squares lose precision on large offsets
    v0 = v - v.mean()
    c1 = np.cumsum(v0)
    c2 = np.cumsum(v0 * v0)
    s = np.arange(1, n)                       # left cluster = v[:s]
    left = c2[s - 1] - c1[s - 1] ** 2 / s
    right = (c2[-1] - c2[s - 1]) - (c1[-1] - c1[s - 1]) ** 2 / (n - s)
    sse = left + right
    sse[v[s - 1] == v[s]] = np.inf            # no split inside a run of ties
    best = int(np.argmin(sse)) + 1
    return float((v[best - 1] + v[best]) / 2)


def flip_detection_scores(values, flipped_idx) -> dict:
    """Score values as a flipped-label detector.

    f1 / precision / recall: the low cluster of an exact 1-D 2-means split of the values is
    predicted flipped (OpenDataVal ``noisy_detection``). roc_auc: of -values as a flip score
    (threshold-free). Also n_suspected and threshold. Undefined figures (no flips, or nothing
    predicted for precision) are NaN.
    """
    from sklearn.metrics import roc_auc_score

    values = as_values(values)
    flipped = flip_mask(flipped_idx, values.shape[0])
    threshold = two_means_split(values)
    pred = values < threshold
    tp = int((pred & flipped).sum())
    fp = int((pred & ~flipped).sum())
    fn = int((~pred & flipped).sum())
    precision = tp / (tp + fp) if tp + fp else np.nan
    recall = tp / (tp + fn) if tp + fn else np.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan
    auc = (float(roc_auc_score(flipped, -values)) if 0 < flipped.sum() < flipped.size
           else np.nan)
    return {"f1": float(f1), "roc_auc": auc, "precision": float(precision),
            "recall": float(recall), "n_suspected": int(pred.sum()), "threshold": threshold}

"""Rankings of values: the paper's ranking of a result (subset first), NDCG@k against the flip
ground truth, class diversity of the top."""

from __future__ import annotations

import numpy as np

from hostcp_core.evaluation._common import as_values, flip_mask, highest_first, n_of


def paper_ranking(result) -> np.ndarray:
    """Most valuable first: a result's selected points (by value), then the rest (by value).
    For methods that select their top values this is their value order; HOST-CP's subset
    (stratified by class) comes first, as the paper evaluates it (its "reverse selection" for
    the bottom)."""
    values = np.asarray(result.values, dtype=np.float64)
    return np.lexsort((-values, ~result.selected_mask))


def positions(order: np.ndarray) -> np.ndarray:
    """Each point's 1-based position in ``order`` (1 = first): the ``rank`` column of results."""
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


def rank_values(order: np.ndarray) -> np.ndarray:
    """Scores that reproduce ``order`` exactly (n for the first, 1 for the last), so the
    lowest-first evaluations (flips found, NDCG, AUC) see the same ranking as the curves."""
    v = np.empty(order.size)
    v[order] = np.arange(order.size, 0, -1)
    return v


def ndcg_at_k(values, flipped_idx, k: int | None = None) -> float:
    """NDCG@k of the ranking by ascending value (lowest first) with relevance 1 for flipped
    points; ``k=None`` means k = the number flipped.

    Tied values share their positions' discounts, each getting the tie group's mean relevance,
    exactly as ``sklearn.metrics.ndcg_score(is_flipped[None], -values[None], k=k)`` with its
    default ``ignore_ties=False`` (this matters for saturated scores such as DVRL's). NaN when
    nothing was flipped.
    """
    values = as_values(values)
    n = values.shape[0]
    rel = flip_mask(flipped_idx, n).astype(np.float64)
    n_rel = int(rel.sum())
    k = n_rel if k is None else int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_rel == 0:
        return float("nan")
    k = min(k, n)
    discount = 1.0 / np.log2(np.arange(2, n + 2))
    discount[k:] = 0.0
    cum_discount = np.concatenate([[0.0], np.cumsum(discount)])
    # group equal values; groups in ascending value order = ranking order
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    group_gain = np.bincount(inverse, weights=rel, minlength=uniq.size) / counts
    ends = np.cumsum(counts)
    starts = ends - counts
    dcg = float(np.sum(group_gain * (cum_discount[ends] - cum_discount[starts])))
    idcg = float(cum_discount[min(k, n_rel)])
    return dcg / idcg


def class_distribution(values, y, n_classes: int, top_fraction: float = 0.05) -> dict:
    """Labels among the top ⌈top_fraction·n⌉ (at least 1) by value (paper section 4, class
    diversity of the high-value points).

    Returns counts (per class code), fractions, n_top, n_distinct (classes present) and entropy,
    normalised to [0, 1] (-Σ p log p / log K; 1 = perfectly balanced; 0 when K = 1).
    """
    values = as_values(values)
    y = np.asarray(y, dtype=np.int64).ravel()
    if y.shape[0] != values.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {values.shape[0]} values")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be class codes in [0, {n_classes})")
    n_top = max(1, n_of(values.shape[0], top_fraction))
    top = highest_first(values)[:n_top]
    counts = np.bincount(y[top], minlength=n_classes)
    p = counts / n_top
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(n_classes)) if n_classes > 1 else 0.0
    return {"counts": [int(c) for c in counts], "fractions": [float(x) for x in p],
            "n_top": int(n_top), "n_distinct": int((counts > 0).sum()),
            "entropy": max(0.0, entropy)}

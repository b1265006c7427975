"""Retraining curves (paper section 4): addition, removal and fix-and-retrain.

Every point on a curve trains ``hostcp_core.models.train_classifier`` from scratch, with the
same architecture, epochs and seeds for every method, and scores accuracy on ``eval_set`` (use a
held-out part of the test set, not the part that drove valuation). With ``repeats=r`` each point
is trained with seeds ``seed, seed+1, ..., seed+r-1``; ``accuracy`` is their mean and
``accuracy_std`` their sample standard deviation (0 for one repeat).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hostcp_core.data import Dataset
from hostcp_core.evaluation._common import as_values, lowest_first, n_of
from hostcp_core.progress import ProgressCallback, report

DEFAULT_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def subset_accuracy(
    train: Dataset,
    eval_set: Dataset,
    idx: Sequence[int] | np.ndarray,
    *,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 60,
    seed: int = 0,
    device: str = "cpu",
    labels: np.ndarray | None = None,
) -> float:
    """Accuracy on ``eval_set`` of a classifier trained from scratch on ``train`` rows ``idx``.

    ``labels`` (optional, one per training row) replaces ``train.y``. A subset that lacks some
    classes is still trained (the head keeps all classes; it just never learns the missing
    ones). An empty subset scores 1/K, the expected accuracy of a uniform guess, as a model
    trained on nothing can do no better.
    """
    from hostcp_core.models import accuracy, train_classifier

    idx = np.asarray(idx, dtype=np.int64).ravel()
    if idx.size == 0:
        return 1.0 / train.n_classes
    y = train.y if labels is None else np.asarray(labels, dtype=np.int64)
    model = train_classifier(train.X[idx], y[idx], train.n_classes, hidden=hidden,
                             epochs=epochs, seed=seed, device=device)
    return accuracy(model, eval_set.X, eval_set.y)


def random_order(n: int, seed: int = 0) -> np.ndarray:
    """A random ranking of ``n`` points: the baseline every curve should be compared with."""
    return np.random.default_rng(seed).permutation(n)


def addition_curve(
    train: Dataset,
    eval_set: Dataset,
    order,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 60,
    seed: int = 0,
    device: str = "cpu",
    repeats: int = 1,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Train on the top ⌈f·n⌉ of ``order`` (most valuable first) for each fraction f.

    ``order`` is a permutation of the training rows, e.g. ``ValuationResult.ranking()`` (a
    ValuationResult itself is accepted). For a fixed subset such as HOST-CP's ``selected``, use
    :func:`subset_accuracy`. Columns: fraction, n_points, accuracy, accuracy_std,
    n_classes_present (fewer than K means the subset lacked classes).
    """
    order = _check_order(order, train.n)
    rows = []
    for step, f in enumerate(fractions):
        k = n_of(train.n, f)
        idx = np.sort(order[:k])  # the set matters, not its order (same minibatches at 100%)
        accs = _repeat(train, eval_set, idx, hidden, epochs, seed, device, repeats)
        rows.append({"fraction": float(f), "n_points": k, **accs,
                     "n_classes_present": int(np.unique(train.y[idx]).size)})
        report(progress, "addition_curve", step + 1, len(fractions))
    return pd.DataFrame(rows)


def removal_curve(
    train: Dataset,
    eval_set: Dataset,
    order,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 60,
    seed: int = 0,
    device: str = "cpu",
    repeats: int = 1,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Remove the top ⌈f·n⌉ of ``order`` (most valuable first) and retrain on the rest.

    The better the ranking, the faster accuracy drops. Columns: fraction, n_removed, n_points
    (trained on), accuracy, accuracy_std, n_classes_present. Removing everything (f = 1)
    scores 1/K, as in :func:`subset_accuracy`.
    """
    order = _check_order(order, train.n)
    rows = []
    for step, f in enumerate(fractions):
        k = n_of(train.n, f)
        keep = np.sort(order[k:])
        accs = _repeat(train, eval_set, keep, hidden, epochs, seed, device, repeats)
        rows.append({"fraction": float(f), "n_removed": k, "n_points": int(keep.size), **accs,
                     "n_classes_present": int(np.unique(train.y[keep]).size)})
        report(progress, "removal_curve", step + 1, len(fractions))
    return pd.DataFrame(rows)


def fix_and_retrain_curve(
    train_noisy: Dataset,
    train_clean_labels,
    eval_set: Dataset,
    values,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 60,
    seed: int = 0,
    device: str = "cpu",
    repeats: int = 1,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Paper Fig. 2: inspect the lowest-valued ⌈f·n⌉ points, give the mislabelled among them
    their true labels, retrain on the whole training set and score on ``eval_set``.

    ``train_clean_labels`` is the true label codes (or a Dataset holding them). Add 0.0 to
    ``fractions`` for the no-fix starting point. Columns: fraction, n_inspected, n_fixed,
    accuracy, accuracy_std. Fractions that fix the same points reuse one training.
    """
    clean = train_clean_labels.y if isinstance(train_clean_labels, Dataset) else train_clean_labels
    clean = np.asarray(clean, dtype=np.int64).ravel()
    if clean.shape[0] != train_noisy.n:
        raise ValueError(f"{clean.shape[0]} clean labels for {train_noisy.n} training points")
    values = as_values(values, train_noisy.n)
    order = lowest_first(values)
    wrong = train_noisy.y != clean
    everyone = np.arange(train_noisy.n)
    cache: dict[int, dict] = {}
    rows = []
    for step, f in enumerate(fractions):
        k = n_of(train_noisy.n, f)
        inspected = order[:k]
        fixed = inspected[wrong[inspected]]
        # the label vector depends only on the number of fixes (the fixed set grows with k)
        if fixed.size not in cache:
            y = train_noisy.y.copy()
            y[fixed] = clean[fixed]
            cache[fixed.size] = _repeat(train_noisy, eval_set, everyone, hidden, epochs, seed,
                                        device, repeats, labels=y)
        rows.append({"fraction": float(f), "n_inspected": k, "n_fixed": int(fixed.size),
                     **cache[fixed.size]})
        report(progress, "fix_and_retrain_curve", step + 1, len(fractions))
    return pd.DataFrame(rows)


def _repeat(train, eval_set, idx, hidden, epochs, seed, device, repeats, labels=None) -> dict:
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    accs = np.array([subset_accuracy(train, eval_set, idx, hidden=hidden, epochs=epochs,
                                     seed=seed + r, device=device, labels=labels)
                     for r in range(repeats)])
    std = float(accs.std(ddof=1)) if repeats > 1 else 0.0
    return {"accuracy": float(accs.mean()), "accuracy_std": std}


def _check_order(order, n: int) -> np.ndarray:
    if hasattr(order, "ranking"):  # a ValuationResult
        order = order.ranking()
    order = np.asarray(order, dtype=np.int64).ravel()
    if order.shape[0] != n or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"order must be a permutation of the {n} training rows "
                         "(most valuable first), e.g. ValuationResult.ranking()")
    return order

"""The mislabel report: a ranked list of suspected mislabelled training points."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hostcp_core.data import Dataset
from hostcp_core.evaluation._common import as_values, n_of
from hostcp_core.evaluation.detection import two_means_split
from hostcp_core.evaluation.ranking import positions

REPORT_COLUMNS = ("index", "id", "given_label", "suggested_label", "score", "rank", "suspected")


def out_of_fold_proba(train: Dataset, *, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Class probabilities of every training point from a model that did not see it:
    standardised multinomial logistic regression, stratified k-fold. Shape (n, K)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n, K = train.n, train.n_classes
    proba = np.full((n, K), 1.0 / K)
    min_count = int(np.bincount(train.y, minlength=K)[np.unique(train.y)].min())
    folds = max(2, min(n_folds, n))
    # stratify when every present class can appear in every fold
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if min_count >= folds
                else KFold(folds, shuffle=True, random_state=seed))
    for fit_idx, oof_idx in splitter.split(train.X, train.y):
        present = np.unique(train.y[fit_idx])
        if present.size < 2:  # nothing to learn: the fold only ever saw one label
            proba[oof_idx] = 0.0
            proba[oof_idx, present[0]] = 1.0
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        clf.fit(train.X[fit_idx], train.y[fit_idx])
        p = np.zeros((oof_idx.size, K))
        p[:, clf.classes_] = clf.predict_proba(train.X[oof_idx])  # absent classes get 0
        proba[oof_idx] = p
    return proba


def mislabel_report(
    train: Dataset,
    values,
    *,
    suspect_fraction: float | None = None,
    seed: int = 0,
    value_weight: float = 0.7,
    n_folds: int = 5,
) -> pd.DataFrame:
    """Rank training points by how likely their label is wrong, cleanlab-style.

    score (in [0, 1]; LOW = suspect) = ``value_weight`` · value_rank + (1 − value_weight) ·
    self_confidence, where value_rank is the point's value percentile (0 for the lowest value,
    1 for the highest; ties share their mean rank) and self_confidence is the out-of-fold
    probability of the given label (cleanlab's self-confidence label-quality score; see
    :func:`out_of_fold_proba`). So a point is suspect when the valuer finds it harmful AND a model
    that never saw it disagrees with its label. ``values=None`` or ``value_weight=0`` uses
    self-confidence alone.

    suggested_label: the out-of-fold prediction, as a class name. suspected: the lowest
    ⌈suspect_fraction·n⌉ scores; by default as many lowest scores as the low cluster of an exact
    1-D 2-means split of the values holds (of the self-confidences when values are not used or
    are constant).
    The count comes from the raw values, not the score, because the rank part of the score is
    uniform and has no clusters to find. Rows are sorted by rank (1 = most suspect); columns
    :data:`REPORT_COLUMNS`. The score's parts are kept in ``df.attrs``.
    """
    from scipy.stats import rankdata

    if not 0.0 <= value_weight <= 1.0:
        raise ValueError(f"value_weight must lie in [0, 1], got {value_weight}")
    n = train.n
    proba = out_of_fold_proba(train, n_folds=n_folds, seed=seed)
    self_conf = proba[np.arange(n), train.y]
    if values is None or value_weight == 0:
        value_weight = 0.0
        v = None
        value_rank = np.full(n, 0.5)
    else:
        v = as_values(values, n)
        value_rank = (rankdata(v) - 1) / max(n - 1, 1)
    score = value_weight * value_rank + (1.0 - value_weight) * self_conf
    order = np.argsort(score, kind="stable")
    rank = positions(order)
    if suspect_fraction is None:
        # constant values cannot be split: let the out-of-fold confidences decide the count
        basis = v if v is not None and np.ptp(v) > 0 else self_conf
        n_suspect = int((basis < two_means_split(basis)).sum())
    else:
        n_suspect = n_of(n, suspect_fraction)
    suspected = np.zeros(n, dtype=bool)
    suspected[order[:n_suspect]] = True
    df = pd.DataFrame({
        "index": np.arange(n),
        "id": np.arange(n) if train.ids is None else train.ids,
        "given_label": train.label_names(),
        "suggested_label": train.label_names(proba.argmax(1)),
        "score": score,
        "rank": rank,
        "suspected": suspected,
    }).iloc[order].reset_index(drop=True)
    df.attrs.update({"value_weight": value_weight,
                     "self_confidence": self_conf[order].tolist(),
                     "value_rank": value_rank[order].tolist()})
    return df

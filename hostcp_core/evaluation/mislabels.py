"""The mislabel report: every training point with the calibrated probability that its given label
is wrong, a suggested label, and flags chosen by a stated rule (issue 16).

The evidence comes from :class:`~hostcp_core.evaluation.label_errors.LabelErrorDetector`
(out-of-fold bagged trees, gradient boosting and logistic regression, pooled and calibrated, with
a class-conditional noise model), whatever valuation method the job ran.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hostcp_core.data import Dataset
from hostcp_core.evaluation._common import as_values
from hostcp_core.evaluation.label_errors import (
    DEFAULT_MODELS,
    LabelErrorDetector,
    flag_errors,
)
from hostcp_core.evaluation.ranking import positions
from hostcp_core.progress import ProgressCallback

REPORT_COLUMNS = ("index", "id", "given_label", "suggested_label", "suggested_prob",
                  "label_error_prob", "score", "rank", "suspected")


def out_of_fold_proba(train: Dataset, *, n_folds: int | None = None, seed: int = 0
                      ) -> np.ndarray:
    """The detector's pooled, calibrated out-of-fold probabilities of the given labels, (n, K)."""
    return LabelErrorDetector(n_folds=n_folds, seed=seed).fit(train).pred_probs_


def mislabel_report(
    train: Dataset,
    values=None,
    *,
    seed: int = 0,
    flag_precision: float | None = None,
    threshold: float | None = None,
    progress: ProgressCallback | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    max_fit_rows: int = 20_000,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Rank training points by the probability that their given label is wrong.

    ``values`` (the job's valuation) are accepted for interface stability and checked for shape,
    but do not enter the report: measured on flipped labels (docs/RESULTS.md, "Mislabel report"),
    mixing them in did not improve on the detector alone, so the report is the same whatever
    method the job ran.

    Columns (:data:`REPORT_COLUMNS`), rows sorted by rank (1 = most suspect):
    ``label_error_prob`` — calibrated P(given label wrong | x, given label);
    ``score`` = 1 − label_error_prob (LOW = suspect); ``suggested_label`` — the most probable true
    class given x and the given label (for a flagged point: the most probable *other* class);
    ``suggested_prob`` — its probability; ``suspected`` — the flags: the largest most-suspect set
    whose mean label_error_prob (its expected precision) is at least ``flag_precision`` (default
    0.8, chosen by measurement); or, with ``threshold`` given instead, label_error_prob ≥
    threshold (e.g. 0.5: more likely wrong than right).

    ``df.attrs`` (plain JSON-able): ``expected_errors`` (sum of label_error_prob),
    ``flag_rule`` (rule, parameters, n_flagged, its expected precision), ``noise_rates`` (per given
    class: the expected share of its labels that are wrong; and ``noise_matrix`` rows: P(given j |
    true i)), ``confusion`` (given label × estimated true class, expected counts), ``classes``,
    ``detector`` (models, pooling weights, temperature, folds, ``max_fit_rows`` cap, seconds).

    ``progress`` is called after every model fit (stage "mislabels"); it may raise to cancel.
    """
    n, K = train.n, train.n_classes
    if values is not None:
        as_values(values, n)  # a wrong-length values array is still the caller's error
    det = LabelErrorDetector(models=models, max_fit_rows=max_fit_rows, seed=seed,
                             n_jobs=n_jobs).fit(train, progress=progress)
    p_err = det.label_error_prob_
    suspected, rule = flag_errors(p_err, flag_precision=flag_precision, threshold=threshold)
    post = det.posterior_
    suggested = det.suggested_.copy()
    others = post.copy()
    others[np.arange(n), train.y] = -1.0
    suggested[suspected] = others[suspected].argmax(1)
    suggested_prob = post[np.arange(n), suggested]
    order = np.argsort(-p_err, kind="stable")
    df = pd.DataFrame({
        "index": np.arange(n),
        "id": np.arange(n) if train.ids is None else train.ids,
        "given_label": train.label_names(),
        "suggested_label": train.label_names(suggested),
        "suggested_prob": suggested_prob,
        "label_error_prob": p_err,
        "score": 1.0 - p_err,
        "rank": positions(order),
        "suspected": suspected,
    }).iloc[order].reset_index(drop=True)
    classes = list(train.classes)
    confusion = np.zeros((K, K))
    np.add.at(confusion, train.y, post)   # row: given label, column: estimated true class
    given_counts = np.bincount(train.y, minlength=K)
    err_by_class = np.bincount(train.y, weights=p_err, minlength=K)
    df.attrs.update({
        "expected_errors": float(p_err.sum()),
        "flag_rule": rule,
        "classes": classes,
        "noise_rates": {c: (float(err_by_class[k] / given_counts[k]) if given_counts[k] else None)
                        for k, c in enumerate(classes)},
        "noise_matrix": [[float(v) for v in row] for row in det.noise_matrix_],
        "confusion": {"given": classes, "true": classes,
                      "counts": [[float(v) for v in row] for row in confusion]},
        "detector": {"models": list(det.models_), "weights": det.weights_,
                     "temperature": det.temperature_, "calibration": det.calibration_,
                     "n_folds": det.n_folds_,
                     "max_fit_rows": det.max_fit_rows, "anchor_fraction": det.anchor_fraction,
                     "seconds": det.seconds_, "values_used": False},
    })
    return df

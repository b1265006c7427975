"""The utility V(S) of Data Shapley: test accuracy of a fast learner fitted on a subset S."""

from __future__ import annotations

import numpy as np

LEARNERS = ("logreg", "centroid", "knn")


class AccuracyUtility:
    """V(S) = accuracy on the test set of ``learner`` fitted on the rows S of the training set.

    As in the original TMC code, a subset missing a class is not fitted: V(S) is then
    ``random_score``, the accuracy of always predicting the test set's most frequent class
    (also V(∅)). Learners: "logreg" (scikit-learn liblinear, C = 1, the original's model;
    one-vs-rest for more than two classes), "centroid" (nearest class mean; ~20× cheaper),
    "knn" (``k``-nearest neighbours, k capped at |S|). All are deterministic; plain arrays
    only, so the utility pickles cheaply for parallel chunks.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                 learner: str = "logreg", *, C: float = 1.0, k: int = 5):
        if learner not in LEARNERS:
            raise ValueError(f"learner must be one of {', '.join(LEARNERS)}, not {learner!r}")
        self.X, self.y = np.asarray(X, np.float64), np.asarray(y)
        self.X_test, self.y_test = np.asarray(X_test, np.float64), np.asarray(y_test)
        self.learner, self.C, self.k = learner, C, k
        self.classes = np.unique(self.y)
        counts = np.bincount(self.y_test)
        self.random_score = float(counts.max() / counts.sum())

    def fittable(self, idx: np.ndarray) -> bool:
        return np.unique(self.y[idx]).size == self.classes.size

    def __call__(self, idx: np.ndarray) -> float:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0 or not self.fittable(idx):
            return self.random_score
        return float((self._predict(idx, self.X_test) == self.y_test).mean())

    def score_on(self, idx: np.ndarray, rows: np.ndarray) -> float:
        """Accuracy of the model fitted on ``idx`` on test rows ``rows`` (for bootstraps)."""
        pred = self._predict(np.asarray(idx), self.X_test)
        return float((pred[rows] == self.y_test[rows]).mean())

    def _predict(self, idx: np.ndarray, Xq: np.ndarray) -> np.ndarray:
        X, y = self.X[idx], self.y[idx]
        if self.learner == "centroid":
            cls = np.unique(y)
            means = np.stack([X[y == c].mean(0) for c in cls])
            d = (Xq**2).sum(1)[:, None] - 2 * Xq @ means.T + (means**2).sum(1)[None]
            return cls[d.argmin(1)]
        if self.learner == "knn":
            from sklearn.neighbors import KNeighborsClassifier

            return KNeighborsClassifier(min(self.k, len(y))).fit(X, y).predict(Xq)
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(solver="liblinear", C=self.C, max_iter=5000, random_state=666)
        if self.classes.size > 2:  # liblinear is binary; the original used it one-vs-rest
            from sklearn.multiclass import OneVsRestClassifier

            model = OneVsRestClassifier(model)
        return model.fit(X, y).predict(Xq)

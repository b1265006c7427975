"""The Data Shapley synthetic generator (Ghorbani & Zou, ``shap_utils.label_generator``)."""

from __future__ import annotations

import numpy as np

from hostcp_core.data import Dataset, make_dataset


def _poly_features(Xs: np.ndarray, degree: int) -> np.ndarray:
    # All ordered monomials up to `degree`, duplicates included, as in the original code.
    feats, cur = [Xs], Xs
    for _ in range(degree - 1):
        cur = (cur[:, :, None] * Xs[:, None, :]).reshape(Xs.shape[0], -1)
        feats.append(cur)
    return np.concatenate(feats, axis=1)


def make_synthetic(
    n_train: int = 1000,
    n_test: int = 1000,
    *,
    seed: int = 0,
    n_features: int = 50,
    n_important: int = 5,
    degree: int = 3,
    target_accuracy: float = 0.7,
    max_tries: int = 100,
) -> tuple[Dataset, Dataset]:
    """Draw one synthetic binary task and return ``(train, test)``.

    Features ~ N(0, I_d); P(y=1|x) = sigmoid(c * standardised polynomial of ``n_important``
    coordinates). As in the original, the sharpness ``c`` starts at 1 and grows by 10% (with a
    fresh draw) until a logistic regression fitted on the training part scores above
    ``target_accuracy`` on the rest. The label rule is stored in ``train.meta``.
    """
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    n = n_train + n_test
    param = 1.0
    for _ in range(max_tries):
        X = rng.standard_normal((n, n_features))
        S = rng.choice(n_features, n_important, replace=False)
        phi = _poly_features(X[:, S], degree)
        beta = rng.standard_normal(phi.shape[1])
        f = phi @ beta
        f = (f - f.mean()) / f.std()
        p = expit(param * f)
        y = (rng.random(n) < p).astype(np.int64)
        if len(np.unique(y[:n_train])) < 2:
            param *= 1.1
            continue
        clf = LogisticRegression(max_iter=5000).fit(X[:n_train], y[:n_train])
        if clf.score(X[n_train:], y[n_train:]) > target_accuracy:
            break
        param *= 1.1
    meta = {"seed": seed, "important": S.tolist(), "param": param, "degree": degree}
    train = make_dataset(X[:n_train], y[:n_train], classes=("0", "1"), name=f"synthetic-{seed}")
    test = make_dataset(X[n_train:], y[n_train:], classes=("0", "1"),
                        name=f"synthetic-{seed}-test")
    train.meta.update(meta)
    test.meta.update(meta)
    return train, test


def flip_labels(
    ds: Dataset, fraction: float = 0.1, *, seed: int = 0
) -> tuple[Dataset, np.ndarray]:
    """Give a random ``fraction`` of rows a different label (binary: the other class;
    multi-class: a uniformly random other class). Returns the noisy set and the flipped rows."""
    rng = np.random.default_rng(seed)
    k = int(round(fraction * ds.n))
    idx = np.sort(rng.choice(ds.n, k, replace=False))
    y = ds.y.copy()
    K = ds.n_classes
    shift = rng.integers(1, K, size=k) if K > 2 else np.ones(k, dtype=np.int64)
    y[idx] = (y[idx] + shift) % K
    return ds.with_labels(y), idx

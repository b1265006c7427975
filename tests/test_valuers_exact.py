"""Valuers against exact ground truth: enumerated Shapley values and real leave-one-out refits."""

from itertools import combinations
from math import factorial

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from hostcp_core import make_dataset, make_synthetic
from hostcp_core.valuers import _grads as G
from hostcp_core.valuers._common import standardise
from hostcp_core.valuers._utility import AccuracyUtility
from hostcp_core.valuers.influence import InfluenceFunction
from hostcp_core.valuers.knn_shapley import KNNShapley
from hostcp_core.valuers.loo import LeaveOneOut
from hostcp_core.valuers.tmc_shapley import TMCShapley
from hostcp_core.valuers.tracin import TracInCP


def exact_shapley(n: int, utility) -> np.ndarray:
    """φ_i = Σ_{S ⊆ N∖i} |S|!(n−|S|−1)!/n! · (U(S ∪ i) − U(S)), by enumeration."""
    phi = np.zeros(n)
    for i in range(n):
        rest = [j for j in range(n) if j != i]
        for size in range(n):
            w = factorial(size) * factorial(n - size - 1) / factorial(n)
            for S in combinations(rest, size):
                phi[i] += w * (utility(list(S) + [i]) - utility(list(S)))
    return phi


def knn_utility(Xtr, ytr, x, y, k):
    def U(S):
        if not S:
            return 0.0
        S = np.array(S)
        d = np.linalg.norm(Xtr[S] - x, axis=1)
        nearest = S[np.argsort(d, kind="stable")[:k]]
        return float((ytr[nearest] == y).sum()) / k
    return U


def test_knn_shapley_matches_enumeration():
    rng = np.random.default_rng(3)
    Xtr, ytr = rng.normal(size=(8, 3)), rng.integers(0, 3, 8)
    Xte, yte = rng.normal(size=(5, 3)), rng.integers(0, 3, 5)
    classes = ("a", "b", "c")
    train = make_dataset(Xtr, np.array(classes)[ytr], classes=classes)
    test = make_dataset(Xte, np.array(classes)[yte], classes=classes)
    for k in (1, 3):
        got = KNNShapley(k=k, standardize=False, device="cpu").fit(train, test).values
        X32, T32 = train.X.astype(np.float64), test.X.astype(np.float64)
        want = np.mean([exact_shapley(8, knn_utility(X32, ytr, T32[t], yte[t], k))
                        for t in range(5)], axis=0)
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_tmc_shapley_converges_to_exact_values():
    # 6 points: truncation needs more than 5 consecutive hits, so it can only fire at the last
    # point and TMC is unbiased here; the only error is Monte-Carlo error.
    rng = np.random.default_rng(0)
    Xtr = np.vstack([rng.normal(-1, 1.0, (3, 2)), rng.normal(1, 1.0, (3, 2))])
    ytr = np.array([0, 0, 1, 0, 1, 1])  # one point on the wrong side: a negative value
    Xte = np.vstack([rng.normal(-1, 1.0, (30, 2)), rng.normal(1, 1.0, (30, 2))])
    yte = np.repeat([0, 1], 30)
    train = make_dataset(Xtr, ytr, classes=("0", "1"))
    test = make_dataset(Xte, yte, classes=("0", "1"))
    tmc = TMCShapley(learner="centroid", err=0.0, check_every=1000, max_permutations=3000)
    res = tmc.fit(train, test)
    utility = AccuracyUtility(train.X, train.y, test.X, test.y, "centroid")
    exact = exact_shapley(6, lambda S: utility(np.array(S, dtype=np.int64)))
    assert res.extra["n_permutations"] == 3000
    # Stated tolerance: 4 standard errors of the permutation mean (marginals' own spread),
    # which at T = 3000 is about 0.01 in accuracy units here.
    marg = np.concatenate([tmc.run_chunk(train, test, c, 1000, 0) for c in range(3)])
    np.testing.assert_allclose(marg.mean(0), res.values)
    se = marg.std(0) / np.sqrt(len(marg))
    assert np.all(np.abs(res.values - exact) <= 4 * se + 1e-12), (res.values, exact, se)
    assert np.abs(res.values - exact).max() < 0.02
    assert np.argmin(exact) == 3 and np.argmin(res.values) == 3


@pytest.fixture(scope="module")
def small_lr_task():
    return make_synthetic(100, 300, seed=0, n_features=10)


def test_loo_equals_retraining_from_scratch(small_lr_task):
    train, test = small_lr_task
    res = LeaveOneOut(l2=0.01, device="cpu").fit(train, test)
    Xtr, Xte = (torch.as_tensor(a) for a in standardise(train, test))
    ytr, yte = torch.as_tensor(train.y), torch.as_tensor(test.y)
    f = G.linear_loss_fn(10, 2)
    mask = G.linear_l2_mask(10, 2, Xtr)
    zero = torch.zeros(22, dtype=torch.float64)
    full = f(G.fit_lbfgs(G.Objective(f, Xtr, ytr, 0.01, mask), zero), Xte, yte).mean()
    for i in (0, 17, 63):
        w = torch.ones(100, dtype=torch.float64)
        w[i] = 0
        th = G.fit_lbfgs(G.Objective(f, Xtr, ytr, 0.01, mask, w), zero)
        assert float(f(th, Xte, yte).mean() - full) == pytest.approx(res.values[i], abs=1e-7)


def test_influence_ranks_like_leave_one_out(small_lr_task):
    train, test = small_lr_task
    loo = LeaveOneOut(l2=0.01, device="cpu").fit(train, test).values
    exact = InfluenceFunction(l2=0.01, method="exact", device="cpu").fit(train, test).values
    assert spearmanr(loo, exact)[0] >= 0.9
    cg = InfluenceFunction(l2=0.01, method="cg", device="cpu").fit(train, test).values
    np.testing.assert_allclose(cg, exact, rtol=1e-5, atol=1e-8 * np.abs(exact).max())
    lissa = InfluenceFunction(l2=0.01, method="lissa", lissa_depth=300, lissa_batch=100,
                              device="cpu").fit(train, test).values
    assert spearmanr(lissa, exact)[0] >= 0.9


def test_tracin_last_layer_closed_form_equals_autograd(small_lr_task):
    # With no hidden layer the head is the whole model, so both paths compute the same sums.
    train, test = small_lr_task
    kw = dict(hidden=(), epochs=4, n_checkpoints=2, device="cpu")
    fast = TracInCP(last_layer=True, **kw).fit(train, test).values
    full = TracInCP(last_layer=False, **kw).fit(train, test).values
    np.testing.assert_allclose(fast, full, rtol=1e-4, atol=1e-5 * np.abs(full).max())

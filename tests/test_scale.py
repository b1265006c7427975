"""The valuers' scalable paths (issue 13): chunked KNN-Shapley and parallel, size-aware Data-OOB
give the same values as the straightforward implementations they replaced, report progress and
stop when the progress callback raises."""

import numpy as np
import pytest
import torch

from hostcp_core import Cancelled, flip_labels, make_dataset, make_synthetic
from hostcp_core.valuers.data_oob import DataOOB, auto_max_samples, auto_n_estimators
from hostcp_core.valuers.knn_shapley import KNNShapley, chunk_size, knn_shapley_values


def knn_shapley_reference(Xtr, ytr, Xte, yte, k):
    """The implementation before issue 13 (256 test points a chunk, stable argsort), verbatim."""
    N = Xtr.shape[0]
    i = torch.arange(1, N, dtype=torch.float64)
    coef = torch.clamp(i, max=k) / (k * i)
    total = torch.zeros(N, dtype=torch.float64)
    m = Xte.shape[0]
    for start in range(0, m, 256):
        sl = slice(start, min(m, start + 256))
        dist = torch.cdist(Xte[sl], Xtr, compute_mode="donot_use_mm_for_euclid_dist")
        order = dist.argsort(dim=1, stable=True)
        match = (ytr[order] == yte[sl, None]).to(torch.float64)
        steps = (match[:, :-1] - match[:, 1:]) * coef
        s = match[:, -1:] / N + torch.flip(torch.cumsum(torch.flip(steps, [1]), 1), [1])
        s = torch.cat([s, match[:, -1:] / N], 1)
        total.scatter_add_(0, order.flatten(), s.flatten())
    return total / m


def data_oob_reference(train, n_estimators, max_samples, seed):
    """The sequential loop before issue 13, verbatim (max_features="sqrt", full depth)."""
    from sklearn.tree import DecisionTreeClassifier

    n = train.n
    rng = np.random.default_rng(seed)
    m = max(1, int(round(max_samples * n)))
    correct, counts = np.zeros(n), np.zeros(n)
    for _ in range(n_estimators):
        idx = rng.integers(0, n, m)
        oob = np.ones(n, dtype=bool)
        oob[idx] = False
        if not oob.any():
            continue
        tree = DecisionTreeClassifier(max_features="sqrt",
                                      random_state=int(rng.integers(2**31 - 1)))
        tree.fit(train.X[idx], train.y[idx])
        correct[oob] += tree.predict(train.X[oob]) == train.y[oob]
        counts[oob] += 1
    seen = counts > 0
    values = np.full(n, np.nan)
    values[seen] = correct[seen] / counts[seen]
    values[~seen] = values[seen].mean()
    return values


@pytest.fixture(scope="module")
def tied_task():
    """Duplicated training rows (exact distance ties) and 3 classes."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(150, 4))
    X = np.vstack([X, X[:40]])  # 40 duplicated rows
    y = rng.integers(0, 3, len(X))
    Xte, yte = rng.normal(size=(37, 4)), rng.integers(0, 3, 37)
    return (torch.as_tensor(X), torch.as_tensor(y), torch.as_tensor(Xte), torch.as_tensor(yte))


@pytest.mark.parametrize("max_elements", [1, 190 * 5, 2**22])
def test_knn_shapley_chunks_equal_the_reference(tied_task, max_elements):
    Xtr, ytr, Xte, yte = tied_task
    want = knn_shapley_reference(Xtr, ytr, Xte, yte, 5)
    got = knn_shapley_values(Xtr, ytr, Xte, yte, 5, max_elements=max_elements)
    assert torch.equal(got, want)


def test_knn_shapley_memory_bound_sets_the_chunk():
    assert chunk_size(1_000_000, 256) == 2  # the CPU default, 2^21 pairs
    assert chunk_size(100_000, 256) == 20
    assert chunk_size(1_000_000, 256, 2**25) == 33
    assert chunk_size(1000, 256) == 256
    assert chunk_size(10**9, 256) == 1


def test_knn_shapley_reports_every_chunk_and_stops_on_cancel(tied_task):
    train = make_dataset(tied_task[0].numpy(), tied_task[1].numpy())
    test = make_dataset(tied_task[2].numpy(), tied_task[3].numpy(), classes=train.classes)
    steps = []
    res = KNNShapley(device="cpu", max_elements=190 * 10).fit(
        train, test, progress=lambda p: steps.append(p.step))
    assert steps == [0, 10, 20, 30, 37]
    assert res.extra["test_points_per_chunk"] == 10

    def cancel(p):
        steps.append(p.step)
        if p.step > 0:  # mid-run, after the first chunk
            raise Cancelled("stop")

    steps.clear()
    with pytest.raises(Cancelled):
        KNNShapley(device="cpu", max_elements=190 * 10).fit(train, test, progress=cancel)
    assert steps == [0, 10]


@pytest.fixture(scope="module")
def noisy_task():
    train, test = make_synthetic(400, 50, seed=1, n_features=8)
    return flip_labels(train, 0.1, seed=1)[0], test


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_data_oob_equals_the_sequential_loop(noisy_task, n_jobs):
    train, test = noisy_task
    want = data_oob_reference(train, 60, 1.0, seed=3)
    got = DataOOB(n_estimators=60, max_samples=1.0, seed=3, n_jobs=n_jobs).fit(train, test)
    np.testing.assert_array_equal(got.values, want)
    half = DataOOB(n_estimators=40, max_samples=0.5, seed=4, n_jobs=n_jobs).fit(train, test)
    np.testing.assert_array_equal(half.values, data_oob_reference(train, 40, 0.5, seed=4))


def test_data_oob_size_rule_keeps_the_paper_setting_up_to_10k():
    for n in (10, 1000, 10_000):
        assert (auto_n_estimators(n), auto_max_samples(n)) == (800, 1.0)
    assert auto_n_estimators(100_000) == 253 and auto_max_samples(100_000) == 0.5
    assert auto_n_estimators(1_000_000) == 100 and auto_max_samples(1_000_000) == 0.05
    # the bag never exceeds 50k rows and B never goes below 100, at any size
    for n in (20_000, 400_000, 10**7):
        assert auto_max_samples(n) * n <= 50_000 + 1e-6 and auto_n_estimators(n) >= 100


def test_data_oob_states_what_it_used(noisy_task):
    train, test = noisy_task
    res = DataOOB(n_estimators=30, n_jobs=2).fit(train, test)
    assert res.params["n_estimators"] == 30 and res.params["max_samples"] == 1.0
    assert res.extra["bag_size"] == train.n and res.extra["n_jobs"] == 2
    assert res.extra["min_oob_count"] > 0


def test_data_oob_stops_on_cancel(noisy_task):
    train, test = noisy_task
    seen = []

    def cancel(p):
        seen.append(p.step)
        if p.step > 0:  # mid-run, with trees still queued in the pool
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        DataOOB(n_estimators=400, n_jobs=2).fit(train, test, progress=cancel)
    # the first report after 0 comes at 20 trees, or sooner on a slow machine (every second)
    assert len(seen) == 2 and seen[0] == 0 and 0 < seen[1] <= 20

"""The Valuer contract for every method: progress, cancellation, determinism, chunking."""

import numpy as np
import pytest
import torch

from hostcp_core import Cancelled, get_valuer, make_synthetic
from hostcp_core.valuers.tmc_shapley import TMCShapley, convergence_error, merge_chunks

TINY = {
    "random": {},
    "knn_shapley": {"k": 3},
    "data_oob": {"n_estimators": 30},
    "loo": {},
    "influence": {},
    "tracin": {"epochs": 2, "n_checkpoints": 2, "hidden": (8,)},
    "tmc_shapley": {"max_permutations": 4, "check_every": 2, "learner": "centroid"},
    "dvrl": {"iterations": 3, "inner_iterations": 2, "hidden_dim": 8},
}


@pytest.fixture(scope="module")
def tiny_task():
    return make_synthetic(60, 40, seed=1, n_features=6)


@pytest.mark.parametrize("method", sorted(TINY))
def test_progress_is_reported_and_results_are_deterministic(tiny_task, method):
    train, test = tiny_task
    events = []
    res = get_valuer(method, device="cpu", fraction=0.25, **TINY[method]).fit(
        train, test, progress=events.append)
    assert events, "no progress reported"
    assert all(e.stage.startswith(method) for e in events)
    assert res.method == method and res.values.shape == (train.n,)
    assert len(res.selected) == 15
    np.testing.assert_array_equal(np.sort(np.argsort(-res.values, kind="stable")[:15]),
                                  res.selected)
    again = get_valuer(method, device="cpu", fraction=0.25, **TINY[method]).fit(train, test)
    np.testing.assert_array_equal(res.values, again.values)


@pytest.mark.parametrize("method", sorted(TINY))
def test_cancelled_from_the_callback_propagates(tiny_task, method):
    train, test = tiny_task
    calls = []

    def cancel(event):
        calls.append(event)
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        get_valuer(method, device="cpu", **TINY[method]).fit(train, test, progress=cancel)
    assert len(calls) == 1


def test_seed_changes_random_results(tiny_task):
    train, test = tiny_task
    a = get_valuer("random", seed=0).fit(train, test).values
    b = get_valuer("random", seed=1).fit(train, test).values
    assert not np.array_equal(a, b)


def test_run_chunk_is_deterministic_and_fit_is_the_merge_of_chunks(tiny_task):
    train, test = tiny_task
    tmc = TMCShapley(learner="centroid", check_every=3, max_permutations=6, err=0.0)
    a = tmc.run_chunk(train, test, 1, 3, seed=5)
    b = tmc.run_chunk(train, test, 1, 3, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, train.n)
    assert not np.array_equal(a, tmc.run_chunk(train, test, 2, 3, seed=5))
    assert not np.array_equal(a, tmc.run_chunk(train, test, 1, 3, seed=6))
    res = TMCShapley(learner="centroid", check_every=3, max_permutations=6, err=0.0,
                     seed=5).fit(train, test)
    values, err = merge_chunks([tmc.run_chunk(train, test, c, 3, seed=5) for c in range(2)])
    np.testing.assert_array_equal(values, res.values)
    assert res.extra["n_permutations"] == 6 and res.extra["convergence_error"] == err == 1.0


def test_convergence_error_matches_the_original_formula():
    rng = np.random.default_rng(0)
    mem = rng.normal(1.0, 0.1, size=(150, 4))
    running = np.cumsum(mem, 0) / np.arange(1, 151)[:, None]
    want = max(np.mean(np.abs(running[t] - running[-1]) / (np.abs(running[-1]) + 1e-12))
               for t in range(50, 150))
    assert convergence_error(mem) == pytest.approx(want)
    assert convergence_error(mem[:99]) == 1.0
    assert convergence_error(np.ones((200, 3))) == 0.0


def test_tmc_stops_when_converged(tiny_task):
    train, test = tiny_task
    res = TMCShapley(learner="centroid", check_every=100, max_permutations=2000,
                     err=0.5).fit(train, test)
    assert res.extra["converged"] and res.extra["n_permutations"] < 2000
    assert res.extra["convergence_error"] < 0.5


def test_unknown_options_are_rejected(tiny_task):
    train, test = tiny_task
    with pytest.raises(ValueError):
        get_valuer("influence", model="svm").fit(train, test)
    with pytest.raises(ValueError):
        get_valuer("influence", method="lissa", self_influence=True).fit(train, test)
    with pytest.raises(ValueError):
        get_valuer("tmc_shapley", learner="forest").fit(train, test)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["knn_shapley", "loo", "influence", "tracin", "dvrl"])
def test_cuda_matches_cpu(tiny_task, method):
    train, test = tiny_task
    cpu = get_valuer(method, device="cpu", **TINY[method]).fit(train, test).values
    gpu = get_valuer(method, device="cuda", **TINY[method]).fit(train, test).values
    assert np.isfinite(gpu).all()
    if method in ("knn_shapley", "loo", "influence"):  # float64 and no sampling: same numbers
        np.testing.assert_allclose(gpu, cpu, rtol=1e-6, atol=1e-9)

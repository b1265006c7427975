"""HOST-CP's online step on a fitted model: selections against the kept selected set, growing
the set, and a pickle-free save/load that reproduces the answers."""

import numpy as np
import pytest
import torch

from hostcp_core import DataError, NotFittedError, make_synthetic, split_test, subset_size
from hostcp_core.hostcp import HostCP
from hostcp_core.online import OnlineSelector

FAST = dict(epochs=3, warmup_epochs=1, batch_size=32, old_set_size=16, hidden=(16,))


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    train, test = make_synthetic(150, 150, seed=2)
    valuation, _ = split_test(test, 0.3, seed=2)
    hostcp = HostCP(0.25, **FAST)
    result = hostcp.fit(train, valuation)
    return hostcp, train, result.selected


def _batch(train, selected, rng, n_copies=10, n_other=10):
    copies = rng.choice(selected, n_copies, replace=False)
    others = rng.choice(np.setdiff1d(np.arange(train.n), selected), n_other, replace=False)
    rows = np.concatenate([copies, others])
    return copies, train.X[rows], train.y[rows]


def test_copies_of_selected_points_are_covered_by_them(fitted):
    hostcp, train, selected = fitted
    sel = OnlineSelector(hostcp).fit(train, selected)
    assert sel.n_selected == len(selected)
    copies, X, y = _batch(train, selected, np.random.default_rng(0))
    out = sel.select_batch(X, y)
    m = len(y)
    assert out.selected.sum() == subset_size(m, hostcp.fraction)
    assert np.all((out.u >= -1e-9) & (out.u <= 1 + 1e-9))
    assert out.u.sum() <= hostcp.fraction * m + 1e-6  # the layer's budget
    # facility location against the kept set: a copy of a selected point is represented by
    # that point (distance zero) and is not worth opening again
    position = {int(t): k for k, t in enumerate(selected)}
    own = [out.represented_by_old[i] == position[int(c)] for i, c in enumerate(copies)]
    assert np.mean(own) >= 0.75, out.represented_by_old
    assert not out.selected[:len(copies)].any()
    assert out.u[:len(copies)].max() < out.u[out.selected].min()
    # every row has exactly one kind of representative
    assert np.all((out.represented_by_old >= 0) ^ (out.represented_by_row >= 0))


def test_add_grows_the_set_and_save_load_round_trip(fitted, tmp_path):
    hostcp, train, selected = fitted
    sel = OnlineSelector(hostcp).fit(train, selected)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(16, train.n_features)).astype(np.float32) * 2
    y = rng.integers(0, train.n_classes, 16)
    first = sel.select_batch(X, y)
    chosen = np.flatnonzero(first.selected)
    sel.add(X[chosen], y[chosen], ids=[f"new{i}" for i in chosen])
    assert sel.n_selected == len(selected) + len(chosen)
    assert list(sel.old_ids_[-len(chosen):]) == [f"new{i}" for i in chosen]
    # the same batch again: the rows just added now represent themselves from the kept set
    again = sel.select_batch(X, y)
    added_at = np.arange(len(selected), sel.n_selected)
    assert list(again.represented_by_old[chosen]) == list(added_at)

    sel.save(tmp_path / "sel.npz")
    loaded = OnlineSelector.load(tmp_path / "sel.npz")
    assert loaded.n_selected == sel.n_selected and loaded.classes_ == train.classes
    replay = loaded.select_batch(X, y)
    np.testing.assert_allclose(replay.u, again.u, atol=1e-12)
    assert np.array_equal(replay.selected, again.selected)
    with np.load(tmp_path / "sel.npz", allow_pickle=False) as npz:  # no pickled objects inside
        assert "config" in npz.files and "model/head.weight" in npz.files


def test_errors(fitted):
    hostcp, train, selected = fitted
    with pytest.raises(NotFittedError):
        OnlineSelector(HostCP(0.25, **FAST)).fit(train, selected)
    sel = OnlineSelector(hostcp)
    with pytest.raises(NotFittedError):
        sel.select_batch(train.X[:4], train.y[:4])
    sel.fit(train, selected)
    with pytest.raises(DataError, match="features"):
        sel.select_batch(train.X[:4, :-1], train.y[:4])
    with pytest.raises(DataError, match="labels"):
        sel.select_batch(train.X[:4], np.full(4, train.n_classes))
    with pytest.raises(DataError, match="finite"):
        sel.select_batch(np.full((4, train.n_features), np.nan), train.y[:4])

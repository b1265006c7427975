"""HOST-CP: the estimator contract, reproducibility, training through the layer."""

import numpy as np
import pytest
import torch

from hostcp_core import Cancelled, make_synthetic, split_test, subset_size
from hostcp_core.hostcp import HostCP, _prior_shift, _stratified_top_k

FAST = dict(epochs=3, warmup_epochs=1, batch_size=32, old_set_size=16, hidden=(16,))


@pytest.fixture(scope="module")
def data():
    train, test = make_synthetic(150, 150, seed=1)
    valuation, _ = split_test(test, 0.3, seed=1)
    return train, valuation


def test_result_shape_and_subset(data):
    train, test = data
    res = HostCP(0.2, **FAST).fit(train, test)
    assert res.values.shape == (train.n,) and np.isfinite(res.values).all()
    assert len(res.selected) == subset_size(train.n, 0.2) == 30
    assert len(np.unique(res.selected)) == 30
    # stratified: the subset keeps the class balance of the training set, and scores are
    # standardised within each class
    assert abs(train.y[res.selected].mean() - train.y.mean()) <= 1 / 30 + 1e-9
    for c in (0, 1):
        assert abs(res.values[train.y == c].mean()) < 1e-9
        assert abs(res.values[train.y == c].std() - 1) < 1e-9
    assert res.method == "hostcp" and res.params["fraction"] == 0.2
    assert res.timings["total_s"] > 0 and res.extra["epochs_scored"] == 2
    assert res.extra["phi_grad_norm_median"] > 0  # φ really receives gradient through the layer


def test_reproducible_for_a_seed(data):
    train, test = data
    a = HostCP(**FAST, seed=3).fit(train, test)
    b = HostCP(**FAST, seed=3).fit(train, test)
    c = HostCP(**FAST, seed=4).fit(train, test)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)


def test_frozen_embedding_stays_put(data):
    train, test = data
    frozen = HostCP(**FAST, learn_embedding=False)
    frozen.fit(train, test)
    learned = HostCP(**FAST)
    learned.fit(train, test)
    # The same seed gives the same initial φ (checked on a fresh frozen run): only the
    # learned one moved.
    again = HostCP(**FAST, learn_embedding=False)
    again.fit(train, test)
    assert torch.equal(frozen.embedding_.map[0].weight, again.embedding_.map[0].weight)
    assert not torch.allclose(frozen.embedding_.map[0].weight, learned.embedding_.map[0].weight)


def test_progress_and_cancel(data):
    train, test = data
    events = []
    HostCP(**FAST).fit(train, test, progress=events.append)
    assert events[-1].step == events[-1].total and events[-1].stage == "train"
    assert all(e.loss is not None for e in events)

    def cancel(p):
        if p.step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        HostCP(**FAST).fit(train, test, progress=cancel)


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 0.0}, "fraction"),
    ({"fraction": 1.5}, "fraction"),
    ({"embedding": "pixels"}, "embedding"),
    ({"epochs": 2, "warmup_epochs": 2}, "warmup"),
    ({"score": "cost", "cost_head": False}, "cost_head"),
    ({"eps": 0.0}, "eps"),
])
def test_bad_parameters(data, kwargs, message):
    train, test = data
    with pytest.raises(ValueError, match=message):
        HostCP(**{**FAST, **kwargs}).fit(train, test)


@pytest.mark.parametrize("embedding", ["hidden", "gradient", "raw"])
def test_embedding_variants_run(data, embedding):
    train, test = data
    res = HostCP(**FAST, embedding=embedding, class_conditional=embedding != "raw",
                 score="mass").fit(train, test)
    assert np.isfinite(res.values).all() and res.values.max() > 0


def test_reference_solver_agrees_with_native(data):
    """The same run through cvxpylayers and through the native solver (batches of 8). φ is
    frozen and there is no old set, so neither Adam's rescaling of near-zero gradients nor a
    top-k tie can make the trajectories part ways; the layers' gradients are compared in
    test_selection_reference.py."""
    train, test = data
    small = train.subset(np.arange(48))
    kw = dict(epochs=2, warmup_epochs=1, batch_size=8, old_set_size=0, hidden=(8,), seed=0,
              learn_embedding=False)
    native, ref = HostCP(**kw), HostCP(**kw, solver="cvxpylayers")
    a, b = native.fit(small, test), ref.fit(small, test)
    np.testing.assert_allclose(ref.scores_["mean_u"], native.scores_["mean_u"], atol=1e-4)
    np.testing.assert_allclose(b.values, a.values, rtol=1e-3, atol=1e-6)


def test_stratified_top_k():
    y = np.array([0] * 8 + [1] * 2)
    values = np.arange(10.0)
    pick = _stratified_top_k(values, y, 5)
    assert len(pick) == 5 and (y[pick] == 1).sum() == 1 and 9 in pick


def test_prior_shift_is_the_bias_optimum():
    """δ minimises CE(z + δ, y) + l2/2 |δ|²: its gradient vanishes there, and after the shift the
    predicted class shares match the labels' up to the ridge, even for badly biased logits."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(300, 4, generator=gen, dtype=torch.float64) + torch.tensor([3.0, 0, 0, -2])
    y = torch.randint(0, 4, (300,), generator=gen)
    d = _prior_shift(z, y, l2=1e-3).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(z + d, y) + 0.5e-3 * (d * d).sum()
    (g,) = torch.autograd.grad(loss, d)
    assert g.abs().max() < 1e-8
    shares = torch.softmax(z + d, 1).mean(0)
    labels = torch.bincount(y, minlength=4).double() / 300
    # stationarity: shares − labels = −l2·δ, a small gap where the unshifted one is large
    assert torch.allclose(shares - labels, -1e-3 * d, atol=1e-8)
    unshifted = torch.softmax(z, 1).mean(0)
    assert (shares - labels).abs().max() < 0.005 < (unshifted - labels).abs().max()


def test_recalibrated_and_whole_test_set_lookahead_run(data):
    train, test = data
    res = HostCP(0.2, **FAST, recalibrate=True, test_batch_size=10_000).fit(train, test)
    assert np.isfinite(res.values).all() and len(res.selected) == 30
    assert res.extra["phi_grad_norm_median"] > 0

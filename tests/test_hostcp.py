"""HOST-CP: the estimator contract, reproducibility, training through the layer."""

import numpy as np
import pytest
import torch

from hostcp_core import Cancelled, make_synthetic, split_test, subset_size
from hostcp_core.hostcp import HostCP, _batch_distances, _prior_shift, _stratified_top_k

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
        if p.step >= 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        HostCP(**FAST).fit(train, test, progress=cancel)


def test_waves_report_progress_once_per_wave(data):
    train, test = data
    events = []
    HostCP(**FAST, wave=2).fit(train, test, progress=events.append)
    # 150 points in minibatches of 32: 5 per epoch, in waves of 2: 3 reports per epoch
    assert [e.step for e in events] == [2, 4, 5, 7, 9, 10, 12, 14, 15]
    assert events[-1].total == 15 and all(e.loss is not None and e.loss > 0 for e in events)
    with pytest.raises(Cancelled):
        HostCP(**FAST, wave=2).fit(train, test, progress=lambda p: (_ for _ in ()).throw(
            Cancelled()) if p.step >= 4 else None)


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


# ---------------------------------------------------------------- waves (issue 12)
def _fit_pair(train, test, **kw):
    """The per-minibatch algorithm and the wave code run at W = 1, same seed."""
    a = HostCP(**kw)
    a.fit(train, test)
    b = HostCP(**kw)
    b._wave_path_at_one = True
    b.fit(train, test)
    return a, b


def test_wave_code_at_one_is_the_per_minibatch_algorithm(data):
    """W = 1 through the wave code reproduces the per-minibatch loop: with φ frozen the whole
    trajectory (u, mass, value and the subset) agrees to float32 rounding; with φ learned, the
    one φ gradient of an epoch of one minibatch is the same."""
    train, test = data
    kw = dict(FAST, epochs=3, seed=3, learn_embedding=False)
    a, b = _fit_pair(train, test, **kw)
    for key in ("mean_u", "mass", "value"):
        np.testing.assert_allclose(b.scores_[key], a.scores_[key], atol=2e-5, rtol=0)
    np.testing.assert_array_equal(a.result.selected, b.result.selected)
    # one minibatch per epoch: the φ gradient's norm (the median over that one step) agrees
    small = train.subset(np.arange(32))
    a, b = _fit_pair(small, test, **dict(FAST, epochs=2, seed=3))
    assert a.result.extra["phi_grad_norm_median"] > 0
    np.testing.assert_allclose(b.result.extra["phi_grad_norm_median"],
                               a.result.extra["phi_grad_norm_median"], rtol=1e-5)


def test_auto_wave_is_the_default_and_waves_are_reproducible(data):
    train, test = data
    # "auto": per minibatch (W = 1) on small data, so the paper protocol is unchanged
    assert HostCP().wave == "auto"
    assert HostCP(**FAST).fit(train, test).extra["wave"] == 1
    a = HostCP(**FAST, wave=3, seed=2).fit(train, test)
    b = HostCP(**FAST, wave=3, seed=2).fit(train, test)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.extra["wave"] == 3 and a.extra["phi_grad_norm_median"] > 0
    assert len(a.selected) == 30 and len(np.unique(a.selected)) == 30
    # the GPU's solver (no read-back) and the CPU's (compacted) give the same run
    c = HostCP(**FAST, wave=3, seed=2, layer_solver="static").fit(train, test)
    np.testing.assert_allclose(c.values, a.values, atol=1e-6)


def test_wave_problems_mask_a_short_minibatch(data):
    """A short minibatch padded into a wave gets, on its real points, the distances (hence
    the problem) it has alone; its padded points and old columns are masked."""
    train, test = data
    h = HostCP(**FAST)
    torch.manual_seed(0)
    from hostcp_core.hostcp import _Embedding
    embed = _Embedding(12, 8, 16, cost_head=True)
    torch.nn.init.normal_(embed.cost[-1].weight)   # a non-constant cost
    params = dict(embed.named_parameters())
    g = torch.Generator().manual_seed(0)
    R, Ro = torch.randn(2, 10, 12, generator=g), torch.randn(2, 6, 12, generator=g)
    yb, yo = torch.randint(0, 2, (2, 10), generator=g), torch.randint(0, 2, (2, 6), generator=g)
    real = torch.arange(10)[None, :] < torch.tensor([[10], [7]])
    valid = torch.arange(6)[None, :] < torch.tensor([[6], [4]])
    Dn, Do = h._problems(params, embed, R, Ro, yb, yo, real, valid)
    dn, do = h._problems(params, embed, R[1:, :7], Ro[1:, :4], yb[1:, :7], yo[1:, :4],
                         real[1:, :7], valid[1:, :4])
    torch.testing.assert_close(Dn[1, :7, :7], dn[0])
    torch.testing.assert_close(Do[1, :7, :4], do[0, :, :4])
    assert (Dn[1, 7:] >= 1e3).all() and (Do[1, :7, 4:] >= 1e3).all()
    assert (Do[1, 7:, -1] == 0).all() and (Do[0, :, -1] >= 1e3).all()


@pytest.mark.parametrize("kwargs, message", [({"wave": 0}, "wave"), ({"wave": "big"}, "wave"),
                                             ({"layer_solver": "fast"}, "layer_solver")])
def test_bad_wave_parameters(data, kwargs, message):
    train, test = data
    with pytest.raises(ValueError, match=message):
        HostCP(**{**FAST, **kwargs}).fit(train, test)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_waves_on_cuda_match_cpu(data):
    train, test = data
    cpu = HostCP(**FAST, wave=3, seed=1, device="cpu").fit(train, test)
    gpu = HostCP(**FAST, wave=3, seed=1, device="cuda").fit(train, test)
    assert gpu.extra["wave"] == 3
    # different kernels, so not bitwise: the runs stay close over three epochs
    np.testing.assert_allclose(gpu.values, cpu.values, atol=0.1)
    assert len(np.intersect1d(gpu.selected, cpu.selected)) >= 24


def test_auto_wave_is_per_device_and_a_small_part_of_an_epoch(data):
    from hostcp_core.hostcp import WAVE_AUTO

    h = HostCP(wave="auto")
    cpu = torch.device("cpu")
    assert h._wave_size(cpu, 10) == 1                  # under 16 waves: per minibatch
    assert h._wave_size(cpu, 160) == min(10, WAVE_AUTO["cpu"])
    assert h._wave_size(cpu, 100_000) == WAVE_AUTO["cpu"]
    assert h._wave_size(torch.device("cuda"), 100_000) == WAVE_AUTO["cuda"]
    train, test = data
    assert HostCP(**FAST, wave="auto").fit(train, test).extra["wave"] == 1


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("classes", [1, 3])
def test_old_set_search_distances_are_cdists(static, classes):
    # Both searches (per class on a CPU, every pair masked for a GPU) give each pool point's
    # distance to the nearest real same-class point of each batch, as torch.cdist does.
    g = torch.Generator().manual_seed(classes)
    W, n, pool, dim = 5, 12, 40, 4
    hb, P = torch.randn(W, n, dim, generator=g), torch.randn(pool, dim, generator=g)
    yb, yp = torch.randint(0, classes, (W, n), generator=g), torch.randint(0, classes, (pool,),
                                                                           generator=g)
    real = torch.ones(W, n, dtype=torch.bool)
    real[-1, 7:] = False
    yb[1] = 0     # a batch with a single class: the others' pool points have no neighbour there
    ref = torch.cdist(hb, P.expand(W, -1, -1))
    ref = ref.masked_fill((yb[:, :, None] != yp) | ~real[:, :, None], float("inf")).amin(1)
    got = _batch_distances(hb, yb, real, P, yp, static=static)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    if classes > 1:
        assert torch.isinf(got[1]).any()
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], atol=1e-5, rtol=1e-5)

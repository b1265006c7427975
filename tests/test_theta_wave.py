"""ThetaWave: a wave's θ steps and look-aheads on static buffers (replayed as a CUDA graph on
a GPU) compute what HostCP's per-minibatch algorithm computes."""

from __future__ import annotations

import copy

import pytest
import torch

from hostcp_core._theta_wave import ThetaWave
from hostcp_core.hostcp import HostCP
from hostcp_core.models import MLP

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _wave(W=4, n=16, d=5, K=3, seed=0, short=11, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    xb = torch.randn(W, n, d, generator=g)
    yb = torch.randint(0, K, (W, n), generator=g)
    u = torch.rand(W, n, generator=g)
    real = torch.ones(W, n, dtype=torch.bool)
    real[-1, short:] = False            # a short last minibatch, padded
    xb[-1, short:] = xb[-1, :1]          # padded as HostCP pads: copies of its first point
    u[-1, short:] = 0.0
    Xt = torch.randn(40, d, generator=g)
    Yt = torch.randint(0, K, (40,), generator=g)
    tb = torch.stack([torch.randperm(40, generator=g)[:24] for _ in range(W)])
    return [x.to(device) for x in (xb, yb, u, real, tb, Xt, Yt)]


def _model(d=5, K=3, device="cpu", capturable=False):
    torch.manual_seed(1)
    model = MLP(d, K, (8,)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4,
                           capturable=capturable)
    return model, opt


def _eager(model, opt, xb, yb, u, real, tb, Xt, Yt, test_batch_size):
    """The per-minibatch algorithm (HostCP._theta_step, one minibatch after another, unpadded):
    dV/du (W, n, 0 on padded points) and Σ loss·size."""
    h = HostCP(fraction=0.25, test_batch_size=test_batch_size)
    # the test rows it draws come from a generator in the state the wave's draws started from
    gen = torch.Generator().manual_seed(7)
    loss = torch.zeros((), dtype=torch.float64, device=xb.device)
    dV = torch.zeros_like(u)
    for w, size in enumerate(real.sum(1).tolist()):
        step_loss, dV[w, :size] = h._theta_step(model, opt, xb[w, :size], yb[w, :size],
                                                u[w, :size], Xt, Yt, gen)
        loss += step_loss * size
    return dV, loss


@pytest.mark.parametrize("whole_test_set", [True, False])
def test_static_wave_equals_the_per_minibatch_steps(whole_test_set):
    xb, yb, u, real, tb, Xt, Yt = _wave()
    if not whole_test_set:   # the per-minibatch steps draw their test rows from the generator
        gen = torch.Generator().manual_seed(7)
        tb = torch.stack([torch.randperm(40, generator=gen)[:24] for _ in range(4)])
    m1, o1 = _model()
    m2, o2 = copy.deepcopy((m1, o1))
    dV_ref, loss_ref = _eager(m1, o1, xb, yb, u, real, tb, Xt, Yt,
                              10_000 if whole_test_set else 24)
    loss = torch.zeros((), dtype=torch.float64)
    wave = ThetaWave(m2, o2, fraction=0.25, lookahead_lr=0.1, graph=False)
    dV = wave.run(xb, yb, u, real, None if whole_test_set else tb, Xt, Yt, loss)
    torch.testing.assert_close(dV, dV_ref, atol=1e-6, rtol=1e-5)
    assert float(dV[-1, 11:].abs().max()) == 0.0
    torch.testing.assert_close(loss, loss_ref, atol=1e-6, rtol=1e-6)
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_static_wave_refuses_another_shape():
    xb, yb, u, real, tb, Xt, Yt = _wave()
    model, opt = _model()
    wave = ThetaWave(model, opt, fraction=0.25, lookahead_lr=0.1, graph=False)
    loss = torch.zeros((), dtype=torch.float64)
    wave.run(xb, yb, u, real, tb, Xt, Yt, loss)
    with pytest.raises(ValueError, match="shape"):
        wave.run(xb[:2], yb[:2], u[:2], real[:2], tb[:2], Xt, Yt, loss)


@pytest.mark.gpu
@cuda
def test_cuda_graph_replays_the_eager_waves():
    """Three waves replayed from one capture: the model, the optimizer's moments and every
    wave's dV/du as eager steps give them (the capture's warm-up leaves no trace)."""
    m1, o1 = _model(device="cuda", capturable=True)
    m2, o2 = copy.deepcopy((m1, o1))
    eager = ThetaWave(m1, o1, fraction=0.25, lookahead_lr=0.1, graph=False)
    graph = ThetaWave(m2, o2, fraction=0.25, lookahead_lr=0.1, graph=True)
    l1 = torch.zeros((), dtype=torch.float64, device="cuda")
    l2 = torch.zeros((), dtype=torch.float64, device="cuda")
    *_, Xt, Yt = _wave(device="cuda")   # one test set: the graph reads its memory
    for seed in range(3):
        xb, yb, u, real, tb, _, _ = _wave(seed=seed, device="cuda")
        a = eager.run(xb, yb, u, real, tb, Xt, Yt, l1)
        b = graph.run(xb, yb, u, real, tb, Xt, Yt, l2)
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(l2, l1, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="same Xt"):
        graph.run(xb, yb, u, real, tb, Xt.clone(), Yt, l2)
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(o2.state[q]["exp_avg"], o1.state[p]["exp_avg"],
                                   atol=1e-6, rtol=1e-5)
        assert float(o2.state[q]["step"]) == float(o1.state[p]["step"]) == 12


@pytest.mark.gpu
@cuda
def test_hostcp_with_cuda_graphs_matches_without():
    from hostcp_core import make_synthetic

    train, test = make_synthetic(600, 300, seed=0)
    kw = dict(epochs=3, warmup_epochs=1, wave=3, seed=1, device="cuda")
    on = HostCP(**kw).fit(train, test)
    off = HostCP(**kw, cuda_graphs=False).fit(train, test)
    assert on.extra["cuda_graphs"] == "on" and off.extra["cuda_graphs"] == "off"
    # the same algorithm; padded sums differ in the last bits, which training can amplify
    torch.testing.assert_close(torch.as_tensor(on.values), torch.as_tensor(off.values),
                               atol=0.05, rtol=0)
    assert len(set(on.selected) & set(off.selected)) >= 0.9 * len(on.selected)

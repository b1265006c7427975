"""Native selection solver: KKT conditions, exact gradients (finite differences), API contract."""

from __future__ import annotations

import pytest
import torch

from hostcp_core.selection import (
    SelectionLayer,
    SelectionOutput,
    SolverError,
    _native,
    normalize_distances,
    select_top_k,
    solve_selection,
)
from hostcp_core.selection.instances import clustered_distances


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _instance(n, m, batch=None, seed=0, **kw):
    Dn, Do = clustered_distances(n, m, batch=batch, seed=seed, **kw)
    return normalize_distances(Dn, Do)


def _check_feasible(out: SelectionOutput, budget: float, atol: float = 1e-8) -> None:
    rows = out.Zn.sum(-1) + out.Zo.sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=atol)
    assert (out.u.sum(-1) <= budget + atol).all()
    assert (out.Zn >= -atol).all() and (out.Zo >= -atol).all()
    assert (out.Zn <= out.u.unsqueeze(-2) + atol).all()
    assert (out.u <= 1 + atol).all() and (out.u >= -atol).all()


def _kkt_objective(Dn, Do, out, eps):
    return (
        (Dn * out.Zn).sum()
        + (Do * out.Zo).sum()
        + 0.5 * eps * (out.Zn.square().sum() + out.Zo.square().sum() + out.u.square().sum())
    )


@pytest.mark.parametrize("n,m", [(12, 0), (16, 24), (40, 64)])
@pytest.mark.parametrize("eps", [0.01, 0.05])
def test_solution_is_feasible_and_optimal(n, m, eps):
    Dn, Do = _instance(n, m, seed=n + m)
    K = 0.25 * n
    out = solve_selection(Dn, Do, K, eps=eps)
    _check_feasible(out, K)
    assert out.residual <= 1e-9 and out.iterations >= 1
    # Optimality: no feasible perturbation toward a random feasible point lowers the objective.
    f0 = _kkt_objective(Dn, Do, out, eps)
    other = solve_selection(Dn + 0.3 * torch.rand_like(Dn), Do + 0.3 * torch.rand_like(Do), K, eps)
    for s in (1e-3, 1e-1, 1.0):
        mix = SelectionOutput(
            (1 - s) * out.Zn + s * other.Zn,
            (1 - s) * out.Zo + s * other.Zo,
            (1 - s) * out.u + s * other.u,
        )
        assert _kkt_objective(Dn, Do, mix, eps) >= f0 - 1e-10


def test_hessian_matches_autograd_jacobian():
    # The closed-form generalised Hessian M must equal −ε ∂G/∂θ (G the dual gradient) at a
    # generic (non-optimal) dual point, where every entry is strictly inside its piece.
    n, m, eps = 10, 7, 0.05
    Dn, Do = _instance(n, m, batch=1, seed=3)
    K = torch.tensor([3.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    alpha, lam, *_ = _native.newton_solve(Dn, Do, K, eps)
    # a slightly perturbed optimal dual: realistic pieces, no ties
    theta = torch.cat([alpha[0], lam]) + 0.02 * eps * torch.randn(
        n + 1, generator=g, dtype=torch.float64
    )
    theta[n] = theta[n].abs()

    def G(th):
        p = _native._primal(th[None, :n], th[None, n], Dn, Do, eps)
        ga, gl = _native._grad(p, K)
        return torch.cat([ga[0], gl])

    J = torch.autograd.functional.jacobian(G, theta)
    p = _native._primal(theta[None, :n], theta[None, n], Dn, Do, eps)
    M = _native._hessian(_native._masks(p, theta[None, :n], Do, eps, 0.0))[0]
    assert M[:n, :n].diagonal().min() > 0 and M[n, n] > 0  # non-trivial pieces
    torch.testing.assert_close(-eps * J, M, atol=1e-10, rtol=0)


def _fd_check(n, m, eps, seed, batch=None):
    Dn, Do = _instance(n, m, batch=batch, seed=seed)
    K = max(1.0, 0.2 * n)
    g = torch.Generator().manual_seed(seed)
    wn = torch.randn(Dn.shape, generator=g, dtype=torch.float64)
    wu = torch.randn(Dn.shape[:-1], generator=g, dtype=torch.float64)
    wo = torch.randn(Do.shape, generator=g, dtype=torch.float64)

    def loss(a, b):
        o = solve_selection(a, b, K, eps=eps, tol=1e-12)
        return (o.Zn * wn).sum() + (o.u * wu).sum() + (o.Zo * wo).sum()

    Dn_, Do_ = Dn.clone().requires_grad_(True), Do.clone().requires_grad_(True)
    loss(Dn_, Do_).backward()
    gDo = Do_.grad if Do_.grad is not None else torch.zeros_like(Do)
    assert Dn_.grad.abs().sum() > 0  # an informative gradient, unlike the LP's
    h = 1e-7
    errs = []
    for _ in range(3):
        vn = torch.randn(Dn.shape, generator=g, dtype=torch.float64)
        vo = torch.randn(Do.shape, generator=g, dtype=torch.float64)
        norm = (vn.square().sum() + vo.square().sum()).sqrt()
        vn, vo = vn / norm, vo / norm
        with torch.no_grad():
            fd = (loss(Dn + h * vn, Do + h * vo) - loss(Dn - h * vn, Do - h * vo)) / (2 * h)
        an = (Dn_.grad * vn).sum() + (gDo * vo).sum()
        # relative error, with a floor for directions along which the solution is constant
        errs.append(float((fd - an).abs() / max(fd.abs(), an.abs(), 1e-3)))
    return max(errs)


@pytest.mark.parametrize("n,m,seed", [(10, 0, 0), (16, 16, 1), (24, 48, 2), (48, 96, 5)])
@pytest.mark.parametrize("eps", [0.01, 0.05])
def test_gradient_matches_finite_differences(n, m, seed, eps):
    assert _fd_check(n, m, eps, seed) <= 1e-5


def test_gradient_batched_finite_differences():
    assert _fd_check(12, 20, 0.05, seed=7, batch=3) <= 1e-5


def test_gradient_through_layer_normalisation_and_float32():
    Dn, Do = clustered_distances(16, 8, seed=4, dtype=torch.float32)
    Dn.requires_grad_(True)
    Do.requires_grad_(True)
    out = SelectionLayer(fraction=0.25, eps=0.05)(Dn, Do)
    assert out.u.dtype == torch.float32 and out.Zn.dtype == torch.float32
    out.u.square().sum().backward()
    assert Dn.grad.dtype == torch.float32 and torch.isfinite(Dn.grad).all()
    assert Dn.grad.abs().sum() > 0


def test_batched_equals_per_problem():
    Dn, Do = _instance(14, 9, batch=4, seed=11)
    budget = torch.tensor([2.0, 3.0, 3.5, 5.0])
    out = solve_selection(Dn, Do, budget, eps=0.03)
    for b in range(4):
        one = solve_selection(Dn[b], Do[b], float(budget[b]), eps=0.03)
        torch.testing.assert_close(out.u[b], one.u, atol=1e-9, rtol=0)
        torch.testing.assert_close(out.Zn[b], one.Zn, atol=1e-9, rtol=0)
        torch.testing.assert_close(out.Zo[b], one.Zo, atol=1e-9, rtol=0)
        _check_feasible(one, float(budget[b]))


def test_no_old_points_and_budget_binds():
    Dn, Do = _instance(20, 0, seed=2, clusters=6)
    out = solve_selection(Dn, Do, 4.0, eps=0.05)
    assert out.Zo.shape == (20, 0)
    _check_feasible(out, 4.0)
    # Without old points every row needs an open new column; 6 clusters, budget 4: binding.
    assert abs(float(out.u.sum()) - 4.0) < 1e-8


def test_far_old_points_change_nothing():
    # Old points far beyond every new distance are never used: same solution as m = 0.
    Dn, _ = _instance(15, 0, seed=5)
    Do = torch.full((15, 7), 50.0, dtype=torch.float64)
    with_old = solve_selection(Dn, Do, 3.0, eps=0.05)
    without = solve_selection(Dn, Do[:, :0], 3.0, eps=0.05)
    assert float(with_old.Zo.abs().max()) == 0.0
    torch.testing.assert_close(with_old.u, without.u, atol=1e-9, rtol=0)
    torch.testing.assert_close(with_old.Zn, without.Zn, atol=1e-9, rtol=0)


@pytest.mark.parametrize("eps", [0.001, 0.005])
def test_degenerate_clustered_small_eps(eps):
    # Duplicated points (zero off-diagonal distances) and tight clusters.
    Dn, Do = _instance(24, 16, seed=9, clusters=3, spread=0.02)
    idx = torch.arange(0, 24, 2)
    Dn = Dn.clone()
    Dn[idx, idx + 1] = 0.0
    Dn[idx + 1, idx] = 0.0
    out = solve_selection(Dn, Do, 4.8, eps=eps, max_iter=400)
    _check_feasible(out, 4.8)


def test_flat_rows_step_to_their_breakpoint(monkeypatch):
    # Problem 1 of this batch (found in a sweep) made cold-start Newton cycle at eps = 0.001
    # with the residual at exactly 1: a row with every entry at a bound took the ridge's step,
    # jumping between row sums 0 and 2. Stepping past the row's next breakpoint solves it.
    Dn, Do = _instance(16, 0, batch=5, seed=421, clusters=4, spread=0.05)
    K = torch.full((1,), 3.2, dtype=torch.float64)
    *_, it, res = _native.newton_solve(Dn[1:2], Do[1:2], K, 0.001, max_iter=100)
    assert it < 100 and float(res) <= 1e-9
    monkeypatch.setattr(_native, "_breakpoint_step", lambda d_a, *args, **kw: d_a)
    *_, it, res = _native.newton_solve(Dn[1:2], Do[1:2], K, 0.001, max_iter=100,
                                       raise_on_failure=False)
    assert it == 100 and float(res) == 1.0


def test_unsolved_problems_recover_by_continuation(monkeypatch):
    # Problems the direct Newton leaves unsolved (here: a budget of 5 iterations) are
    # re-solved by eps-continuation without disturbing the others.
    Dn, Do = _instance(16, 0, batch=5, seed=421, clusters=4, spread=0.05)
    direct = [solve_selection(Dn[b], Do[b], 3.2, eps=0.001, max_iter=300) for b in range(5)]
    assert all(one.iterations < 100 for one in direct)
    monkeypatch.setattr(_native, "_DIRECT_ITER", 5)
    out = solve_selection(Dn, Do, 3.2, eps=0.001, max_iter=300)
    _check_feasible(out, 3.2)
    assert out.iterations > 5  # the fallback ran
    for b in range(5):
        torch.testing.assert_close(out.u[b], direct[b].u, atol=1e-8, rtol=0)


def test_solver_error_when_iterations_run_out():
    Dn, Do = _instance(16, 8, seed=1)
    with pytest.raises(SolverError) as info:
        solve_selection(Dn, Do, 3.0, eps=0.01, max_iter=1)
    assert info.value.residual > 1e-9


def test_eps_zero_refused():
    with pytest.raises(ValueError, match="gradient"):
        SelectionLayer(eps=0.0)
    with pytest.raises(ValueError, match="gradient"):
        solve_selection(torch.zeros(3, 3), torch.ones(3, 2), 1.0, eps=0.0)


@pytest.mark.parametrize(
    "kwargs", [{"eps": -0.1}, {"fraction": 0.0}, {"fraction": 1.5}, {"solver": "scs"}]
)
def test_bad_configuration_refused(kwargs):
    with pytest.raises(ValueError):
        SelectionLayer(**kwargs)


def test_bad_shapes_and_budgets_refused():
    with pytest.raises(ValueError):
        solve_selection(torch.zeros(3, 4), torch.zeros(3, 2), 1.0)  # Dn not square
    with pytest.raises(ValueError):
        solve_selection(torch.zeros(3, 3), torch.zeros(4, 2), 1.0)  # rows differ
    with pytest.raises(ValueError):
        solve_selection(torch.zeros(2, 3, 3), torch.zeros(3, 3, 2), 1.0)  # batch differs
    with pytest.raises(ValueError):
        solve_selection(torch.zeros(3, 3), torch.zeros(3, 0), 0.5)  # m = 0 needs K >= 1
    with pytest.raises(ValueError):
        solve_selection(torch.zeros(2, 3, 3), torch.zeros(2, 3, 1), torch.ones(3))
    with pytest.raises(ValueError):
        solve_selection(torch.full((3, 3), float("nan")), torch.zeros(3, 1), 1.0)


def test_layer_is_scale_invariant_with_normalisation():
    Dn, Do = clustered_distances(12, 6, seed=8)
    layer = SelectionLayer(fraction=0.25, eps=0.05)
    a, b = layer(Dn, Do), layer(7.0 * Dn, 7.0 * Do)
    torch.testing.assert_close(a.u, b.u, atol=1e-7, rtol=0)


def test_select_top_k_sizes_and_ties():
    Dn, Do = _instance(20, 10, batch=2, seed=6)
    out = SelectionLayer(fraction=0.2, eps=0.05)(Dn, Do)
    idx = select_top_k(out.u, 4)
    assert idx.shape == (2, 4) and idx.dtype == torch.long
    for b in range(2):
        assert len(set(idx[b].tolist())) == 4
        assert float(out.u[b, idx[b]].min()) >= float(out.u[b].sort(descending=True).values[3])
    # Ties in u are broken by column mass of Zn.
    u = torch.tensor([1.0, 0.5, 1.0, 0.0])
    Zn = torch.zeros(4, 4)
    Zn[:, 2] = 1.0
    Zn[0, 0] = 0.5
    assert select_top_k(u, 2, Zn).tolist() == [2, 0]
    assert select_top_k(SelectionOutput(Zn, torch.zeros(4, 0), u), 1).tolist() == [2]
    with pytest.raises(ValueError):
        select_top_k(u, 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    Dn, Do = _instance(32, 48, batch=3, seed=12)
    cpu = solve_selection(Dn, Do, 6.0, eps=0.05)
    Dn_c = Dn.cuda().requires_grad_(True)
    Do_c = Do.cuda().requires_grad_(True)
    gpu = solve_selection(Dn_c, Do_c, 6.0, eps=0.05)
    assert gpu.u.device.type == "cuda"
    torch.testing.assert_close(gpu.u.cpu(), cpu.u, atol=1e-8, rtol=0)
    gpu.u.sum().backward()
    Dn_r = Dn.clone().requires_grad_(True)
    solve_selection(Dn_r, Do, 6.0, eps=0.05).u.sum().backward()
    torch.testing.assert_close(Dn_c.grad.cpu(), Dn_r.grad, atol=1e-7, rtol=1e-6)


# ---------------------------------------------------------------- batched solver without host reads
from hostcp_core.selection._static import (  # noqa: E402
    PAD_DISTANCE,
    NewtonGraphs,
    implicit_vjp,
    mask_padding,
    newton_compact,
    newton_static,
    solve_batch,
)


def _batch_instance(B=6, n=24, m=18, seed=5):
    Dn, Do = _instance(n, m, batch=B, seed=seed)
    return Dn, Do, torch.full((B,), 0.25 * n, dtype=torch.float64)


@pytest.mark.parametrize("check_every", [1, 8, None])
def test_static_solver_matches_newton_solve(check_every):
    Dn, Do, K = _batch_instance()
    ref_a, ref_l, ref_p, ref_it, _ = _native.newton_solve(Dn, Do, K, 0.05)
    # the fixed budget (check_every=None) must cover the slowest problem and its halvings
    a, lam, p, it, res = newton_static(Dn, Do, K, 0.05, max_iter=60, check_every=check_every)
    assert (res <= 1e-9).all()
    assert it >= ref_it and (check_every is not None or it == 60)
    for got, want in ((p.u, ref_p.u), (p.Zn, ref_p.Zn), (p.Zo, ref_p.Zo), (a, ref_a)):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


def test_compact_solver_is_newton_solve_per_problem():
    Dn, Do, K = _batch_instance(seed=6)
    a, lam, p, it, res = newton_compact(Dn, Do, K, 0.05)
    per = [_native.newton_solve(Dn[b:b + 1], Do[b:b + 1], K[b:b + 1], 0.05) for b in range(6)]
    assert (res <= 1e-9).all() and it == max(x[3] for x in per)
    for b, (ra, _, rp, _, _) in enumerate(per):
        torch.testing.assert_close(p.u[b], rp.u[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(a[b], ra[0], atol=1e-12, rtol=0)


def test_fixed_budget_never_reads_back():
    # On the meta device a tensor has no data: any read-back to Python (.item(), bool(),
    # int()) raises, so this runs through only if the fixed-budget loop never reads.
    Dn = torch.empty(3, 16, 16, dtype=torch.float64, device="meta")
    Do = torch.empty(3, 16, 9, dtype=torch.float64, device="meta")
    K = torch.empty(3, dtype=torch.float64, device="meta")
    *_, it, res = newton_static(Dn, Do, K, 0.05, max_iter=5, check_every=None)
    assert it == 5 and res.device.type == "meta"
    with pytest.raises(RuntimeError):  # the checked variant does read (once per 2 steps here)
        newton_static(Dn, Do, K, 0.05, max_iter=5, check_every=2)


@pytest.mark.parametrize("mode", ["static", "adaptive"])
def test_solve_batch_gradient_matches_autograd_layer(mode):
    Dn, Do, K = _batch_instance(B=3, n=16, m=12, seed=8)
    g = torch.Generator().manual_seed(1)
    wu = torch.randn(3, 16, generator=g, dtype=torch.float64)
    wn = torch.randn(3, 16, 16, generator=g, dtype=torch.float64)
    Dn_r, Do_r = Dn.clone().requires_grad_(True), Do.clone().requires_grad_(True)
    ref = solve_selection(Dn_r, Do_r, K, eps=0.05)
    ((ref.u * wu).sum() + (ref.Zn * wn).sum()).backward()
    sol = solve_batch(Dn, Do, K, 0.05, mode=mode)
    torch.testing.assert_close(sol.u, ref.u.detach(), atol=1e-9, rtol=0)
    gDn, gDo = implicit_vjp(sol.saved, 0.05, wn, torch.zeros_like(sol.Zo), wu)
    torch.testing.assert_close(gDn, Dn_r.grad, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(gDo, Do_r.grad, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("spread", [None, 0.02])
def test_range_solve_gives_the_pseudo_inverse_cotangents(spread, monkeypatch):
    """CUDA's backward solve (Cholesky of M + δI with refinement, ``_range_solve``) gives the
    cotangents of the CPU's pseudo-inverse, also on tight clusters with duplicated points
    (singular M: rows served only by shared capped columns)."""
    kw = {} if spread is None else {"clusters": 3, "spread": spread}
    Dn, Do = _instance(24, 16, batch=4, seed=9, **kw)
    if spread is not None:   # duplicates: zero off-diagonal distances
        idx = torch.arange(0, 24, 2)
        Dn = Dn.clone()
        Dn[:, idx, idx + 1] = 0.0
        Dn[:, idx + 1, idx] = 0.0
    K = torch.full((4,), 6.0, dtype=torch.float64)
    sol = solve_batch(Dn, Do, K, 0.01, mode="adaptive")
    g = torch.Generator().manual_seed(2)
    wn, wo = (torch.randn(x.shape, generator=g, dtype=torch.float64) for x in (sol.Zn, sol.Zo))
    wu = torch.randn(sol.u.shape, generator=g, dtype=torch.float64)
    want = implicit_vjp(sol.saved, 0.01, wn, wo, wu)
    M = _native._freeze_lambda(_native._hessian(_native._Masks(*sol.saved[:4])), sol.saved[4])
    assert int(torch.linalg.matrix_rank(M).min()) < M.shape[-1] or spread is None
    monkeypatch.setattr(_native, "_pinv_solve", _native._range_solve)
    got = implicit_vjp(sol.saved, 0.01, wn, wo, wu)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)


def test_float32_static_solve_close_to_float64():
    Dn, Do, K = _batch_instance(B=4, n=32, m=24, seed=9)
    ref = solve_batch(Dn, Do, K, 0.05, mode="static")
    sol = solve_batch(Dn.float(), Do.float(), K.float(), 0.05, tol=1e-5, mode="static")
    assert sol.u.dtype == torch.float32 and float(sol.residual.max()) <= 1e-5
    torch.testing.assert_close(sol.u.double(), ref.u, atol=2e-4, rtol=0)
    assert torch.equal(select_top_k(sol.u, 8), select_top_k(ref.u, 8))


@pytest.mark.parametrize("mode", ["static", "adaptive"])
def test_padded_problem_equals_unpadded(mode):
    """A minibatch of 20 points padded to 32 (and 9 of 14 old columns real), masked by
    mask_padding, has the unpadded problem's solution and gradient on its real part."""
    n_real, n, m_real, m = 20, 32, 9, 14
    Dn, Do = _instance(n, m, batch=1, seed=11)
    K = torch.tensor([0.25 * n_real], dtype=torch.float64)
    real = torch.arange(n) < n_real
    valid = torch.arange(m) < m_real
    Dp, Op = mask_padding(Dn, Do, real[None], valid[None])
    assert Op.shape == (1, n, m + 1) and float(Dp[0, n_real:, :].min()) == PAD_DISTANCE
    Du, Ou = Dn[:, :n_real, :n_real], Do[:, :n_real, :m_real]
    pad, unpad = solve_batch(Dp, Op, K, 0.05, mode=mode), solve_batch(Du, Ou, K, 0.05, mode=mode)
    torch.testing.assert_close(pad.u[0, :n_real], unpad.u[0], atol=1e-9, rtol=0)
    torch.testing.assert_close(pad.Zn[0, :n_real, :n_real], unpad.Zn[0], atol=1e-9, rtol=0)
    torch.testing.assert_close(pad.Zo[0, :n_real, :m_real], unpad.Zo[0], atol=1e-9, rtol=0)
    assert float(pad.u[0, n_real:].abs().max()) == 0.0          # padded points never open
    assert float(pad.Zo[0, :n_real, m_real:].abs().max()) == 0.0  # nor serve or get served
    torch.testing.assert_close(pad.Zo[0, n_real:, -1], torch.ones(n - n_real, dtype=Dn.dtype))
    g = torch.randn(1, n_real, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gp = torch.cat([g, torch.zeros(1, n - n_real, dtype=g.dtype)], 1)
    gDp, gOp = implicit_vjp(pad.saved, 0.05, torch.zeros_like(pad.Zn), torch.zeros_like(pad.Zo),
                            gp)
    gDu, gOu = implicit_vjp(unpad.saved, 0.05, torch.zeros_like(unpad.Zn),
                            torch.zeros_like(unpad.Zo), g)
    torch.testing.assert_close(gDp[0, :n_real, :n_real], gDu[0], atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(gOp[0, :n_real, :m_real], gOu[0], atol=1e-9, rtol=1e-7)
    assert float(gDp[0, n_real:].abs().max()) == 0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replays_the_fixed_budget_solve():
    """The fixed-budget solve captured as a CUDA graph and replayed on new data gives the
    eager CPU solution (static shapes, no host reads inside)."""
    Dn, Do, K = _batch_instance(B=8, n=32, m=24, seed=13)
    sDn, sDo, sK = Dn.cuda(), Do.cuda(), K.cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture, as torch.cuda.graphs asks
        newton_static(sDn, sDo, sK, 0.05, max_iter=40, check_every=None)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _, _, p, _, res = newton_static(sDn, sDo, sK, 0.05, max_iter=40, check_every=None)
    Dn2, Do2, K2 = _batch_instance(B=8, n=32, m=24, seed=14)
    sDn.copy_(Dn2)
    sDo.copy_(Do2)
    sK.copy_(K2)
    graph.replay()
    torch.cuda.synchronize()
    ref = solve_batch(Dn2, Do2, K2, 0.05, mode="static")
    assert float(res.max()) <= 1e-9
    torch.testing.assert_close(p.u.cpu(), ref.u, atol=1e-8, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_newton_graphs_replay_the_checked_solve():
    """NewtonGraphs (chunks of 8 iterations replayed as CUDA graphs, captured once per shape)
    gives newton_static's iterates and iteration count, for new data of the same shape too."""
    graphs = NewtonGraphs()
    for seed in (16, 17):
        Dn, Do, K = _batch_instance(B=8, n=32, m=24, seed=seed)
        Dn, Do, K = Dn.cuda(), Do.cuda(), K.cuda()
        want = newton_static(Dn, Do, K, 0.05, max_iter=60, check_every=8)
        got = newton_static(Dn, Do, K, 0.05, max_iter=60, check_every=8, graphs=graphs)
        assert got[3] == want[3]
        torch.testing.assert_close(got[2].u, want[2].u, atol=1e-12, rtol=0)
        torch.testing.assert_close(got[0], want[0], atol=1e-12, rtol=0)
    assert len(graphs._graphs) == 1
    sol = solve_batch(Dn, Do, K, 0.05, graphs=graphs)
    torch.testing.assert_close(sol.u, want[2].u, atol=1e-12, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backward_solve_matches_cpu():
    Dn, Do, K = _batch_instance(B=8, n=64, m=40, seed=18)
    sol = solve_batch(Dn, Do, K, 0.05, mode="adaptive")
    g = torch.Generator().manual_seed(3)
    wu = torch.randn(sol.u.shape, generator=g, dtype=torch.float64)
    want = implicit_vjp(sol.saved, 0.05, torch.zeros_like(sol.Zn), torch.zeros_like(sol.Zo), wu)
    saved = tuple(x.cuda() for x in sol.saved)
    got = implicit_vjp(saved, 0.05, torch.zeros_like(saved[0]),
                       torch.zeros(sol.Zo.shape, dtype=torch.float64, device="cuda"), wu.cuda())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=1e-9, rtol=1e-8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_static_float32_and_float64_match_cpu():
    Dn, Do, K = _batch_instance(B=8, n=64, m=40, seed=15)
    ref = solve_batch(Dn, Do, K, 0.05, mode="adaptive")
    g64 = solve_batch(Dn.cuda(), Do.cuda(), K.cuda(), 0.05, mode="static")
    g32 = solve_batch(Dn.cuda().float(), Do.cuda().float(), K.cuda().float(), 0.05, tol=1e-5,
                      mode="static")
    torch.testing.assert_close(g64.u.cpu(), ref.u, atol=1e-8, rtol=0)
    torch.testing.assert_close(g32.u.cpu().double(), ref.u, atol=2e-4, rtol=0)

"""cvxpylayers reference layer: agreement with the native solver and with finite differences."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cvxpylayers")
# cvxpylayers 1.2 / diffcp trip NumPy 2's __array__ copy deprecation; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

from hostcp_core.selection import SelectionLayer, normalize_distances, solve_selection  # noqa: E402
from hostcp_core.selection._reference import MAX_VARIABLES, n_variables  # noqa: E402
from hostcp_core.selection.instances import clustered_distances  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _solve_with_grad(Dn, Do, K, eps, solver, wn, wu):
    Dn_, Do_ = Dn.clone().requires_grad_(True), Do.clone().requires_grad_(True)
    out = solve_selection(Dn_, Do_, K, eps=eps, solver=solver)
    ((out.Zn * wn).sum() + (out.u * wu).sum()).backward()
    gDo = Do_.grad if Do_.grad is not None else torch.zeros_like(Do)
    out = type(out)(out.Zn.detach(), out.Zo.detach(), out.u.detach())
    return out, torch.cat([Dn_.grad.flatten(), gDo.flatten()])


@pytest.mark.parametrize(
    "n,m,batch,eps",
    [
        (10, 0, None, 0.05),
        (12, 8, 2, 0.01),
        (16, 16, None, 0.05),
        (20, 32, None, 0.01),
        (32, 32, None, 0.05),
    ],
)
def test_native_matches_cvxpylayers(n, m, batch, eps):
    Dn, Do = normalize_distances(*clustered_distances(n, m, batch=batch, seed=n + m))
    K = 0.25 * n
    g = torch.Generator().manual_seed(n)
    wn = torch.randn(Dn.shape, generator=g, dtype=torch.float64)
    wu = torch.randn(Dn.shape[:-1], generator=g, dtype=torch.float64)
    nat, g_nat = _solve_with_grad(Dn, Do, K, eps, "native", wn, wu)
    ref, g_ref = _solve_with_grad(Dn, Do, K, eps, "cvxpylayers", wn, wu)
    assert ref.u.shape == nat.u.shape and ref.Zo.shape == nat.Zo.shape
    assert float((nat.u - ref.u).abs().max()) <= 1e-5
    assert float((nat.Zn - ref.Zn).abs().max()) <= 1e-5
    if m:
        assert float((nat.Zo - ref.Zo).abs().max()) <= 1e-5
    cos = torch.nn.functional.cosine_similarity(g_nat, g_ref, dim=0)
    assert float(cos) >= 0.99


def test_cvxpylayers_gradient_matches_finite_differences():
    n, m, eps = 8, 6, 0.05
    Dn, Do = normalize_distances(*clustered_distances(n, m, seed=21))
    K = 2.0
    g = torch.Generator().manual_seed(3)
    wn = torch.randn(n, n, generator=g, dtype=torch.float64)
    wu = torch.randn(n, generator=g, dtype=torch.float64)

    def loss(a, b):
        out = solve_selection(a, b, K, eps=eps, solver="cvxpylayers")
        return (out.Zn * wn).sum() + (out.u * wu).sum()

    _, grad = _solve_with_grad(Dn, Do, K, eps, "cvxpylayers", wn, wu)
    vn = torch.randn(n, n, generator=g, dtype=torch.float64)
    vo = torch.randn(n, m, generator=g, dtype=torch.float64)
    norm = (vn.square().sum() + vo.square().sum()).sqrt()
    vn, vo = vn / norm, vo / norm
    h = 1e-4
    with torch.no_grad():
        fd = (loss(Dn + h * vn, Do + h * vo) - loss(Dn - h * vn, Do - h * vo)) / (2 * h)
    an = (grad * torch.cat([vn.flatten(), vo.flatten()])).sum()
    assert abs(float(fd)) > 1e-3  # a direction that actually moves the solution
    assert float((fd - an).abs() / fd.abs()) <= 2e-2


def test_layer_with_cvxpylayers_solver_and_float32():
    Dn, Do = clustered_distances(10, 0, seed=4, dtype=torch.float32)
    out = SelectionLayer(fraction=0.3, eps=0.05, solver="cvxpylayers")(Dn, Do)
    assert out.u.dtype == torch.float32 and out.Zo.shape == (10, 0)
    assert float(out.u.sum()) <= 3.0 + 1e-5
    rows = out.Zn.sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_size_cap_refused():
    n, m = 64, 256
    assert n_variables(n, m) > MAX_VARIABLES
    with pytest.raises(ValueError, match="native"):
        solve_selection(torch.zeros(n, n), torch.ones(n, m), 8.0, solver="cvxpylayers")


@pytest.mark.parametrize("dtype, tol, atol", [(torch.float64, 1e-9, 1e-5),
                                              (torch.float32, 1e-5, 2e-4)])
@pytest.mark.parametrize("mode", ["static", "adaptive"])
def test_wave_solver_matches_cvxpylayers(mode, dtype, tol, atol):
    """The wave solver (selection._static, as HostCP(wave=W) uses it), in float64 and float32,
    against the reference layer on a small batch."""
    from hostcp_core.selection._static import solve_batch

    n, m, B, eps = 12, 8, 3, 0.05
    Dn, Do = normalize_distances(*clustered_distances(n, m, batch=B, seed=31))
    K = 0.25 * n
    ref = solve_selection(Dn, Do, K, eps=eps, solver="cvxpylayers")
    sol = solve_batch(Dn.to(dtype), Do.to(dtype), torch.full((B,), K, dtype=dtype), eps,
                      tol=tol, mode=mode)
    assert sol.u.dtype == dtype
    assert float((sol.u.double() - ref.u).abs().max()) <= atol
    assert float((sol.Zn.double() - ref.Zn).abs().max()) <= atol
    assert float((sol.Zo.double() - ref.Zo).abs().max()) <= atol

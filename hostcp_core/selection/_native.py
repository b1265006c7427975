"""Native batched solver of the ε-regularised facility-location program.

Problem (per batch element; n new points, m old points)::

    min  <Do, Zo> + <Dn, Zn> + (ε/2)(‖Zo‖² + ‖Zn‖² + ‖u‖²)
    s.t. Zo·1 + Zn·1 = 1,  0 ≤ Zn_ij ≤ u_j ≤ 1,  0 ≤ Zo ≤ 1,  Σ_j u_j ≤ K

Its dual has n + 1 variables (α for the row sums, λ ≥ 0 for the budget) and for fixed duals the
primal is in closed form (old columns: a clip; new column j: a threshold t_j solving
t + λ = Σ_i (α_i − Dn_ij − t)_+, found by sort + cumsum). We maximise the concave dual by
projected semismooth Newton (closed-form generalised Hessian, Levenberg-Marquardt ridge,
Armijo backtracking) and differentiate the solution by the implicit function theorem.
See /work/shared/reference/selection-layer.md §4 for the derivation and measured figures.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from hostcp_core.selection._types import SolverError

_ARMIJO = 1e-4
_MAX_HALVINGS = 30
_INIT = 1.0  # initial α_i = nearest candidate distance + _INIT·ε
_RIDGE = 1.0  # initial Levenberg-Marquardt factor (adapted per problem)
_DIRECT_ITER = 100  # cold-start Newton budget before the continuation fallback


class _Primal(NamedTuple):
    Zn: torch.Tensor  # (B, n, n)
    Zo: torch.Tensor  # (B, n, m)
    u: torch.Tensor  # (B, n)
    t: torch.Tensor  # (B, n) column thresholds (ε·u before clipping)
    kstar: torch.Tensor  # (B, n) number of capped entries per new column
    a: torch.Tensor  # (B, n, n) α_i − Dn_ij


def _primal(
    alpha: torch.Tensor,
    lam: torch.Tensor,
    Dn: torch.Tensor,
    Do: torch.Tensor,
    eps: float,
    static: bool = False,
) -> _Primal:
    """Closed-form primal minimiser of the Lagrangian; differentiable (autograd) in all inputs.

    ``static`` sorts whole columns (shapes independent of the data, no read-back to the host);
    it gives the same u, Zn and Zo (the extra zeros only count where t < 0, where u = 0)."""
    n = Dn.shape[-1]
    a = alpha.unsqueeze(-1) - Dn
    # Column threshold: sort each column descending; with k capped entries t = (S_k − λ)/(k + 1);
    # "entry k is capped" is monotone in k, so k* is just the count of capped candidates.
    # Only t > 0 matters (else u = 0 and the column is empty), and then only positive a_ij can
    # be capped, so a partial sort of relu(a) over the most positives in any column suffices.
    if static:
        a_sorted = torch.sort(torch.relu(a), dim=1, descending=True).values
    else:
        top = max(int((a > 0).sum(1).amax()), 1) if a.numel() else 1
        a_sorted = torch.topk(torch.relu(a), min(top, n), dim=1, sorted=True).values
    kmax = a_sorted.shape[1]
    csum = torch.cumsum(a_sorted, dim=1)
    k = torch.arange(1, kmax + 1, device=Dn.device, dtype=Dn.dtype).view(1, kmax, 1)
    lam3 = lam.view(-1, 1, 1)
    cond = a_sorted * (k + 1) > csum - lam3  # ⇔ a_(k) > t_k, without a division
    kstar = cond.sum(dim=1)  # (B, n)
    s_k = torch.gather(csum, 1, (kstar - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    s_k = torch.where(kstar > 0, s_k, torch.zeros_like(s_k))
    t = (s_k - lam.view(-1, 1)) / (kstar + 1).to(Dn.dtype)
    u = torch.clamp(t / eps, 0.0, 1.0)
    Zn = torch.minimum(torch.relu(a) / eps, u.unsqueeze(1))
    Zo = torch.clamp((alpha.unsqueeze(-1) - Do) / eps, 0.0, 1.0)
    return _Primal(Zn, Zo, u, t, kstar, a)


def _grad(p: _Primal, budget: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual gradient: (1 − row sums, Σu − K)."""
    rows = p.Zn.sum(-1) + p.Zo.sum(-1)
    return 1.0 - rows, p.u.sum(-1) - budget


def _dual_value(
    p: _Primal,
    alpha: torch.Tensor,
    lam: torch.Tensor,
    Dn: torch.Tensor,
    Do: torch.Tensor,
    g_a: torch.Tensor,
    g_l: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """q(α, λ): the Lagrangian at its closed-form minimiser."""
    lin = (Dn * p.Zn).sum((-2, -1)) + (Do * p.Zo).sum((-2, -1))
    quad = (p.Zn * p.Zn).sum((-2, -1)) + (p.Zo * p.Zo).sum((-2, -1)) + (p.u * p.u).sum(-1)
    return lin + 0.5 * eps * quad + (alpha * g_a).sum(-1) + lam * g_l


class _Masks(NamedTuple):
    free_n: torch.Tensor  # (B, n, n) float: Zn_ij strictly between 0 and u_j
    free_o: torch.Tensor  # (B, n, m) float: Zo_ij strictly between 0 and 1
    S: torch.Tensor  # (B, n, n) float: Zn_ij = u_j in a column with interior u
    w: torch.Tensor  # (B, n): 1/(|S_:j| + 1) on interior columns, else 0


def _masks(p: _Primal, alpha: torch.Tensor, Do: torch.Tensor, eps: float, tie: float) -> _Masks:
    """Active-set masks of the local affine piece of the primal map.

    ``tie`` > 0 counts near-ties as tight (capped / at a bound): at a degenerate dual (non-unique
    α, e.g. rows served only by shared capped facilities) Newton stops on the edge of the optimal
    face, where a tight constraint's multiplier is 0 for this α but positive for others. Taking
    every primal-tight constraint as active gives the derivative of the (generically
    differentiable) primal map; the forward Newton uses tie = 0.
    """
    dtype = p.Zn.dtype
    r = p.a / eps
    u = p.u
    u3 = u.unsqueeze(1)
    interior = (u > tie) & (u < 1 - tie)
    free_n = (r > tie) & (r < u3 - tie)
    S = (r >= u3 - tie) & interior.unsqueeze(1)
    kS = S.sum(1)
    w = interior.to(dtype) / (kS + 1).to(dtype)
    zo = (alpha.unsqueeze(-1) - Do) / eps
    free_o = (zo > tie) & (zo < 1 - tie)
    return _Masks(free_n.to(dtype), free_o.to(dtype), S.to(dtype), w)


def _hessian(mk: _Masks) -> torch.Tensor:
    """M = diag([f, 0]) + B diag(w) Bᵀ, with the dual Hessian equal to −M/ε.

    f_i counts free entries of row i; B = [S; −1ᵀ] where S marks capped entries (Zn_ij = u_j) in
    columns with interior u; w_j = 1/(|S_:j| + 1) on those columns.
    """
    B_, n, _ = mk.S.shape
    f = mk.free_n.sum(-1) + mk.free_o.sum(-1)
    SW = mk.S * mk.w.unsqueeze(1)
    M = mk.S.new_zeros(B_, n + 1, n + 1)
    M[:, :n, :n] = torch.bmm(SW, mk.S.transpose(1, 2))
    M[:, :n, :n].diagonal(dim1=-2, dim2=-1).add_(f)
    col = -SW.sum(-1)
    M[:, :n, n] = col
    M[:, n, :n] = col
    M[:, n, n] = mk.w.sum(-1)
    return M


def _freeze_lambda(M: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Decouple λ where it is frozen at 0 (identity row/column)."""
    n = M.shape[-1] - 1
    act = active.to(M.dtype)
    M = M.clone()
    M[:, :n, n] *= act.unsqueeze(-1)
    M[:, n, :n] *= act.unsqueeze(-1)
    M[:, n, n] = torch.where(active, M[:, n, n], torch.ones_like(M[:, n, n]))
    return M


def _residual(g_a: torch.Tensor, g_l: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Projected-gradient residual (λ ≥ 0 only needs Σu ≤ K when λ = 0)."""
    r_l = torch.where(lam > 0, g_l.abs(), g_l.clamp(min=0))
    return torch.maximum(g_a.abs().amax(-1), r_l)


def _initial_alpha(Dn: torch.Tensor, Do: torch.Tensor, eps: float) -> torch.Tensor:
    # Each point starts priced at its nearest candidate (itself or an old point) plus ε.
    near = Dn.diagonal(dim1=-2, dim2=-1)
    if Do.shape[-1] > 0:
        near = torch.minimum(near, Do.amin(-1))
    return near + _INIT * eps


def _cholesky_solve(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(L Lᵀ)⁻¹ b. On CUDA by two triangular solves (cuBLAS): the batched cholesky_solve goes
    to MAGMA there, which allocates on the host and so cannot be captured in a CUDA graph."""
    if not L.is_cuda:
        return torch.cholesky_solve(b, L)
    y = torch.linalg.solve_triangular(L, b, upper=False)
    return torch.linalg.solve_triangular(L.transpose(-2, -1), y, upper=True)


def _breakpoint_step(
    d_a: torch.Tensor,
    M: torch.Tensor,
    p: _Primal,
    alpha: torch.Tensor,
    lam: torch.Tensor,
    g_a: torch.Tensor,
    Dn: torch.Tensor,
    Do: torch.Tensor,
    eps: float,
    static: bool = False,
) -> torch.Tensor:
    """The α direction with each *flat* row's step replaced by a step just past its next
    breakpoint.

    A flat row has no free and no capped-interior entry (its row of M is zero): every entry is
    at a bound, the dual is linear along α_i with slope g_i = 1 − row sum (±1 or an integer), and
    the ridge alone sets its step, eps·g_i / ridge. That step ignores where the row's pieces
    are: a row served by two old points at almost the same distance jumped between row sums 2
    and 0 for 30 iterations, the Armijo test passing each time (the dual is symmetric about the
    midpoint), while everything else waited. The dual along α_i changes slope first where an
    entry leaves its bound: going up (g_i > 0), where α_i reaches an old point's distance, an
    open column's distance, or (closed column j) the point where column j opens, λ − Σ_k
    (α_k − Dn_kj)_+ above that distance; going down (g_i < 0), ε above the distance of an entry
    at 1. Stepping half an ε past it lands on a piece with curvature, where Newton takes over.
    Rows M couples to others are never flat, so the rest of the direction is unchanged; the
    Armijo search still guards the whole step. ``static``: every row, static shapes and no
    read-back (for CUDA graphs); else the flat rows only (cheaper on a CPU, where reading back
    is free; most iterations have few or none).
    """
    n = Dn.shape[-1]
    flat = (M.diagonal(dim1=-2, dim2=-1)[:, :n] == 0) & (g_a != 0)

    def past(gap: torch.Tensor, g: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isfinite(gap), torch.sign(g) * (gap.clamp(min=0) + 0.5 * eps), d)

    if static:
        gap = _row_gaps(alpha.unsqueeze(-1), lam.view(-1, 1, 1), g_a, Dn, Do, p.Zn, p.Zo,
                        p.u.unsqueeze(1), torch.relu(p.a).sum(1).unsqueeze(1), eps)
        return torch.where(flat, past(gap, g_a, d_a), d_a)
    b, i = flat.nonzero(as_tuple=True)
    if not len(b):
        return d_a
    probs, at = torch.unique(b, return_inverse=True)
    colsum = torch.relu(p.a[probs]).sum(1)[at]
    gap = _row_gaps(alpha[b, i].unsqueeze(-1), lam[b].unsqueeze(-1), g_a[b, i], Dn[b, i],
                    Do[b, i], p.Zn[b, i], p.Zo[b, i], p.u[b], colsum, eps)
    d_a = d_a.clone()
    d_a[b, i] = past(gap, g_a[b, i], d_a[b, i])
    return d_a


def _row_gaps(a: torch.Tensor, lam: torch.Tensor, g: torch.Tensor, Dn: torch.Tensor,
              Do: torch.Tensor, Zn: torch.Tensor, Zo: torch.Tensor, u: torch.Tensor,
              colsum: torch.Tensor, eps: float) -> torch.Tensor:
    """Distance from α_i (``a``, trailing dimension 1) to row i's next breakpoint in the
    direction of g_i; candidates along the last dimension (``_breakpoint_step``). ``colsum``:
    Σ_k (α_k − Dn_kj)_+ of each new column."""
    inf = float("inf")
    opens = torch.relu(Dn - a) + (lam - colsum).clamp(min=0)      # a closed column opens
    up = torch.where(u <= 0, opens, torch.where(Dn > a, Dn - a, inf)).amin(-1)
    down = torch.where(Zn >= 1, a - (Dn + eps), inf).amin(-1)
    if Do.shape[-1]:
        up = torch.minimum(up, torch.where(Do > a, Do - a, inf).amin(-1))
        down = torch.minimum(down, torch.where(Zo >= 1, a - (Do + eps), inf).amin(-1))
    return torch.where(g > 0, up, down)


def newton_solve(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    budget: torch.Tensor,
    eps: float,
    tol: float = 1e-9,
    max_iter: int = 200,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    raise_on_failure: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, _Primal, int, torch.Tensor]:
    """Solve a batch (B, n, n), (B, n, m), (B,) in float64; returns α, λ, primal, iters and the
    per-problem residuals. ``init`` = (α, λ) warm-starts the duals.

    Raises SolverError when a residual is above ``tol`` after ``max_iter`` Newton steps (unless
    ``raise_on_failure`` is False).
    """
    Bsz, n, _ = Dn.shape
    if init is None:
        alpha = _initial_alpha(Dn, Do, eps)
        lam = Dn.new_zeros(Bsz)
    else:
        alpha, lam = init[0].clone(), init[1].clamp(min=0.0)
    p = _primal(alpha, lam, Dn, Do, eps)
    g_a, g_l = _grad(p, budget)
    q = _dual_value(p, alpha, lam, Dn, Do, g_a, g_l, eps)
    res = _residual(g_a, g_l, lam)
    eye = torch.eye(n + 1, dtype=Dn.dtype, device=Dn.device)
    it = 0
    mu = torch.full_like(lam, _RIDGE)
    while True:
        done = res <= tol
        if bool(done.all()) or it >= max_iter:
            break
        it += 1
        active = (lam > 0) | (g_l > 0)
        M = _freeze_lambda(_hessian(_masks(p, alpha, Do, eps, 0.0)), active)
        # Levenberg-Marquardt ridge, shrinking with the residual: global robustness on
        # degenerate/clustered instances, fast local convergence.
        ridge = (mu * torch.clamp(res, max=1.0) * eps + 1e-12).view(-1, 1, 1)
        rhs = torch.cat([g_a, torch.where(active, g_l, torch.zeros_like(g_l)).unsqueeze(-1)], -1)
        rhs = torch.where(done.unsqueeze(-1), torch.zeros_like(rhs), rhs)
        L, info = torch.linalg.cholesky_ex(M + ridge * eye)
        d = _cholesky_solve(L, (eps * rhs).unsqueeze(-1)).squeeze(-1)
        d = torch.where((info == 0).unsqueeze(-1), d, eps * rhs)  # fall back to a gradient step
        d_a = _breakpoint_step(d[:, :n], M, p, alpha, lam, g_a, Dn, Do, eps)
        d_l = d[:, n]
        step = torch.ones_like(lam)
        todo = torch.ones_like(done)
        new_alpha, new_lam, new_p = alpha, lam, p
        new_ga, new_gl, new_q = g_a, g_l, q
        slack = 1e-13 * (q.abs() + 1.0)
        for _ in range(_MAX_HALVINGS):
            s = step.unsqueeze(-1)
            ca = alpha + s * d_a
            cl = torch.clamp(lam + step * d_l, min=0.0)
            cp = _primal(ca, cl, Dn, Do, eps)
            cga, cgl = _grad(cp, budget)
            cq = _dual_value(cp, ca, cl, Dn, Do, cga, cgl, eps)
            # Armijo along the projected path: q(θ_s) ≥ q(θ) + c ⟨∇q, θ_s − θ⟩
            gain = (g_a * (ca - alpha)).sum(-1) + g_l * (cl - lam)
            ok = todo & (cq >= q + _ARMIJO * gain - slack)
            if new_p is p and bool(ok.all()):  # the common case: every full step accepted
                new_alpha, new_lam, new_p, new_ga, new_gl, new_q = ca, cl, cp, cga, cgl, cq
                break
            m3 = ok.view(-1, 1, 1)
            new_alpha = torch.where(ok.unsqueeze(-1), ca, new_alpha)
            new_lam = torch.where(ok, cl, new_lam)
            new_p = _Primal(
                torch.where(m3, cp.Zn, new_p.Zn),
                torch.where(m3, cp.Zo, new_p.Zo),
                torch.where(ok.unsqueeze(-1), cp.u, new_p.u),
                torch.where(ok.unsqueeze(-1), cp.t, new_p.t),
                torch.where(ok.unsqueeze(-1), cp.kstar, new_p.kstar),
                torch.where(m3, cp.a, new_p.a),
            )
            new_ga = torch.where(ok.unsqueeze(-1), cga, new_ga)
            new_gl = torch.where(ok, cgl, new_gl)
            new_q = torch.where(ok, cq, new_q)
            todo = todo & ~ok
            if not bool(todo.any()):
                break
            step = torch.where(todo, 0.5 * step, step)
        # Adaptive ridge: stiffen where the full step was rejected, relax where it was taken.
        mu = torch.where(step < 1, mu * 4, torch.clamp(mu / 4, min=1e-3))
        alpha, lam, p, g_a, g_l, q = new_alpha, new_lam, new_p, new_ga, new_gl, new_q
        res = _residual(g_a, g_l, lam)
    worst = float(res.max()) if res.numel() else 0.0
    if raise_on_failure and (worst > tol or worst != worst):
        raise SolverError(
            f"selection solver did not converge: residual {worst:.3g} > tol {tol:g} after "
            f"{it} Newton iterations (eps={eps:g}); try a larger eps or max_iter",
            residual=worst,
            iterations=it,
        )
    return alpha, lam, p, it, res


def _continuation(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    budget: torch.Tensor,
    eps: float,
    tol: float,
    max_iter: int,
    bad: torch.Tensor,
    alpha: torch.Tensor,
    lam: torch.Tensor,
    p: _Primal,
    res: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, _Primal, torch.Tensor, int]:
    """Re-solve the problems marked ``bad`` by ε-continuation (10^k ε down to ε, each stage
    warm-started from the last); returns the merged α, λ, primal, residuals and iterations.
    ``scale``: the distance scale (default: the mean |D| of those problems)."""
    it = 0
    idx = bad.nonzero().squeeze(-1)
    sub = (Dn[idx], Do[idx], budget[idx])
    if scale is None:
        scale = max(float(sub[0].abs().mean()), float(sub[1].abs().mean()) if sub[1].numel() else 0)
    stages = [eps]
    while stages[-1] < 0.05 * max(scale, 1e-12) and len(stages) < 6:
        stages.append(stages[-1] * 10)
    init = None
    for k, e in enumerate(reversed(stages)):
        last = k == len(stages) - 1
        a_s, l_s, p_s, it_s, res_s = newton_solve(
            *sub, e, tol if last else max(tol, 1e-6), max_iter, init=init,
            raise_on_failure=False,
        )
        init = (a_s, l_s)
        it += it_s
    alpha, lam, res = alpha.clone(), lam.clone(), res.clone()
    alpha[idx], lam[idx] = a_s, l_s
    res[idx] = res_s
    p = _Primal(*(x.clone() for x in p))
    for full, part in zip(p, p_s, strict=True):
        full[idx] = part
    return alpha, lam, p, res, it


def solve_duals(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    budget: torch.Tensor,
    eps: float,
    tol: float = 1e-9,
    max_iter: int = 200,
) -> tuple[torch.Tensor, torch.Tensor, _Primal, int, float]:
    """Newton from a cold start; problems it leaves unsolved get an ε-continuation fallback.

    At small ε (≲ 0.005 of the distance scale) semismooth Newton can cycle between active sets
    on rare instances (1 in 450 batches at ε = 0.001 in our sweep). Solving at 10^k ε first and
    warm-starting each smaller ε from the previous duals converged on all of them; it is ~30%
    slower on typical instances, hence only a fallback.
    """
    alpha, lam, p, it, res = newton_solve(
        Dn, Do, budget, eps, tol, min(max_iter, _DIRECT_ITER), raise_on_failure=False
    )
    bad = (res > tol) | torch.isnan(res)
    if bool(bad.any()):
        alpha, lam, p, res, it_c = _continuation(Dn, Do, budget, eps, tol, max_iter, bad,
                                                 alpha, lam, p, res)
        it += it_c
    worst = float(res.max()) if res.numel() else 0.0
    if worst > tol or worst != worst:
        raise SolverError(
            f"selection solver did not converge: residual {worst:.3g} > tol {tol:g} after "
            f"{it} Newton iterations (eps={eps:g}); try a larger eps or max_iter",
            residual=worst,
            iterations=it,
        )
    return alpha, lam, p, it, worst


def _pinv_solve(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A solution of M x = v for symmetric PSD M and v ∈ range(M). Any solution serves the
    implicit backward: a null vector z of M has z_i = 0 on rows with free entries and
    S_:jᵀ z_α = z_λ on interior columns, so it changes no cotangent. On a CPU the
    pseudo-inverse's (``_pinv_eigh``); on CUDA, where the batched eigendecomposition solves one
    small problem after another (~75 ms for 64 problems of size 65 on an H200, more than the
    rest of a wave's solve), ``_range_solve``."""
    return _range_solve(M, v) if M.is_cuda else _pinv_eigh(M, v)


def _pinv_eigh(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """M⁺ v for symmetric PSD M (eigenvalues below the rounding level count as zero)."""
    evals, evecs = torch.linalg.eigh(M)
    cut = evals.abs().amax(-1, keepdim=True) * (M.shape[-1] * torch.finfo(M.dtype).eps * 10)
    inv = torch.where(evals > cut, 1.0 / evals.clamp(min=torch.finfo(M.dtype).tiny), 0.0)
    coef = (evecs.transpose(-2, -1) @ v.unsqueeze(-1)).squeeze(-1) * inv
    return (evecs @ coef.unsqueeze(-1)).squeeze(-1)


def _range_solve(M: torch.Tensor, v: torch.Tensor, refinements: int = 2) -> torch.Tensor:
    """A solution of M x = v for symmetric PSD M and v ∈ range(M): Cholesky of M + δI with
    δ = 1e-10·max(1, max diag) (far above the rounding that could make it indefinite), then
    iterative refinement x ← x + (M + δI)⁻¹(v − Mx). Along an eigenvalue μ > 0 the error shrinks by
    δ/(μ + δ) per solve; null directions of M do not matter (``_pinv_solve``). A batch whose
    factorisation fails anyway goes to ``_pinv_eigh`` (one read-back to check)."""
    delta = 1e-10 * M.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1.0)
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    L, info = torch.linalg.cholesky_ex(M + delta[:, None, None] * eye)
    if bool((info != 0).any()):
        return _pinv_eigh(M, v)

    def solve(b: torch.Tensor) -> torch.Tensor:
        y = torch.linalg.solve_triangular(L, b.unsqueeze(-1), upper=False)
        return torch.linalg.solve_triangular(L.transpose(-2, -1), y, upper=True).squeeze(-1)

    x = solve(v)
    for _ in range(refinements):
        x = x + solve(v - (M @ x.unsqueeze(-1)).squeeze(-1))
    return x


def backward_state(
    p: _Primal,
    alpha: torch.Tensor,
    lam: torch.Tensor,
    Do: torch.Tensor,
    budget: torch.Tensor,
    eps: float,
    tol: float,
) -> tuple[torch.Tensor, ...]:
    """What the implicit backward needs: the active-set masks at the solution and the
    budget's activity (free_n, free_o, S, w, active)."""
    tie = min(max(100.0 * tol, 1e-10), 1e-6)
    mk = _masks(p, alpha, Do, eps, tie)
    # The budget is active where λ > 0 or Σu is tight (same "tight means active" rule).
    active = (lam > 0) | (p.u.sum(-1) >= budget - tie * max(1, p.Zn.shape[-1]))
    return mk.free_n, mk.free_o, mk.S, mk.w, active


def implicit_vjp(
    saved: tuple[torch.Tensor, ...],
    eps: float,
    gZn: torch.Tensor,
    gZo: torch.Tensor,
    gu: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cotangents of (Dn, Do) from those of (Zn, Zo, u) at a solution (see _NativeSelection)."""
    free_n, free_o, S, w, active = saved
    n = S.shape[-1]
    mk = _Masks(free_n, free_o, S, w)

    def col_agg(g_n: torch.Tensor, g_u: torch.Tensor) -> torch.Tensor:
        # cotangent reaching each interior column's u_j (itself and its capped entries)
        return w * (g_u + (S * g_n).sum(1))

    h = col_agg(gZn, gu)
    v_a = (free_o * gZo).sum(-1) + (free_n * gZn).sum(-1) + (S * h.unsqueeze(1)).sum(-1)
    v_l = torch.where(active, -h.sum(-1), torch.zeros_like(h[:, 0]))
    M = _freeze_lambda(_hessian(mk), active)
    mu = -_pinv_solve(M, torch.cat([v_a, v_l.unsqueeze(-1)], -1))
    mu_a = mu[:, :n].unsqueeze(-1)
    gZn_t = gZn + mu_a
    gZo_t = gZo + mu_a
    gu_t = gu - mu[:, n].unsqueeze(-1)
    h_t = col_agg(gZn_t, gu_t)
    dDn = -(free_n * gZn_t + S * h_t.unsqueeze(1)) / eps
    dDo = -(free_o * gZo_t) / eps
    return dDn, dDo


class _NativeSelection(torch.autograd.Function):
    """Batched solve with implicit-function-theorem backward (float64 in, float64 out).

    On the local affine piece (masks at the solution) the primal is linear in (α, λ, D):
    free entries z = (α_i − D_ij)/ε; interior columns
    u_j = (Σ_{k∈S_j}(α_k − Dn_kj) − λ)/(ε(|S_j|+1))
    with capped entries equal to u_j. The backward is dL/dD = vjp_D(X, g + Jᵀ·μ-correction)
    with μ = −M⁺ (ε ∂X/∂θ)ᵀ g; the pseudo-inverse is exact because that vector lies in range(M).
    """

    @staticmethod
    def forward(
        ctx: Any,
        Dn: torch.Tensor,
        Do: torch.Tensor,
        budget: torch.Tensor,
        eps: float,
        tol: float,
        max_iter: int,
        info: dict,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha, lam, p, it, res = solve_duals(Dn, Do, budget, eps, tol, max_iter)
        info["iterations"], info["residual"] = it, res
        ctx.eps = eps
        ctx.save_for_backward(*backward_state(p, alpha, lam, Do, budget, eps, tol))
        return p.Zn, p.Zo, p.u

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, gZn: torch.Tensor, gZo: torch.Tensor, gu: torch.Tensor
    ) -> tuple[Any, ...]:
        dDn, dDo = implicit_vjp(ctx.saved_tensors, ctx.eps, gZn, gZo, gu)
        return dDn, dDo, None, None, None, None, None


def solve_native(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    budget: torch.Tensor,
    eps: float,
    tol: float = 1e-9,
    max_iter: int = 200,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, float]:
    """Differentiable batched solve; inputs (B, n, n), (B, n, m), (B,) float64 on one device."""
    info: dict = {}
    Zn, Zo, u = _NativeSelection.apply(Dn, Do, budget, eps, tol, max_iter, info)
    return Zn, Zo, u, info["iterations"], info["residual"]

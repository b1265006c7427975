"""The native solver without host round-trips, for solving many problems in one call.

The Newton iteration of ``_native.newton_solve`` reads back to Python at every step (the
convergence test, the line search, the partial sort's width). Here every per-problem decision
stays on the device: converged problems are masked, the Armijo backtracking is carried across
iterations (a rejected step is halved at the next iteration instead of in an inner loop), and
columns are sorted whole. The iterate sequence is the same as ``newton_solve``'s, each
backtracking halving costing one iteration. Convergence is read back once every
``check_every`` iterations (None: never, a fixed budget that a CUDA graph can replay); the
residual is returned and checked once by the caller, who falls back to ε-continuation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hostcp_core.selection._native import (
    _ARMIJO,
    _DIRECT_ITER,
    _MAX_HALVINGS,
    _RIDGE,
    _continuation,
    _dual_value,
    _freeze_lambda,
    _grad,
    _hessian,
    _initial_alpha,
    _masks,
    _Primal,
    _primal,
    _residual,
    backward_state,
    implicit_vjp,
    solve_duals,
)
from hostcp_core.selection._types import SolverError


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def newton_static(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    budget: torch.Tensor,
    eps: float,
    tol: float = 1e-9,
    max_iter: int = 100,
    check_every: int | None = 8,
) -> tuple[torch.Tensor, torch.Tensor, _Primal, int, torch.Tensor]:
    """Solve a batch (B, n, n), (B, n, m), (B,) in the inputs' dtype; returns α, λ, the primal,
    the iterations run and the per-problem residuals (a device tensor, not read here)."""
    bsz, n, _ = Dn.shape
    alpha = _initial_alpha(Dn, Do, eps)
    lam = Dn.new_zeros(bsz)
    p = _primal(alpha, lam, Dn, Do, eps, static=True)
    g_a, g_l = _grad(p, budget)
    q = _dual_value(p, alpha, lam, Dn, Do, g_a, g_l, eps)
    res = _residual(g_a, g_l, lam)
    eye = torch.eye(n + 1, dtype=Dn.dtype, device=Dn.device)
    mu = torch.full_like(lam, _RIDGE)
    step = torch.ones_like(lam)
    halvings = torch.zeros_like(lam)
    it = 0
    while it < max_iter:
        if check_every and it and it % check_every == 0 and not bool((~(res <= tol)).any()):
            break
        it += 1
        todo = ~(res <= tol)
        active = (lam > 0) | (g_l > 0)
        M = _freeze_lambda(_hessian(_masks(p, alpha, Do, eps, 0.0)), active)
        ridge = (mu * torch.clamp(res, max=1.0) * eps + 1e-12).view(-1, 1, 1)
        rhs = torch.cat([g_a, torch.where(active, g_l, torch.zeros_like(g_l)).unsqueeze(-1)], -1)
        L, info = torch.linalg.cholesky_ex(M + ridge * eye)
        d = torch.cholesky_solve((eps * rhs).unsqueeze(-1), L).squeeze(-1)
        d = torch.where((info == 0).unsqueeze(-1), d, eps * rhs)
        ca = alpha + step.unsqueeze(-1) * d[:, :n]
        cl = torch.clamp(lam + step * d[:, n], min=0.0)
        cp = _primal(ca, cl, Dn, Do, eps, static=True)
        cga, cgl = _grad(cp, budget)
        cq = _dual_value(cp, ca, cl, Dn, Do, cga, cgl, eps)
        gain = (g_a * (ca - alpha)).sum(-1) + g_l * (cl - lam)
        slack = 1e-13 * (q.abs() + 1.0)
        ok = todo & (cq >= q + _ARMIJO * gain - slack)
        # newton_solve's inner loop gives up after _MAX_HALVINGS: the point stays, the ridge
        # stiffens and the next direction starts from a full step.
        give_up = todo & ~ok & (halvings + 1 >= _MAX_HALVINGS)
        alpha = _where(ok, ca, alpha)
        lam = _where(ok, cl, lam)
        p = _Primal(*(_where(ok, c, o) for c, o in zip(cp, p, strict=True)))
        g_a, g_l, q = _where(ok, cga, g_a), _where(ok, cgl, g_l), _where(ok, cq, q)
        # As newton_solve: stiffen the ridge where the accepted step was a halved one (or the
        # search gave up), relax it where the full step was taken.
        settled = ok | give_up
        mu = torch.where(settled, torch.where(step < 1, mu * 4, torch.clamp(mu / 4, min=1e-3)),
                         mu)
        rejected = todo & ~ok & ~give_up
        step = torch.where(settled, torch.ones_like(step), torch.where(rejected, step / 2, step))
        halvings = torch.where(rejected, halvings + 1, torch.zeros_like(halvings))
        res = _residual(g_a, g_l, lam)
    return alpha, lam, p, it, res


class StaticSolution(NamedTuple):
    Zn: torch.Tensor
    Zo: torch.Tensor
    u: torch.Tensor
    saved: tuple[torch.Tensor, ...]  # for implicit_vjp
    iterations: int
    residual: torch.Tensor  # per problem, on the device


def solve_static(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    budget: torch.Tensor,
    eps: float,
    tol: float = 1e-9,
    max_iter: int = 100,
    check_every: int | None = 8,
    scale: float | None = None,
    fallback: bool = True,
) -> StaticSolution:
    """Solve a batch without autograd; ``implicit_vjp(sol.saved, eps, ...)`` differentiates it.

    With ``fallback`` the residuals are read once: problems above ``tol`` are re-solved by
    ε-continuation (float64, as ``solve_duals`` does), and SolverError is raised if any stays
    above. ``scale``: the distance scale for the continuation's stages (padded columns with a
    huge distance would inflate the default, their mean).
    """
    with torch.no_grad():
        alpha, lam, p, it, res = newton_static(Dn, Do, budget, eps, tol, max_iter, check_every)
        if fallback:
            bad = ~(res <= tol)
            if bool(bad.any()):
                dt = Dn.dtype
                a64, l64, p64, res64, it_c = _continuation(
                    Dn.double(), Do.double(), budget.double(), eps, tol, 200, bad,
                    alpha.double(), lam.double(), _Primal(*(x.double() if x.is_floating_point()
                                                          else x for x in p)),
                    res.double(), scale=scale,
                )
                alpha, lam, res = a64.to(dt), l64.to(dt), res64.to(dt)
                p = _Primal(*(x.to(dt) if x.is_floating_point() else x for x in p64))
                it += it_c
                worst = float(res.max())
                if not worst <= tol:
                    raise SolverError(
                        f"selection solver did not converge: residual {worst:.3g} > tol "
                        f"{tol:g} after {it} Newton iterations (eps={eps:g})",
                        residual=worst, iterations=it)
        saved = backward_state(p, alpha, lam, Do, budget, eps, tol)
    return StaticSolution(p.Zn, p.Zo, p.u, saved, it, res)


def solve_batch(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    budget: torch.Tensor,
    eps: float,
    tol: float = 1e-9,
    max_iter: int = 200,
    mode: str = "static",
    scale: float | None = None,
) -> StaticSolution:
    """A batch of problems, no autograd: ``mode="static"`` is ``solve_static``; ``"adaptive"``
    is the per-minibatch solver (``solve_duals``: convergence and line search tested on the
    host at every step, which costs nothing on a CPU), batched."""
    if mode == "static":
        return solve_static(Dn, Do, budget, eps, tol, min(max_iter, _DIRECT_ITER), scale=scale)
    if mode != "adaptive":
        raise ValueError(f"mode must be 'static' or 'adaptive', got {mode!r}")
    with torch.no_grad():
        alpha, lam, p, it, worst = solve_duals(Dn, Do, budget, eps, tol, max_iter)
        saved = backward_state(p, alpha, lam, Do, budget, eps, tol)
    return StaticSolution(p.Zn, p.Zo, p.u, saved, it, Dn.new_full((Dn.shape[0],), worst))


__all__ = ["StaticSolution", "implicit_vjp", "newton_static", "solve_batch", "solve_static"]

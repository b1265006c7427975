"""Reference cvxpylayers (DPP) layer of the same ε-program, for tests and small sizes.

Dn, Do and the budget K are Parameters; ε is a constant of the built problem. One layer is
built and cached per (n, m, ε): building canonicalises the problem, which for the quadratic
term costs about O(N²) memory and time in the number of variables N = n² + nm + n.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

# Above this cvxpy's canonicalisation of the quadratic term needs too much memory (O(N²)).
MAX_VARIABLES = 20_000
SOLVER_ARGS: dict[str, Any] = {
    "solve_method": "Clarabel",
    "tol_gap_abs": 1e-10,
    "tol_gap_rel": 1e-10,
    "tol_feas": 1e-10,
    "tol_ktratio": 1e-8,
}


def n_variables(n: int, m: int) -> int:
    return n * n + n * m + n


@lru_cache(maxsize=8)
def _build(n: int, m: int, eps: float) -> Any:
    import cvxpy as cp
    import numpy as np
    from cvxpylayers.torch import CvxpyLayer

    Dn = cp.Parameter((n, n))
    K = cp.Parameter(nonneg=True)
    Zn = cp.Variable((n, n))
    u = cp.Variable(n)
    rows = cp.sum(Zn, axis=1)
    cost = cp.sum(cp.multiply(Dn, Zn))
    quad = cp.sum_squares(Zn) + cp.sum_squares(u)
    # Zn_ij <= u_j: u broadcast down the rows as ones(n, 1) @ u(1, n).
    U = np.ones((n, 1)) @ cp.reshape(u, (1, n), order="C")
    cons = [Zn >= 0, Zn <= U, u <= 1, cp.sum(u) <= K]
    params, variables = [Dn], [Zn, u]
    if m > 0:
        Do = cp.Parameter((n, m))
        Zo = cp.Variable((n, m))
        rows = rows + cp.sum(Zo, axis=1)
        cost = cost + cp.sum(cp.multiply(Do, Zo))
        quad = quad + cp.sum_squares(Zo)
        cons += [Zo >= 0, Zo <= 1]
        params.append(Do)
        variables.append(Zo)
    cons.append(rows == 1)
    prob = cp.Problem(cp.Minimize(cost + 0.5 * eps * quad), cons)
    assert prob.is_dpp()
    params.append(K)
    return CvxpyLayer(prob, parameters=params, variables=variables, solver_args=SOLVER_ARGS)


def solve_cvxpylayers(
    Dn: torch.Tensor, Do: torch.Tensor, budget: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched (B, n, n), (B, n, m), (B,) float64 CPU/any-device solve; differentiable."""
    Bsz, n, m = Do.shape
    if n_variables(n, m) > MAX_VARIABLES:
        raise ValueError(
            f"the cvxpylayers reference is limited to {MAX_VARIABLES} variables "
            f"(n={n}, m={m} gives {n_variables(n, m)}); use solver='native'"
        )
    layer = _build(n, m, float(eps))
    device = Dn.device
    args = [Dn.cpu()] + ([Do.cpu()] if m > 0 else []) + [budget.cpu()]
    sol = layer(*args)
    Zn, u = sol[0], sol[1]
    Zo = sol[2] if m > 0 else Dn.new_zeros(Bsz, n, 0)
    return Zn.to(device), Zo.to(device), u.to(device)

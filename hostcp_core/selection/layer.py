"""Front of the selection layer: input checks, dtype/batch handling, solver dispatch, top-k."""

from __future__ import annotations

import math

import torch
from torch import nn

from hostcp_core.selection._native import solve_native
from hostcp_core.selection._types import SelectionOutput

SOLVERS = ("native", "cvxpylayers")


def _as_batch(Dn: torch.Tensor, Do: torch.Tensor) -> tuple[torch.Size, int, int]:
    """Validate shapes; return (batch shape, n, m)."""
    if not isinstance(Dn, torch.Tensor) or not isinstance(Do, torch.Tensor):
        raise TypeError("Dn and Do must be torch tensors")
    if Dn.dim() < 2 or Dn.shape[-1] != Dn.shape[-2]:
        raise ValueError(f"Dn must be (n, n) or (B, n, n); got shape {tuple(Dn.shape)}")
    if Do.dim() != Dn.dim():
        raise ValueError(
            f"Do must have the same number of dimensions as Dn; got {tuple(Do.shape)} "
            f"and {tuple(Dn.shape)}"
        )
    n = Dn.shape[-1]
    if Do.shape[:-1] != Dn.shape[:-1]:
        raise ValueError(f"Do must be (..., n, m) with n={n}; got {tuple(Do.shape)}")
    if n < 1:
        raise ValueError("the minibatch must hold at least one new point (n >= 1)")
    if not (Dn.is_floating_point() and Do.is_floating_point()):
        raise TypeError("Dn and Do must be floating-point tensors")
    if Dn.device != Do.device:
        raise ValueError(f"Dn and Do are on different devices ({Dn.device}, {Do.device})")
    return Dn.shape[:-2], n, Do.shape[-1]


def _budget_tensor(
    budget: float | torch.Tensor, batch: torch.Size, n: int, m: int, device: torch.device
) -> torch.Tensor:
    K = torch.as_tensor(budget, dtype=torch.float64, device=device).detach()
    if K.dim() > 0 and K.shape != batch:
        raise ValueError(f"budget must be a scalar or of batch shape {tuple(batch)}")
    K = K.expand(batch).reshape(-1)
    if not bool(torch.isfinite(K).all()) or bool((K < 0).any()):
        raise ValueError("budget must be finite and >= 0")
    if m == 0 and bool((K < 1).any()):
        # Every row must sum to 1 through open new columns, so Σu ≥ 1 is needed.
        raise ValueError("with no old points (m = 0) the budget must be >= 1 (K = fraction * n)")
    return K


def solve_selection(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    budget: float | torch.Tensor,
    eps: float = 0.05,
    solver: str = "native",
    tol: float = 1e-9,
    max_iter: int = 200,
) -> SelectionOutput:
    """Solve the ε-regularised budgeted facility-location program (differentiable in Dn, Do).

    Dn: (n, n) or (B, n, n) new-to-new distances (zero diagonal); Do: (n, m) or (B, n, m)
    new-to-old distances, m >= 0; budget K: float or tensor of the batch shape. Any leading
    batch shape is accepted. Outputs have the input's batch shape, dtype and device.
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(
            f"eps must be > 0 (got {eps!r}): with eps = 0 the program is an LP whose solution is "
            "piecewise constant in the distances, so its gradient is zero"
        )
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}")
    batch, n, m = _as_batch(Dn, Do)
    K = _budget_tensor(budget, batch, n, m, Dn.device)
    out_dtype = torch.promote_types(Dn.dtype, Do.dtype)
    bsz = math.prod(batch)
    Dn64 = Dn.to(torch.float64).reshape(bsz, n, n)
    Do64 = Do.to(torch.float64).reshape(bsz, n, m)
    if not (bool(torch.isfinite(Dn64).all()) and bool(torch.isfinite(Do64).all())):
        raise ValueError("Dn and Do must be finite")
    if solver == "native":
        Zn, Zo, u, iters, res = solve_native(Dn64, Do64, K, float(eps), tol, max_iter)
    else:
        from hostcp_core.selection._reference import solve_cvxpylayers

        Zn, Zo, u = solve_cvxpylayers(Dn64, Do64, K, float(eps))
        iters, res = 0, 0.0
    return SelectionOutput(
        Zn.reshape(*batch, n, n).to(out_dtype),
        Zo.reshape(*batch, n, m).to(out_dtype),
        u.reshape(*batch, n).to(out_dtype),
        iters,
        res,
    )


def normalize_distances(Dn: torch.Tensor, Do: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Divide by the (detached) mean off-diagonal Dn / Do distance of each problem."""
    n, m = Dn.shape[-1], Do.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=Dn.device)
    total = (Dn.detach() * off).sum((-2, -1)) + Do.detach().sum((-2, -1))
    count = n * (n - 1) + n * m
    if count == 0:
        return Dn, Do
    scale = (total / count).clamp(min=torch.finfo(Dn.dtype).tiny)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(-1).unsqueeze(-1)
    return Dn / scale, Do / scale


class SelectionLayer(nn.Module):
    """Differentiable HOST-CP selection: budget K = fraction * n for each minibatch.

    ``normalize`` divides the distances by their detached mean so ``eps`` is relative
    (0.01-0.05 recommended; larger spreads u and worsens top-k selections).
    """

    def __init__(
        self,
        fraction: float = 0.2,
        eps: float = 0.05,
        solver: str = "native",
        normalize: bool = True,
        tol: float = 1e-9,
        max_iter: int = 200,
    ) -> None:
        super().__init__()
        # Validated here (cvxpylayers style) so a bad config fails before any training step.
        if not (isinstance(eps, (int, float)) and math.isfinite(eps)) or eps < 0:
            raise ValueError(f"eps must be a finite number > 0; got {eps!r}")
        if eps == 0:
            raise ValueError(
                "eps = 0 makes the selection program an LP: its solution is piecewise constant in "
                "the distances, so the gradient reaching the embedding is zero (or solver noise). "
                "Use a small eps such as 0.01-0.05."
            )
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}")
        if not (tol > 0) or int(max_iter) < 1:
            raise ValueError("tol must be > 0 and max_iter >= 1")
        self.fraction = float(fraction)
        self.eps = float(eps)
        self.solver = solver
        self.normalize = bool(normalize)
        self.tol = float(tol)
        self.max_iter = int(max_iter)

    def budget(self, n: int) -> float:
        return self.fraction * n

    def forward(self, Dn: torch.Tensor, Do: torch.Tensor) -> SelectionOutput:
        _as_batch(Dn, Do)
        if self.normalize:
            Dn, Do = normalize_distances(Dn, Do)
        return solve_selection(
            Dn, Do, self.budget(Dn.shape[-1]), self.eps, self.solver, self.tol, self.max_iter
        )

    def extra_repr(self) -> str:
        return (
            f"fraction={self.fraction}, eps={self.eps}, solver={self.solver!r}, "
            f"normalize={self.normalize}"
        )


def select_top_k(
    u: torch.Tensor | SelectionOutput, k: int, Zn: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices of the k largest u (last dim); ties broken by the column mass of ``Zn``.

    ``u`` may be a SelectionOutput (then its Zn breaks ties). Returns a LongTensor (k,) or
    (..., k), ordered by decreasing u.
    """
    if isinstance(u, SelectionOutput):
        u, Zn = u.u, u.Zn if Zn is None else Zn
    n = u.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}]; got {k}")
    key = u.detach().to(torch.float64)
    order = torch.arange(n, device=u.device)
    if Zn is not None:
        # Lexicographic (u, column mass): sort by mass first, then stably by u.
        mass = Zn.detach().to(torch.float64).sum(-2)
        order = torch.sort(mass, dim=-1, descending=True, stable=True).indices
        key = torch.gather(key, -1, order)
    else:
        order = order.expand_as(key)
    pos = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.gather(order, -1, pos)

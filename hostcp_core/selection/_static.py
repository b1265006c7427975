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
    _breakpoint_step,
    _cholesky_solve,
    _continuation,
    _dual_value,
    _freeze_lambda,
    _grad,
    _hessian,
    _initial_alpha,
    _masks,
    _Primal,
    _residual,
    backward_state,
    implicit_vjp,
)
from hostcp_core.selection._types import SolverError


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def _primal_t(
    alpha: torch.Tensor, lam: torch.Tensor, Dn: torch.Tensor, Do: torch.Tensor, eps: float,
    partial: bool,
) -> _Primal:
    """``_primal`` with each column sorted along the last, contiguous dimension (a sort along
    dim 1 of a (B, n, n) tensor is several times slower on a CPU). ``partial`` sorts only the
    positive entries' width (read back: CPU only); else whole columns (static shapes)."""
    n = Dn.shape[-1]
    a = alpha.unsqueeze(-1) - Dn
    ra = torch.relu(a)
    cols = ra.transpose(1, 2).contiguous()  # (B, column j, row i)
    if partial:
        top = max(int((a > 0).sum(1).amax()), 1) if a.numel() else 1
        a_sorted = torch.topk(cols, min(top, n), dim=-1, sorted=True).values
    else:
        a_sorted = torch.sort(cols, dim=-1, descending=True).values
    kmax = a_sorted.shape[-1]
    csum = torch.cumsum(a_sorted, dim=-1)
    k = torch.arange(1, kmax + 1, device=Dn.device, dtype=Dn.dtype)
    cond = a_sorted * (k + 1) > csum - lam.view(-1, 1, 1)  # ⇔ a_(k) > t_k
    kstar = cond.sum(dim=-1)  # (B, n)
    s_k = torch.gather(csum, -1, (kstar - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    s_k = torch.where(kstar > 0, s_k, torch.zeros_like(s_k))
    t = (s_k - lam.view(-1, 1)) / (kstar + 1).to(Dn.dtype)
    u = torch.clamp(t / eps, 0.0, 1.0)
    Zn = torch.minimum(ra / eps, u.unsqueeze(1))
    Zo = torch.clamp((alpha.unsqueeze(-1) - Do) / eps, 0.0, 1.0)
    return _Primal(Zn, Zo, u, t, kstar, a)


class _State(NamedTuple):
    alpha: torch.Tensor
    lam: torch.Tensor
    p: _Primal
    g_a: torch.Tensor
    g_l: torch.Tensor
    q: torch.Tensor
    res: torch.Tensor
    mu: torch.Tensor  # Levenberg-Marquardt factor
    step: torch.Tensor  # the step length to try next
    halvings: torch.Tensor  # halvings of the current direction so far


def _index(st: _State, idx: torch.Tensor) -> _State:
    return _State(*(_Primal(*(x[idx] for x in f)) if isinstance(f, _Primal) else f[idx]
                    for f in st))


def _put(st: _State, idx: torch.Tensor, sub: _State) -> None:
    for f, g in zip(st, sub, strict=True):
        if isinstance(f, _Primal):
            for x, y in zip(f, g, strict=True):
                x[idx] = y
        else:
            f[idx] = g


def _iterate(st: _State, Dn: torch.Tensor, Do: torch.Tensor, budget: torch.Tensor, eps: float,
             tol: float, eye: torch.Tensor, static: bool) -> _State:
    """One Newton iteration of every problem not yet converged (the others are kept)."""
    alpha, lam, p, g_a, g_l, q, res, mu, step, halvings = st
    todo = ~(res <= tol)
    d_a, d_l = _direction(st, Dn, Do, eps, eye, static)
    ca = alpha + step.unsqueeze(-1) * d_a
    cl = torch.clamp(lam + step * d_l, min=0.0)
    cp = _primal_t(ca, cl, Dn, Do, eps, partial=not static)
    cga, cgl = _grad(cp, budget)
    cq = _dual_value(cp, ca, cl, Dn, Do, cga, cgl, eps)
    gain = (g_a * (ca - alpha)).sum(-1) + g_l * (cl - lam)
    slack = 1e-13 * (q.abs() + 1.0)
    ok = todo & (cq >= q + _ARMIJO * gain - slack)
    # newton_solve's inner loop gives up after _MAX_HALVINGS: the point stays, the ridge
    # stiffens and the next direction starts from a full step.
    give_up = todo & ~ok & (halvings + 1 >= _MAX_HALVINGS)
    settled = ok | give_up
    rejected = todo & ~settled
    return _State(
        _where(ok, ca, alpha),
        _where(ok, cl, lam),
        _Primal(*(_where(ok, c, o) for c, o in zip(cp, p, strict=True))),
        _where(ok, cga, g_a),
        _where(ok, cgl, g_l),
        _where(ok, cq, q),
        _where(ok, _residual(cga, cgl, cl), res),
        # as newton_solve: stiffen the ridge where a halved step was taken (or the search gave
        # up), relax it where the full step was taken
        torch.where(settled, torch.where(step < 1, mu * 4, torch.clamp(mu / 4, min=1e-3)), mu),
        torch.where(settled, torch.ones_like(step), torch.where(rejected, step / 2, step)),
        torch.where(rejected, halvings + 1, torch.zeros_like(halvings)),
    )


def _direction(st: _State, Dn: torch.Tensor, Do: torch.Tensor, eps: float,
               eye: torch.Tensor, static: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The regularised Newton direction (d_α, d_λ), as newton_solve computes it."""
    alpha, lam, p, g_a, g_l, q, res, mu = st[:8]
    n = Dn.shape[-1]
    active = (lam > 0) | (g_l > 0)
    M = _freeze_lambda(_hessian(_masks(p, alpha, Do, eps, 0.0)), active)
    # Levenberg-Marquardt ridge, shrinking with the residual (as newton_solve)
    ridge = (mu * torch.clamp(res, max=1.0) * eps + 1e-12).view(-1, 1, 1)
    rhs = torch.cat([g_a, torch.where(active, g_l, torch.zeros_like(g_l)).unsqueeze(-1)], -1)
    L, info = torch.linalg.cholesky_ex(M + ridge * eye)
    d = _cholesky_solve(L, (eps * rhs).unsqueeze(-1)).squeeze(-1)
    d = torch.where((info == 0).unsqueeze(-1), d, eps * rhs)  # a gradient step where it fails
    return _breakpoint_step(d[:, :n], M, p, alpha, lam, g_a, Dn, Do, eps, static), d[:, n]


def _start(Dn: torch.Tensor, Do: torch.Tensor, budget: torch.Tensor, eps: float,
           partial: bool) -> _State:
    """The cold-start state: α at each point's nearest candidate plus ε, λ = 0."""
    alpha = _initial_alpha(Dn, Do, eps)
    lam = Dn.new_zeros(Dn.shape[0])
    p = _primal_t(alpha, lam, Dn, Do, eps, partial=partial)
    g_a, g_l = _grad(p, budget)
    q = _dual_value(p, alpha, lam, Dn, Do, g_a, g_l, eps)
    return _State(alpha, lam, p, g_a, g_l, q, _residual(g_a, g_l, lam),
                  torch.full_like(lam, _RIDGE), torch.ones_like(lam), torch.zeros_like(lam))


def newton_compact(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    budget: torch.Tensor,
    eps: float,
    tol: float = 1e-9,
    max_iter: int = 100,
) -> tuple[torch.Tensor, torch.Tensor, _Primal, int, torch.Tensor]:
    """newton_solve's iteration for a CPU: each Newton step and each backtracking halving
    works only on the problems that still need it (newton_solve re-evaluates the whole batch
    while any problem backtracks). Reads back to the host at every step, which is free on a
    CPU; the iterates are newton_solve's."""
    bsz, n, _ = Dn.shape
    st = _start(Dn, Do, budget, eps, partial=True)
    eye = torch.eye(n + 1, dtype=Dn.dtype, device=Dn.device)
    it = 0
    while it < max_iter:
        idx = (~(st.res <= tol)).nonzero().squeeze(-1)
        if not len(idx):
            break
        it += 1
        whole = len(idx) == bsz
        sub = st if whole else _index(st, idx)
        dn, do, K = (Dn, Do, budget) if whole else (Dn[idx], Do[idx], budget[idx])
        d_a, d_l = _direction(sub, dn, do, eps, eye)
        alpha, lam, p, g_a, g_l, q = (x.clone() if isinstance(x, torch.Tensor)
                                      else _Primal(*(y.clone() for y in x)) for x in sub[:6])
        step = torch.ones_like(lam)
        todo = torch.arange(len(lam), device=Dn.device)
        slack = 1e-13 * (q.abs() + 1.0)
        for _ in range(_MAX_HALVINGS):
            s = step[todo]
            a0, l0 = sub.alpha[todo], sub.lam[todo]
            ca = a0 + s.unsqueeze(-1) * d_a[todo]
            cl = torch.clamp(l0 + s * d_l[todo], min=0.0)
            all_ = len(todo) == len(lam)
            dnt, dot, Kt = (dn, do, K) if all_ else (dn[todo], do[todo], K[todo])
            cp = _primal_t(ca, cl, dnt, dot, eps, partial=True)
            cga, cgl = _grad(cp, Kt)
            cq = _dual_value(cp, ca, cl, dnt, dot, cga, cgl, eps)
            gain = (sub.g_a[todo] * (ca - a0)).sum(-1) + sub.g_l[todo] * (cl - l0)
            ok = cq >= sub.q[todo] + _ARMIJO * gain - slack[todo]
            acc = todo[ok]
            alpha[acc], lam[acc], g_a[acc], g_l[acc], q[acc] = (
                ca[ok], cl[ok], cga[ok], cgl[ok], cq[ok])
            for full, part in zip(p, cp, strict=True):
                full[acc] = part[ok]
            todo = todo[~ok]
            if not len(todo):
                break
            step[todo] = 0.5 * step[todo]
        # adaptive ridge: stiffen where the full step was rejected, relax where it was taken
        mu = torch.where(step < 1, sub.mu * 4, torch.clamp(sub.mu / 4, min=1e-3))
        new = _State(alpha, lam, p, g_a, g_l, q, _residual(g_a, g_l, lam), mu, sub.step,
                     sub.halvings)
        if whole:
            st = new
        else:
            _put(st, idx, new)
    return st.alpha, st.lam, st.p, it, st.res


def newton_static(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    budget: torch.Tensor,
    eps: float,
    tol: float = 1e-9,
    max_iter: int = 100,
    check_every: int | None = 8,
    compact: bool = False,
    graphs: NewtonGraphs | None = None,
) -> tuple[torch.Tensor, torch.Tensor, _Primal, int, torch.Tensor]:
    """Solve a batch (B, n, n), (B, n, m), (B,) in the inputs' dtype; returns α, λ, the primal,
    the iterations run and the per-problem residuals (a device tensor, not read here).

    ``compact`` (for a CPU, where reading back is free): each iteration reads which problems
    are unconverged and works on those only (and sorts columns partially); the iterates are
    the same. ``graphs`` (CUDA, with ``check_every``): the same iterations replayed as CUDA
    graphs (``NewtonGraphs``).
    """
    if graphs is not None and Dn.is_cuda and check_every and not compact:
        return graphs.solve(Dn, Do, budget, eps, tol, max_iter, check_every)
    bsz, n, _ = Dn.shape
    st = _start(Dn, Do, budget, eps, partial=compact)
    eye = torch.eye(n + 1, dtype=Dn.dtype, device=Dn.device)
    it = 0
    while it < max_iter:
        if compact:
            idx = (~(st.res <= tol)).nonzero().squeeze(-1)
            if not len(idx):
                break
            it += 1
            if len(idx) == bsz:
                st = _iterate(st, Dn, Do, budget, eps, tol, eye, static=False)
            else:
                _put(st, idx, _iterate(_index(st, idx), Dn[idx], Do[idx], budget[idx], eps, tol,
                                       eye, static=False))
            continue
        if check_every and it and it % check_every == 0 and not bool((~(st.res <= tol)).any()):
            break
        it += 1
        st = _iterate(st, Dn, Do, budget, eps, tol, eye, static=True)
    return st.alpha, st.lam, st.p, it, st.res


def _flat(st: _State) -> list[torch.Tensor]:
    return [x for f in st for x in (f if isinstance(f, _Primal) else (f,))]


def _unflat(xs: list[torch.Tensor]) -> _State:
    return _State(xs[0], xs[1], _Primal(*xs[2:8]), *xs[8:])


class _ChunkGraphs:
    """Two CUDA graphs for one problem shape: the cold start plus ``c`` static iterations, and
    ``c`` more iterations, both on buffers of their own (the inputs are copied in)."""

    def __init__(self, Dn: torch.Tensor, Do: torch.Tensor, budget: torch.Tensor, eps: float,
                 tol: float, c: int):
        self.Dn, self.Do, self.budget = Dn.clone(), Do.clone(), budget.clone()
        self.eps, self.tol, self.c = eps, tol, c
        self.eye = torch.eye(Dn.shape[-1] + 1, dtype=Dn.dtype, device=Dn.device)
        main = torch.cuda.current_stream(Dn.device)
        side = torch.cuda.Stream(device=Dn.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):   # warm-up outside the capture, as torch.cuda.graphs asks
            st = self._chunk(self._start())
        main.wait_stream(side)
        self.buf = [x.clone() for x in _flat(st)]
        self.first, self.more = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.first):
            self._store(self._chunk(self._start()))
        with torch.cuda.graph(self.more):
            self._store(self._chunk(_unflat(self.buf)))

    def _start(self) -> _State:
        return _start(self.Dn, self.Do, self.budget, self.eps, partial=False)

    def _chunk(self, st: _State) -> _State:
        for _ in range(self.c):
            st = self._iterate(st)
        return st

    def _iterate(self, st: _State) -> _State:
        return _iterate(st, self.Dn, self.Do, self.budget, self.eps, self.tol, self.eye,
                        static=True)

    def _store(self, st: _State) -> None:
        for b, x in zip(self.buf, _flat(st), strict=True):
            b.copy_(x)

    def _unconverged(self) -> bool:
        return bool((~(self.buf[11] <= self.tol)).any())   # buf[11]: the residuals

    def run(self, Dn: torch.Tensor, Do: torch.Tensor, budget: torch.Tensor,
            max_iter: int) -> tuple[torch.Tensor, torch.Tensor, _Primal, int, torch.Tensor]:
        self.Dn.copy_(Dn)
        self.Do.copy_(Do)
        self.budget.copy_(budget)
        self.first.replay()
        it = self.c
        while it + self.c <= max_iter and self._unconverged():
            self.more.replay()
            it += self.c
        st = _unflat([b.clone() for b in self.buf])   # the next solve reuses the buffers
        if it < max_iter and self._unconverged():      # a last, partial chunk: eagerly
            for _ in range(max_iter - it):
                st = self._iterate(st)
            it = max_iter
        return st.alpha, st.lam, st.p, it, st.res


class NewtonGraphs:
    """``newton_static`` replayed as CUDA graphs: a chunk of ``check_every`` Newton iterations
    is one graph launch instead of ~250 kernel launches per iteration (the cost of solving a
    wave on a GPU is launching kernels, not running them). The graphs are captured at the
    first solve of each problem shape and kept: hold one instance per fit (it holds the
    graphs' memory) and pass it to ``solve_batch``. The iterates, iteration count and
    convergence checks are ``newton_static``'s."""

    def __init__(self) -> None:
        self._graphs: dict[tuple, _ChunkGraphs] = {}

    def solve(self, Dn: torch.Tensor, Do: torch.Tensor, budget: torch.Tensor, eps: float,
              tol: float, max_iter: int, check_every: int
              ) -> tuple[torch.Tensor, torch.Tensor, _Primal, int, torch.Tensor]:
        key = (tuple(Dn.shape), tuple(Do.shape), Dn.dtype, Dn.device, eps, tol, check_every)
        graphs = self._graphs.get(key)
        if graphs is None:
            graphs = self._graphs[key] = _ChunkGraphs(Dn, Do, budget, eps, tol, check_every)
        return graphs.run(Dn, Do, budget, max_iter)


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
    compact: bool = False,
    graphs: NewtonGraphs | None = None,
) -> StaticSolution:
    """Solve a batch without autograd; ``implicit_vjp(sol.saved, eps, ...)`` differentiates it.

    With ``fallback`` the residuals are read once: problems above ``tol`` are re-solved by
    ε-continuation (float64, as ``solve_duals`` does), and SolverError is raised if any stays
    above. ``scale``: the distance scale for the continuation's stages (padded columns with a
    huge distance would inflate the default, their mean).
    """
    with torch.no_grad():
        if compact:
            alpha, lam, p, it, res = newton_compact(Dn, Do, budget, eps, tol, max_iter)
        else:
            alpha, lam, p, it, res = newton_static(Dn, Do, budget, eps, tol, max_iter,
                                                   check_every, graphs=graphs)
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
    graphs: NewtonGraphs | None = None,
) -> StaticSolution:
    """A batch of problems, no autograd: ``mode="static"`` never reads back inside the Newton
    loop but once every 8 iterations (for a GPU); ``"adaptive"`` reads back at every step and
    works on the unconverged problems only (for a CPU, where reading back is free). Both check
    the residuals once at the end and fall back to ε-continuation (``solve_static``).
    ``graphs`` (static mode on CUDA): replay the iterations as CUDA graphs (``NewtonGraphs``)."""
    if mode not in ("static", "adaptive"):
        raise ValueError(f"mode must be 'static' or 'adaptive', got {mode!r}")
    return solve_static(Dn, Do, budget, eps, tol, min(max_iter, _DIRECT_ITER), scale=scale,
                        compact=mode == "adaptive", graphs=graphs)


PAD_DISTANCE = 1e3


def mask_padding(
    Dn: torch.Tensor,
    Do: torch.Tensor,
    real: torch.Tensor,
    valid: torch.Tensor,
    pad: float = PAD_DISTANCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Static shapes: problems padded to n new and k old points, the real ones marked by
    ``real`` (..., n) and ``valid`` (..., k). Every distance to or from a padded point becomes
    ``pad`` (far above any dual price, so nothing real uses it), and one more old column, a
    sink, serves each padded row at distance 0 (real rows: ``pad``), so padded rows are covered
    without opening anything. With the budget computed from the real points, the real part of
    the solution is that of the unpadded problem. Returns Dn (..., n, n), Do (..., n, k + 1).
    """
    r = real.unsqueeze(-1)
    # Python scalars, not new_tensor: a host-to-device copy would wait for the device
    Dn = torch.where(r & real.unsqueeze(-2), Dn, pad)
    Do = torch.where(r & valid.unsqueeze(-2), Do, pad)
    sink = torch.where(r, pad, Dn.new_zeros(()))
    return Dn, torch.cat([Do, sink], dim=-1)


__all__ = ["PAD_DISTANCE", "NewtonGraphs", "StaticSolution", "implicit_vjp", "mask_padding",
           "newton_compact", "newton_static", "solve_batch", "solve_static"]

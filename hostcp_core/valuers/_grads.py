"""Gradients, Hessians and inverse-Hessian-vector products over a flat parameter vector.

A model is described by ``loss_fn(theta, X, y) -> per-sample losses`` with ``theta`` a flat 1-d
tensor, so logistic regression, an MLP's last layer and a whole MLP share one code path
(torch.func does the per-sample gradients and the Hessian-vector products).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn import functional as F

from hostcp_core.valuers._common import chunks

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def linear_loss_fn(n_features: int, n_classes: int) -> LossFn:
    """Multinomial logistic regression; theta is W (K, d+1) flattened, last column the bias."""

    def loss(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        W = theta.view(n_classes, n_features + 1)
        return F.cross_entropy(X @ W[:, :-1].T + W[:, -1], y, reduction="none")

    return loss


def linear_l2_mask(n_features: int, n_classes: int, like: torch.Tensor) -> torch.Tensor:
    """1 on weights, 0 on biases: the bias is not penalised (as in scikit-learn)."""
    mask = torch.ones(n_classes, n_features + 1, dtype=like.dtype, device=like.device)
    mask[:, -1] = 0
    return mask.flatten()


def linear_gauge(n_features: int, n_classes: int, like: torch.Tensor) -> torch.Tensor:
    """u uᵀ for u the unit shift of all biases together. Softmax is unchanged by that shift and
    the bias is unpenalised, so H is singular along u; every gradient is orthogonal to u, so
    adding u uᵀ to H makes it invertible without changing any H⁻¹g we use."""
    u = torch.zeros(n_classes, n_features + 1, dtype=like.dtype, device=like.device)
    u[:, -1] = n_classes ** -0.5
    u = u.flatten()
    return torch.outer(u, u)


def module_loss_fn(module: nn.Module, names: list[str] | None = None
                   ) -> tuple[LossFn, torch.Tensor]:
    """Cross-entropy of ``module`` as a function of the flat vector of parameters ``names``
    (default: all); the other parameters and the buffers stay fixed. Returns (loss_fn, theta0)."""
    params = dict(module.named_parameters())
    names = list(params) if names is None else names
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    fixed = {k: v.detach() for k, v in params.items() if k not in names}
    fixed.update({k: v.detach() for k, v in module.named_buffers()})
    theta0 = torch.cat([params[k].detach().flatten() for k in names])

    def loss(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        parts = torch.split(theta, sizes)
        state = {**fixed, **{k: p.view(s) for k, p, s in zip(names, parts, shapes, strict=True)}}
        return F.cross_entropy(functional_call(module, state, (X,)), y, reduction="none")

    return loss, theta0


class Objective:
    """J(θ) = (1/n) Σ w_i L(z_i; θ) + (l2/2)‖mask·θ‖², evaluated in chunks of ``batch`` rows.

    Weights default to 1; a zero weight with the 1/n kept is Koh & Liang's ε = −1/n removal."""

    def __init__(self, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor, l2: float,
                 mask: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                 batch: int = 4096):
        self.loss_fn, self.X, self.y, self.l2 = loss_fn, X, y, l2
        self.mask, self.weights, self.batch = mask, weights, batch
        self.n = X.shape[0]

    def _reg(self, theta: torch.Tensor) -> torch.Tensor:
        t = theta if self.mask is None else theta * self.mask
        return 0.5 * self.l2 * (t * t).sum()

    def _chunk(self, theta: torch.Tensor, sl: slice) -> torch.Tensor:
        losses = self.loss_fn(theta, self.X[sl], self.y[sl])
        if self.weights is not None:
            losses = losses * self.weights[sl]
        return losses.sum() / self.n

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        return sum(self._chunk(theta, sl) for sl in chunks(self.n, self.batch)) + self._reg(theta)

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        return sum(grad(self._chunk)(theta, sl) for sl in chunks(self.n, self.batch)) \
            + grad(self._reg)(theta)

    def hvp(self, theta: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None = None
            ) -> torch.Tensor:
        """H v by forward-over-reverse differentiation; ``rows`` restricts the data term to a
        minibatch (rescaled to stand for the full mean), as LiSSA needs."""
        if rows is None:
            out = sum(jvp(lambda t, sl=sl: grad(self._chunk)(t, sl), (theta,), (v,))[1]
                      for sl in chunks(self.n, self.batch))
        else:
            sub = Objective(self.loss_fn, self.X[rows], self.y[rows], 0.0, None,
                            None if self.weights is None else self.weights[rows], self.batch)
            out = jvp(grad(sub.value), (theta,), (v,))[1]
        return out + jvp(grad(self._reg), (theta,), (v,))[1]

    def hessian(self, theta: torch.Tensor) -> torch.Tensor:
        p = theta.numel()
        eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
        # One batched HVP per basis vector: exact, and memory stays O(batch·p) per column block.
        cols = [vmap(lambda v: self.hvp(theta, v))(eye[sl]) for sl in chunks(p, 256)]
        H = torch.cat(cols, 0)
        return 0.5 * (H + H.T)


def per_sample_grads(loss_fn: LossFn, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                     batch: int = 512) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (rows, ∇_θ L(z_i)) for consecutive chunks of rows, via vmap over single examples."""
    one = grad(lambda t, x, c: loss_fn(t, x[None], c[None])[0])
    per = vmap(one, in_dims=(None, 0, 0))
    for sl in chunks(X.shape[0], batch):
        yield sl, per(theta, X[sl], y[sl])


def summed_grad(loss_fn: LossFn, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                batch: int = 4096) -> torch.Tensor:
    """Σ_i ∇_θ L(z_i): one backward per chunk, never the n×p matrix."""
    return sum(grad(lambda t, sl=sl: loss_fn(t, X[sl], y[sl]).sum())(theta)
               for sl in chunks(X.shape[0], batch))


def fit_lbfgs(objective: Objective, theta0: torch.Tensor, *, max_iter: int = 1000,
              tol: float = 1e-10) -> torch.Tensor:
    """Minimise a smooth convex objective to a tight gradient tolerance (full-batch L-BFGS)."""
    theta = theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=tol,
                            tolerance_change=1e-16, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        val = objective.value(theta)
        val.backward()
        return val

    for _ in range(5):  # LBFGS.step stops at max_iter or a stall; restart a few times if needed
        opt.step(closure)
        if objective.grad(theta.detach()).abs().max() <= tol:
            break
    return theta.detach()


def conjugate_gradient(hvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *,
                       tol: float = 1e-8, max_iter: int = 100) -> tuple[torch.Tensor, int]:
    """Solve H x = b for symmetric positive-definite H given only x ↦ Hx (Koh's default
    solver; relative residual ``tol``). Returns (x, iterations)."""
    x = torch.zeros_like(b)
    r = b.clone()
    d = r.clone()
    rr = r @ r
    bnorm = b.norm().clamp_min(1e-30)
    for it in range(1, max_iter + 1):
        Hd = hvp(d)
        alpha = rr / (d @ Hd)
        x = x + alpha * d
        r = r - alpha * Hd
        rr_new = r @ r
        if rr_new.sqrt() <= tol * bnorm:
            return x, it
        d = r + (rr_new / rr) * d
        rr = rr_new
    return x, max_iter


def top_eigenvalue(hvp: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor,
                   gen: torch.Generator, iters: int = 30) -> float:
    """Largest eigenvalue by power iteration (sets LiSSA's scale)."""
    v = torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        w = hvp(v)
        lam = float(v @ w)
        v = w / w.norm().clamp_min(1e-30)
    return lam


def lissa(hvp_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], b: torch.Tensor,
          n: int, *, scale: float, depth: int, batch: int, samples: int,
          gen: torch.Generator) -> torch.Tensor:
    """LiSSA (Agarwal et al.; Koh's ``get_inverse_hvp_lissa``):
    h_j = b + h_{j−1} − H_B h_{j−1}/scale with a fresh minibatch B per step; returns
    h_J / scale averaged over ``samples`` runs.
    Converges when ``scale`` exceeds the top eigenvalue of H."""
    total = torch.zeros_like(b)
    for _ in range(samples):
        h = b.clone()
        for _ in range(depth):
            rows = torch.randint(0, n, (min(batch, n),), generator=gen).to(b.device)
            h = b + h - hvp_batch(h, rows) / scale
        total += h / scale
    return total / samples

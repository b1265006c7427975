"""Leave-one-out values with exact retraining of an L2 logistic regression."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from hostcp_core.data import Dataset
from hostcp_core.device import resolve_device
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult
from hostcp_core.valuer import Valuer
from hostcp_core.valuers import _grads as G
from hostcp_core.valuers._common import chunks, standardise


class LeaveOneOut(Valuer):
    """LOO_i = V(D) − V(D∖i), V = −mean test cross-entropy (``metric="log_loss"``) or test
    accuracy (``metric="accuracy"``; mostly ties at 0 on anything but tiny sets).

    The learner is L2 logistic regression on standardised features,
    J(θ) = (1/n) Σ_j w_j L_j + (l2/2)‖W‖², the model the influence valuer approximates. Every
    D∖i is retrained to a gradient tolerance ``tol``, all at once: each model starts at the full
    solution θ̂ and takes Newton steps preconditioned by the full-data Hessian H(θ̂) (one
    Cholesky factor shared by all n models); the contraction per step is about the point's
    leverage, so a handful of steps reach machine-level tolerances.
    """

    name = "loo"

    def __init__(self, fraction: float = 0.2, seed: int = 0, device: str = "auto",
                 metric: str = "log_loss", l2: float = 0.1, tol: float = 1e-9,
                 max_iter: int = 30):
        self.fraction = fraction
        self.seed = seed
        self.device = device
        self.metric = metric
        self.l2 = l2
        self.tol = tol
        self.max_iter = max_iter

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        if self.metric not in ("log_loss", "accuracy"):
            raise ValueError(f"metric must be 'log_loss' or 'accuracy', not {self.metric!r}")
        dev = resolve_device(self.device)
        Xtr_np, Xte_np = standardise(train, test)
        Xtr = torch.as_tensor(Xtr_np, device=dev)
        Xte = torch.as_tensor(Xte_np, device=dev)
        ytr = torch.as_tensor(train.y, device=dev)
        yte = torch.as_tensor(test.y, device=dev)
        n, d = Xtr.shape
        K = train.n_classes
        loss_fn = G.linear_loss_fn(d, K)
        mask = G.linear_l2_mask(d, K, Xtr)
        obj = G.Objective(loss_fn, Xtr, ytr, self.l2, mask)
        report(progress, "loo:full_fit", 0, 1)
        theta = G.fit_lbfgs(obj, torch.zeros(K * (d + 1), dtype=torch.float64, device=dev),
                            tol=self.tol)
        chol = torch.linalg.cholesky(obj.hessian(theta) + G.linear_gauge(d, K, Xtr))
        report(progress, "loo:full_fit", 1, 1)

        Xa = torch.cat([Xtr, torch.ones(n, 1, dtype=Xtr.dtype, device=dev)], 1)
        Xta = torch.cat([Xte, torch.ones(Xte.shape[0], 1, dtype=Xte.dtype, device=dev)], 1)
        Y = F.one_hot(ytr, K).to(Xtr.dtype)
        maskW = mask.view(K, d + 1)
        W0 = theta.view(K, d + 1)
        full = self._utility(W0[None], Xta, yte)[0]
        values = np.empty(n)
        worst_grad = 0.0
        M = max(1, int(4_000_000 // (n * K)))  # models per batch: bounds the (M, n, K) tensor
        stragglers: list[int] = []
        for sl in chunks(n, M):
            idx = torch.arange(sl.start, sl.stop, device=dev)
            W = W0.expand(len(idx), K, d + 1).clone()
            for _ in range(self.max_iter):
                R = torch.softmax(torch.einsum("nd,mkd->mnk", Xa, W), -1) - Y
                R[torch.arange(len(idx), device=dev), idx] = 0.0  # the removed point
                grad = torch.einsum("mnk,nd->mkd", R, Xa) / n + self.l2 * maskW * W
                gmax = grad.abs().flatten(1).amax(1)
                if float(gmax.max()) <= self.tol:
                    break
                W = W - torch.cholesky_solve(grad.reshape(len(idx), -1).T, chol).T.view_as(W)
            # High-leverage points move θ far and the shared preconditioner can overshoot:
            # refit those few from θ̂ with L-BFGS on their own objective.
            for j in torch.nonzero(gmax > self.tol).flatten().tolist():
                weights = torch.ones(n, dtype=Xtr.dtype, device=dev)
                weights[sl.start + j] = 0.0
                sub = G.Objective(loss_fn, Xtr, ytr, self.l2, mask, weights)
                W[j] = G.fit_lbfgs(sub, theta, tol=self.tol).view(K, d + 1)
                gmax[j] = sub.grad(W[j].flatten()).abs().max()
                stragglers.append(sl.start + j)
            worst_grad = max(worst_grad, float(gmax.max()))
            values[sl] = (full - self._utility(W, Xta, yte)).cpu().numpy()
            report(progress, "loo:refit", sl.stop, n)
        extra = {"metric": self.metric, "max_refit_grad": worst_grad,
                 "n_lbfgs_refits": len(stragglers)}
        return ValuationResult.from_values(values, self.fraction, self.name, extra=extra)

    def _utility(self, W: torch.Tensor, Xta: torch.Tensor, yte: torch.Tensor) -> torch.Tensor:
        """V per model: −mean test cross-entropy or test accuracy, shape (M,)."""
        logits = torch.einsum("nd,mkd->mnk", Xta, W)
        if self.metric == "accuracy":
            return (logits.argmax(-1) == yte).to(W.dtype).mean(1)
        logp = torch.log_softmax(logits, -1)
        return logp.gather(2, yte.view(1, -1, 1).expand(len(W), -1, 1))[..., 0].mean(1)

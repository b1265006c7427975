"""Influence functions (Koh & Liang 2017) with a real inverse Hessian-vector product."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hostcp_core.data import Dataset
from hostcp_core.device import resolve_device
from hostcp_core.models import train_classifier
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult
from hostcp_core.valuer import Valuer
from hostcp_core.valuers import _grads as G
from hostcp_core.valuers._common import standardise, torch_generator

_EXACT_MAX_PARAMS = 3000  # above this many parameters "auto" uses CG instead of forming H


class InfluenceFunction(Valuer):
    """value_i = (1/n) s_testᵀ ∇L(z_i), s_test = (H + damping·I)⁻¹ Σ_test ∇L(z').

    This is the predicted rise in summed test loss when z_i is removed (ε = −1/n), so positive
    means helpful. H is the Hessian of the regularised training objective
    (1/n) Σ L + (l2/2)‖w‖² at the trained parameters; the test gradient excludes the regulariser.

    ``model="logreg"``: L2 logistic regression on standardised features, trained to convergence
    with L-BFGS (convex; exact H). ``model="mlp"``: an MLP trained with Adam; with
    ``last_layer=True`` its head is refitted to convergence on the frozen features and treated
    as the convex model (Koh's top-layer setting), else all parameters are used (H indefinite:
    use ``damping``). ``method``: "exact" (form H), "cg", "lissa", or "auto" (exact up to
    3000 parameters). ``self_influence=True`` scores −∇L_iᵀ H⁻¹ ∇L_i instead (Koh's check for
    mislabels: the most self-influential points come out lowest); it needs an exact H.
    """

    name = "influence"

    def __init__(self, fraction: float = 0.2, seed: int = 0, device: str = "auto",
                 model: str = "logreg", method: str = "auto", l2: float = 0.1,
                 damping: float = 0.0, last_layer: bool = True,
                 hidden: Sequence[int] = (64,), epochs: int = 60, lr: float = 1e-3,
                 cg_tol: float = 1e-8, cg_max_iter: int = 100,
                 lissa_depth: int = 1000, lissa_batch: int = 64, lissa_samples: int = 1,
                 lissa_scale: float | None = None, self_influence: bool = False):
        self.fraction = fraction
        self.seed = seed
        self.device = device
        self.model = model
        self.method = method
        self.l2 = l2
        self.damping = damping
        self.last_layer = last_layer
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.cg_tol = cg_tol
        self.cg_max_iter = cg_max_iter
        self.lissa_depth = lissa_depth
        self.lissa_batch = lissa_batch
        self.lissa_samples = lissa_samples
        self.lissa_scale = lissa_scale
        self.self_influence = self_influence

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        dev = resolve_device(self.device)
        K = train.n_classes
        ytr = torch.as_tensor(train.y, device=dev)
        yte = torch.as_tensor(test.y, device=dev)
        report(progress, "influence:train", 0, 1)
        if self.model == "logreg" or (self.model == "mlp" and self.last_layer):
            if self.model == "logreg":
                Xtr_np, Xte_np = standardise(train, test)
            else:
                net = train_classifier(train.X, train.y, K, hidden=self.hidden,
                                       epochs=self.epochs, lr=self.lr, weight_decay=self.l2,
                                       seed=self.seed, device=dev)
                with torch.no_grad():
                    Xtr_np = net.features(torch.as_tensor(train.X, device=dev)).double()
                    Xte_np = net.features(torch.as_tensor(test.X, device=dev)).double()
            Xtr = torch.as_tensor(Xtr_np, dtype=torch.float64, device=dev)
            Xte = torch.as_tensor(Xte_np, dtype=torch.float64, device=dev)
            d = Xtr.shape[1]
            loss_fn = G.linear_loss_fn(d, K)
            mask = G.linear_l2_mask(d, K, Xtr)
            obj = G.Objective(loss_fn, Xtr, ytr, self.l2, mask)
            theta = G.fit_lbfgs(obj, torch.zeros(K * (d + 1), dtype=torch.float64, device=dev))
            gauge = G.linear_gauge(d, K, Xtr)
        elif self.model == "mlp":
            net = train_classifier(train.X, train.y, K, hidden=self.hidden, epochs=self.epochs,
                                   lr=self.lr, weight_decay=self.l2, seed=self.seed,
                                   device=dev).double()
            Xtr = torch.as_tensor(train.X, dtype=torch.float64, device=dev)
            Xte = torch.as_tensor(test.X, dtype=torch.float64, device=dev)
            loss_fn, theta = G.module_loss_fn(net)
            gauge = None
            obj = G.Objective(loss_fn, Xtr, ytr, self.l2)
        else:
            raise ValueError(f"model must be 'logreg' or 'mlp', not {self.model!r}")
        report(progress, "influence:train", 1, 1)

        p = theta.numel()
        method = self.method
        if method == "auto":
            method = "exact" if p <= _EXACT_MAX_PARAMS else "cg"
        if method not in ("exact", "cg", "lissa"):
            raise ValueError(f"method must be exact, cg, lissa or auto, not {self.method!r}")
        if self.self_influence and method != "exact":
            raise ValueError("self_influence needs method='exact' (one solve per training point)")

        def hvp(v: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            return obj.hvp(theta, v, rows) + self.damping * v

        extra: dict = {"n_params": p, "method": method, "grad_norm":
                       float(obj.grad(theta).norm())}
        report(progress, "influence:solve", 0, 1)
        H = None
        if method == "exact":
            H = obj.hessian(theta) + self.damping * torch.eye(p, dtype=theta.dtype, device=dev)
            if gauge is not None:
                H = H + gauge
            chol, info = torch.linalg.cholesky_ex(H)
            extra["hessian_min_eig"] = float(torch.linalg.eigvalsh(H)[0])
            if int(info) != 0:
                raise ValueError("the Hessian is not positive definite; raise damping "
                                 f"(smallest eigenvalue {extra['hessian_min_eig']:.3g})")
        n = Xtr.shape[0]
        if self.self_influence:
            values = torch.empty(n, dtype=theta.dtype, device=dev)
            for sl, g in G.per_sample_grads(loss_fn, theta, Xtr, ytr):
                sol = torch.cholesky_solve(g.T, chol)
                values[sl] = -(g * sol.T).sum(1)
                report(progress, "influence:values", sl.stop, n)
            extra["score"] = "self_influence"
        else:
            g_test = G.summed_grad(loss_fn, theta, Xte, yte)
            if method == "exact":
                s_test = torch.cholesky_solve(g_test[:, None], chol)[:, 0]
            elif method == "cg":
                s_test, iters = G.conjugate_gradient(hvp, g_test, tol=self.cg_tol,
                                                     max_iter=self.cg_max_iter)
                extra["cg_iterations"] = iters
                extra["cg_residual"] = float((hvp(s_test) - g_test).norm() / g_test.norm())
            else:
                gen = torch_generator(self.seed, 1)
                scale = self.lissa_scale
                if scale is None:  # must exceed λ_max(H) for the recursion to converge
                    scale = 1.5 * G.top_eigenvalue(hvp, theta, gen) + 1e-8
                s_test = G.lissa(hvp, g_test, n, scale=scale, depth=self.lissa_depth,
                                 batch=self.lissa_batch, samples=self.lissa_samples, gen=gen)
                extra["lissa_scale"] = scale
            report(progress, "influence:solve", 1, 1)
            values = torch.empty(n, dtype=theta.dtype, device=dev)
            for sl, g in G.per_sample_grads(loss_fn, theta, Xtr, ytr):
                values[sl] = g @ s_test / n
                report(progress, "influence:values", sl.stop, n)
            extra["score"] = "test_loss_influence"
        vals = values.detach().cpu().numpy().astype(np.float64)
        return ValuationResult.from_values(vals, self.fraction, self.name, extra=extra)

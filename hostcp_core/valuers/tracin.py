"""TracIn-CP (Pruthi et al. 2020): gradient agreement with the test set, summed over checkpoints."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from hostcp_core.data import Dataset
from hostcp_core.device import resolve_device
from hostcp_core.models import MLP
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult
from hostcp_core.valuer import Valuer
from hostcp_core.valuers import _grads as G
from hostcp_core.valuers._common import chunks, torch_generator


class TracInCP(Valuer):
    """value_i = Σ_c η_c ∇ℓ_c(z_i) · Σ_test ∇ℓ_c(z'), checkpoints c saved (parameters and the
    learning rate η_c in effect) every ``epochs // n_checkpoints`` epochs of plain SGD on the
    full training set. Positive = proponent of the test set.

    ``last_layer=True`` uses only the head's gradient, in closed form:
    ∇ℓ·∇ℓ' = (aᵀa' + 1)(p − y)ᵀ(p' − y') (one forward pass per checkpoint; Captum's
    TracInCPFast keeps the bias term out, we keep it in). ``self_influence=True`` scores
    −Σ_c η_c ‖∇ℓ_c(z_i)‖² instead (mislabelled points are the most self-influential, so they
    come out lowest). ``lr_decay`` multiplies the learning rate after each epoch.
    """

    name = "tracin"

    def __init__(self, fraction: float = 0.2, seed: int = 0, device: str = "auto",
                 hidden: Sequence[int] = (64,), epochs: int = 20, lr: float = 0.05,
                 lr_decay: float = 1.0, batch_size: int = 32, n_checkpoints: int = 5,
                 last_layer: bool = False, self_influence: bool = False,
                 grad_batch: int = 256):
        self.fraction = fraction
        self.seed = seed
        self.device = device
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.lr_decay = lr_decay
        self.batch_size = batch_size
        self.n_checkpoints = n_checkpoints
        self.last_layer = last_layer
        self.self_influence = self_influence
        self.grad_batch = grad_batch

    def _train(self, Xtr, ytr, K, progress):
        """Plain SGD; returns [(state_dict, lr)] saved every ``epochs // n_checkpoints``."""
        torch.manual_seed(self.seed)
        model = MLP(Xtr.shape[1], K, self.hidden).to(Xtr.device)
        model.set_standardisation(Xtr)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr)
        gen = torch_generator(self.seed, 2)
        every = max(1, self.epochs // max(1, self.n_checkpoints))
        ckpts = []
        n = Xtr.shape[0]
        for epoch in range(1, self.epochs + 1):
            lr = opt.param_groups[0]["lr"]
            perm = torch.randperm(n, generator=gen).to(Xtr.device)
            for sl in chunks(n, self.batch_size):
                idx = perm[sl]
                loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if epoch % every == 0 and len(ckpts) < self.n_checkpoints:
                ckpts.append((copy.deepcopy(model.state_dict()), lr))
            for group in opt.param_groups:
                group["lr"] *= self.lr_decay
            report(progress, "tracin:train", epoch, self.epochs, epoch=epoch, loss=float(loss))
        return model, ckpts

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        dev = resolve_device(self.device)
        K = train.n_classes
        Xtr = torch.as_tensor(train.X, device=dev)
        Xte = torch.as_tensor(test.X, device=dev)
        ytr = torch.as_tensor(train.y, device=dev)
        yte = torch.as_tensor(test.y, device=dev)
        model, ckpts = self._train(Xtr, ytr, K, progress)
        n = Xtr.shape[0]
        values = torch.zeros(n, dtype=torch.float64, device=dev)
        for c, (state, lr) in enumerate(ckpts):
            model.load_state_dict(state)
            if self.last_layer:
                values += lr * self._last_layer_scores(model, Xtr, ytr, Xte, yte, K)
            else:
                loss_fn, theta = G.module_loss_fn(model)
                g_test = None if self.self_influence else G.summed_grad(loss_fn, theta, Xte, yte)
                for sl, g in G.per_sample_grads(loss_fn, theta, Xtr, ytr, self.grad_batch):
                    score = -(g * g).sum(1) if self.self_influence else g @ g_test
                    values[sl] += lr * score.double()
            report(progress, "tracin:checkpoints", c + 1, len(ckpts))
        extra = {"n_checkpoints": len(ckpts), "learning_rates": [lr for _, lr in ckpts],
                 "score": "self_influence" if self.self_influence else "test_influence",
                 "last_layer": self.last_layer}
        return ValuationResult.from_values(values.cpu().numpy(), self.fraction, self.name,
                                           extra=extra)

    @torch.no_grad()
    def _last_layer_scores(self, model, Xtr, ytr, Xte, yte, K) -> torch.Tensor:
        def parts(X, y):
            a = model.features(X).double()
            r = torch.softmax(model.head(a.float()), 1).double() - F.one_hot(y, K).double()
            return a, r  # ∇_W ℓ = r aᵀ, ∇_b ℓ = r

        a, r = parts(Xtr, ytr)
        if self.self_influence:
            return -((a * a).sum(1) + 1) * (r * r).sum(1)
        at, rt = parts(Xte, yte)
        gW, gb = rt.T @ at, rt.sum(0)  # summed test gradient of the head
        return ((r @ gW) * a).sum(1) + r @ gb

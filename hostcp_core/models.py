"""The classifier f(x; θ): a small MLP that carries its own input standardisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hostcp_core.device import resolve_device


class MLP(nn.Module):
    """``len(hidden)`` ReLU hidden layers then a linear head; ``hidden=()`` is logistic
    regression. ``features(x)`` is the last hidden representation (the input to ``head``)."""

    def __init__(self, n_in: int, n_classes: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)
        self.n_hidden_out = width

    def set_standardisation(self, X: torch.Tensor) -> None:
        self.mean.copy_(X.mean(0))
        self.scale.copy_(X.std(0, unbiased=False).clamp_min(1e-6))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 60,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    sample_weight: np.ndarray | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> MLP:
    """Train an MLP from scratch with Adam on (X, y); deterministic for a seed on CPU."""
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    Xt = torch.as_tensor(X, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(y, dtype=torch.long, device=dev)
    w = None if sample_weight is None else torch.as_tensor(sample_weight, dtype=torch.float32,
                                                           device=dev)
    model = MLP(Xt.shape[1], n_classes, hidden).to(dev)
    model.set_standardisation(Xt)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = Xt.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            losses = F.cross_entropy(model(Xt[idx]), yt[idx], reduction="none")
            if w is None:
                loss = losses.mean()
            else:
                wb = w[idx]
                loss = (wb * losses).sum() / wb.sum().clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, X: np.ndarray, device: str | torch.device | None = None
                  ) -> np.ndarray:
    dev = next(model.parameters()).device if device is None else resolve_device(device)
    logits = model(torch.as_tensor(X, dtype=torch.float32, device=dev))
    return torch.softmax(logits, dim=1).cpu().numpy()


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    return float((predict_proba(model, X).argmax(1) == np.asarray(y)).mean())

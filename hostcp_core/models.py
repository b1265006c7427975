"""The classifier f(x; θ): a small MLP that carries its own input standardisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    patience: int | None = None,
    min_delta: float = 1e-3,
    on_progress: Callable[[int, int, float | None], None] | None = None,
    progress_every: int = 50,
) -> MLP:
    """Train an MLP from scratch with Adam on (X, y); deterministic for a seed on CPU.

    Early stopping (``patience`` set): stop once the epoch's mean training loss has not fallen
    below (1 − ``min_delta``) × the best so far for ``patience`` epochs in a row. ``on_progress``
    is called as (epoch, batches done in it, mean loss) at each epoch's end and as
    (epoch, batches, None) every ``progress_every`` batches within it; it may raise (e.g.
    :class:`hostcp_core.Cancelled`) to stop training. Neither changes the arithmetic: without
    early stopping the model is the same with or without a callback. The number of epochs run
    is kept in ``model.epochs_run_``."""
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
    best, stale, run = float("inf"), 0, 0
    track = patience is not None or on_progress is not None
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        # the epoch's loss is summed on the device and read once per epoch (no per-batch sync)
        loss_sum = torch.zeros((), device=dev)
        for b, start in enumerate(range(0, n, batch_size)):
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
            if track:
                loss_sum += loss.detach() * idx.numel()
                if on_progress is not None and (b + 1) % progress_every == 0:
                    on_progress(epoch, b + 1, None)
        run = epoch + 1
        if not track:
            continue
        mean_loss = float(loss_sum) / n
        if on_progress is not None:
            on_progress(epoch, -(-n // batch_size), mean_loss)
        if patience is not None:
            if mean_loss < best * (1 - min_delta):
                best, stale = mean_loss, 0
            else:
                stale += 1
                if stale >= patience:
                    break
    model.epochs_run_ = run
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, X: np.ndarray, device: str | torch.device | None = None
                  ) -> np.ndarray:
    dev = next(model.parameters()).device if device is None else resolve_device(device)
    logits = model(torch.as_tensor(X, dtype=torch.float32, device=dev))
    return torch.softmax(logits, dim=1).cpu().numpy()


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    return float((predict_proba(model, X).argmax(1) == np.asarray(y)).mean())

"""A wave's θ steps and look-aheads on static buffers, replayable as one CUDA graph.

HOST-CP's θ steps follow one minibatch after another (each sees the θ the previous one left),
about a hundred small kernels each. On a GPU their cost is launching those kernels, so
``ThetaWave`` captures the W steps of a wave, and the look-ahead values dV/du of all W
minibatches, as one graph, replayed at every wave of that shape. It computes what
``HostCP._theta_steps_wave`` computes, with every minibatch padded to the wave's width and
masked (a short last minibatch weighs its padded points 0), so shapes never change.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn import functional as F


def lookahead_dots(model: nn.Module, theta: dict[str, torch.Tensor],
                   grads: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor,
                   Xv: torch.Tensor, Yv: torch.Tensor, lr: float, *,
                   sampled: bool) -> torch.Tensor:
    """⟨∇V(θ̂), ∇ℓ_j(θ)⟩ for every point j of W minibatches at once (vmap): θ (W, ...) each
    minibatch's parameters before its step, ``grads`` its step's gradient, θ̂ = θ − lr·grad;
    V the test loss on Xv, Yv ((W, m, ...) per minibatch if ``sampled``, else one set).
    One forward-mode JVP of the per-point losses per minibatch. Returns (W, n)."""
    buffers = dict(model.named_buffers())

    def dots(theta, g, xb, yb, Xv, Yv):
        theta_hat = {k: theta[k] - lr * g[k] for k in theta}

        def V(p):
            return F.cross_entropy(functional_call(model, (p, buffers), (Xv,)), Yv)

        def losses(p):
            return F.cross_entropy(functional_call(model, (p, buffers), (xb,)), yb,
                                   reduction="none")

        return jvp(losses, (theta,), (grad(V)(theta_hat),))[1]

    v_dim = 0 if sampled else None
    return vmap(dots, in_dims=(0, 0, 0, 0, v_dim, v_dim))(theta, grads, xb, yb, Xv, Yv)


class ThetaWave:
    """θ steps (u-weighted loss, eq. 8) and dV/du (eq. 9) for waves of one shape: W minibatches
    of width n. ``graph``: capture on the first ``run`` and replay after (CUDA); else eager.

    The model and optimizer are updated in place, as by the eager steps; with ``graph`` the
    optimizer must be capturable (Adam(capturable=True)). A capture warms up first on a side
    stream and then restores the model and optimizer state, so the warm-up changes nothing.
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, *, fraction: float,
                 lookahead_lr: float, graph: bool):
        self.model, self.opt = model, opt
        self.fraction, self.lr = fraction, lookahead_lr
        self.params = dict(model.named_parameters())
        self.graph = graph
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, torch.Tensor] | None = None
        self._test_set: tuple[torch.Tensor, torch.Tensor] | None = None

    def run(self, xb: torch.Tensor, yb: torch.Tensor, u: torch.Tensor, real: torch.Tensor,
            tb: torch.Tensor | None, Xt: torch.Tensor, Yt: torch.Tensor,
            loss_sum: torch.Tensor) -> torch.Tensor:
        """xb (W, n, d), yb, u, real (W, n); tb (W, test batch) test rows per minibatch or None
        (the whole test set). Adds Σ loss·size to ``loss_sum``; returns dV/du (W, n), 0 on
        padded points. ``Xt``, ``Yt`` must be the same tensors at every call of a graph."""
        inputs = {"xb": xb, "yb": yb, "u": torch.where(real, u, 0.0), "real": real, "tb": tb}
        if self._static is None:   # the static buffers, shaped by the first wave
            self._allocate(inputs)
        elif any(x is not None and x.shape != self._static[k].shape for k, x in inputs.items()):
            raise ValueError("ThetaWave: a wave of another shape (one instance per shape)")
        for k, x in inputs.items():
            if x is not None:
                self._static[k].copy_(x)
        if not self.graph:
            self._compute(Xt, Yt)
        else:
            if self._graph is None:
                self._capture(Xt, Yt)
                self._test_set = (Xt, Yt)
            elif Xt is not self._test_set[0] or Yt is not self._test_set[1]:
                # the graph reads the captured tensors' memory, whatever is passed now
                raise ValueError("ThetaWave: a graph replays on the test set it was captured "
                                 "with; pass the same Xt and Yt tensors")
            self._graph.replay()
        loss_sum += self.loss
        return self.dV.clone()

    def _allocate(self, inputs: dict) -> None:
        self._static = {k: torch.empty_like(x) for k, x in inputs.items() if x is not None}
        for k, x in self._static.items():
            setattr(self, k, x)
        if inputs["tb"] is None:
            self.tb = None
        W = inputs["xb"].shape[0]
        self.theta = {k: p.new_zeros(W, *p.shape) for k, p in self.params.items()}
        self.grads = {k: p.new_zeros(W, *p.shape) for k, p in self.params.items()}
        self.loss = torch.zeros((), dtype=torch.float64, device=inputs["xb"].device)
        self.dV = torch.zeros_like(inputs["u"])

    def _compute(self, Xt: torch.Tensor, Yt: torch.Tensor) -> None:
        model, opt = self.model, self.opt
        sizes = self.real.sum(1).to(self.xb.dtype)
        norm = self.fraction * sizes
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.xb.device)
        for w in range(self.xb.shape[0]):
            for k, p in self.params.items():
                self.theta[k][w].copy_(p.detach())
            per_point = F.cross_entropy(model(self.xb[w]), self.yb[w], reduction="none")
            loss = (self.u[w] * per_point).sum() / norm[w]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for k, p in self.params.items():
                self.grads[k][w].copy_(p.grad)
            opt.step()
            loss_sum = loss_sum + loss.detach().double() * sizes[w]
        self.loss.copy_(loss_sum)
        if self.tb is not None:
            Xv, Yv = Xt[self.tb], Yt[self.tb]
        else:
            Xv, Yv = Xt, Yt
        d = lookahead_dots(model, self.theta, self.grads, self.xb, self.yb, Xv, Yv, self.lr,
                           sampled=self.tb is not None)
        self.dV.copy_(torch.where(self.real, -(self.lr / norm)[:, None] * d, 0.0).detach())

    def _capture(self, Xt: torch.Tensor, Yt: torch.Tensor) -> None:
        params = list(self.params.values())
        saved = [p.detach().clone() for p in params]
        state = {p: {k: v.clone() for k, v in self.opt.state[p].items()
                     if isinstance(v, torch.Tensor)} for p in params if p in self.opt.state}
        main = torch.cuda.current_stream(self.xb.device)
        side = torch.cuda.Stream(device=self.xb.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):   # lazy initialisation outside the capture
            self._compute(Xt, Yt)
        main.wait_stream(side)
        with torch.no_grad():           # undo the warm-up's steps
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
            for p in params:
                for k, v in self.opt.state[p].items():
                    if isinstance(v, torch.Tensor):
                        v.copy_(state[p][k]) if p in state else v.zero_()
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._compute(Xt, Yt)


__all__ = ["ThetaWave", "lookahead_dots"]

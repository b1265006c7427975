"""HOST-CP (Algorithm 1): online facility-location selection trained jointly with the model.

Per minibatch D_t:
  1. represent each point by what the classifier knows (its hidden layer and/or its last-layer
     gradient embedding), embed it with h(·; φ) and compute distances to the batch and to the
     k nearest points selected so far (the old set O_t);
  2. solve the convex selection layer (DESIGN §3) for u;
  3. SGD step on θ with the u-weighted loss (eq. 8);
  4. one-step look-ahead θ̂ = θ − α∇θL(θ; u), V = test loss at θ̂ (eq. 9), and a step on φ
     along ∇φV, which reaches φ only through u (eq. 12).
The per-point score is the mean over the epochs after warm-up of −∂V/∂u_j (the marginal value
of point j's selection variable for the look-ahead test loss), standardised within each class;
the subset is the top ⌈γn⌉, class-stratified.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn import functional as F

from hostcp_core._theta_wave import ThetaWave
from hostcp_core.data import Dataset
from hostcp_core.device import resolve_device
from hostcp_core.models import MLP
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult, subset_size
from hostcp_core.selection import SelectionLayer, select_top_k
from hostcp_core.selection._static import (
    NewtonGraphs,
    implicit_vjp,
    mask_padding,
    solve_batch,
)
from hostcp_core.selection._types import SolverError
from hostcp_core.valuer import Valuer

EMBEDDINGS = ("hidden", "gradient", "hidden+gradient", "raw")
SCORES = ("value", "mass", "mean_u", "cost")
LAYER_SOLVERS = ("auto", "static", "adaptive")
# wave="auto": W per device type (CPU: measured with benchmarks/epoch_speed.py, docs/RESULTS.md;
# CUDA: a first guess, to be measured with benchmarks/gpu_check.sh), and at least this many
# waves per epoch (fewer, larger waves lost subset quality: on 500-1000-point data, and W = 16 at
# 10k points, 10 waves an epoch, on clean labels; W = 9 there, 17 waves, did not).
WAVE_AUTO = {"cpu": 16, "cuda": 64}
_AUTO_WAVES_PER_EPOCH = 16
# Cross-class distances (class-conditional mode) are this many mean distances: a constant, so a
# point is represented by another class only when nothing else is feasible.
_CROSS_CLASS_DISTANCE = 8.0
T = TypeVar("T")


class _Embedding(nn.Module):
    """h(r; φ) and the representative cost c(r; φ) ≥ 0 (an optional column cost of the
    distance d_ij = D(h_i, h_j) + c_j: how costly point j is as a representative)."""

    def __init__(self, d_in: int, dim: int, width: int, cost_head: bool):
        super().__init__()
        self.map = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, dim))
        self.cost = None
        if cost_head:
            self.cost = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, 1))
            # Start from a constant cost: a constant column cost leaves the program's solution
            # unchanged, so training starts at plain facility location.
            nn.init.zeros_(self.cost[-1].weight)
            nn.init.zeros_(self.cost[-1].bias)

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = None if self.cost is None else F.softplus(self.cost(r)).squeeze(-1)
        return self.map(r), c


class HostCP(Valuer):
    """HOST-CP valuer.

    Parameters
    ----------
    fraction: γ, the fraction of the training set to select.
    embedding: what h embeds: ``"gradient"`` (default; the per-example last-layer gradient
        embedding (p − y) ⊗ [a, 1]), ``"hidden"`` (the classifier's last hidden layer),
        ``"hidden+gradient"``, or ``"raw"`` (the input features; a weak control). The default
        was the best on the synthetic benchmark (docs/RESULTS.md); "hidden" alone lost to
        random subsets there.
    class_conditional: a point may be represented only by points of its own label.
    cost_head: learn a representative cost c_j added to every distance to j.
    learn_embedding: train φ through the layer (False freezes φ at its random init).
    test_batch_size: test points in the look-ahead loss V per step (the whole test set when it
        has no more; else a random sample). Sampling noise in V is noise in every point's value:
        1024 (the whole 500-point valuation set of the paper benchmark) gave better flip
        ranking and steeper removal curves than 256, with subsets about as good
        (docs/RESULTS.md).
    eps: the layer's regulariser, relative to the mean distance.
    old_set_size: k, the number of nearest selected points the layer sees.
    old_search_pool: search the k nearest among at most this many selected points (a random
        sample when there are more; None: all), so the cost per minibatch stays flat.
    score: the per-point value (all of them are kept in ``scores_`` after fitting):
        ``"value"`` (default), the mean over epochs of −∂V/∂u_j, the
        marginal value of point j's selection variable for the look-ahead test loss (the signal
        the layer passes to φ, eq. 12); ``"mass"``, the mean over epochs of how much of the
        data a point represents (its column mass in Zn when in a batch plus in Zo while in the
        old set): typical, well-placed points represent many, outliers and mislabelled points
        only themselves; ``"mean_u"``, the mean opening u_j (favours outliers: each must be
        covered by someone); ``"cost"``, minus the learned representative cost.
    stratify: compare points within their class: the score is standardised per class (the
        look-ahead signal carries a class-wide offset from the model's current bias, which
        would otherwise rank whole classes first) and the subset takes the top of each class in
        proportion to its size. False keeps raw scores and the global top.
    recalibrate: judge the look-ahead by the test loss after re-fitting the output biases to the
        test batch (V(θ̂) = min_b L_test(θ̂, b)), which takes a class-prior mismatch between the
        training and test sets (a biased model, flipped labels shifting the priors) out of
        every −∂V/∂u_j. Off by default: on the paper benchmark it lowered removal curves and
        raised flip ROC-AUC, but its subsets were worse (docs/RESULTS.md).
    solver: ``"native"`` (fast, default) or ``"cvxpylayers"`` (reference; small batches only).
    num_threads: torch CPU threads while fitting (restored after). The per-batch work is many
        small ops, which run fastest on one thread and degrade badly on a shared CPU with more.
    wave: W, the number of consecutive minibatches whose selection problems are solved in one
        batched call (``"auto"``, the default: the best measured for the device, ``WAVE_AUTO``,
        but at most 1/16 of an epoch's minibatches, so W = 1 up to 1,984 points at batch size
        64, W = 9 at 10k, 16 from 16,384 on the CPU). Within a
        wave the old set is the one at the wave's start (it is updated after the wave), and
        every problem is set up with φ and θ as they were at the wave's start; the θ step, the
        look-ahead and the φ step still follow per minibatch (φ's steps use gradients taken at
        the wave's start). W = 1 is the per-minibatch algorithm, unchanged.
        Measured (docs/RESULTS.md, issue 12): an epoch over 10k points ~2x faster on one CPU
        thread at W = 16, ~1.5-1.9x at 9; subsets on 10k synthetic points (5 seeds) at W = 9
        within 1.5 standard errors of W = 1 clean and flipped, but W = 16 (a tenth of an epoch)
        0.024 worse on clean labels, and on 1000 points W = 4-16 (a quarter of an epoch or
        more) about 0.02 worse with 10% flipped labels: hence the cap on "auto".
    layer_solver: how a wave's batch is solved (W > 1 only): ``"static"`` (no read-back to the
        host inside the Newton loop but once every 8 iterations; what a GPU needs),
        ``"adaptive"`` (reads back at every step and works on the unconverged problems only,
        which costs nothing on a CPU), ``"auto"``: static on CUDA, adaptive elsewhere.
    cuda_graphs: on CUDA with W > 1, replay each wave's Newton iterations and its θ steps with
        their look-aheads as CUDA graphs, captured at the first wave of each shape (the same
        computation: bit-identical results in the H200 check, docs/RESULTS.md). A GPU's time on
        a wave goes to launching small kernels, not running them (on an H200, one epoch over
        10k points at W = 64: 0.82 s with graphs, 1.30 s without).
        A capture that fails turns graphs off for the fit with a warning, and
        ``extra["cuda_graphs"]`` says why. False: launch the kernels one by one.
    """

    name = "hostcp"
    # Tests set this to run W = 1 through the wave code (which must then give the same results).
    _wave_path_at_one = False

    def __init__(
        self,
        fraction: float = 0.2,
        *,
        embedding: str = "gradient",
        class_conditional: bool = True,
        cost_head: bool = True,
        learn_embedding: bool = True,
        epochs: int = 12,
        warmup_epochs: int = 2,
        batch_size: int = 64,
        hidden: Sequence[int] = (64, 64),
        embed_dim: int = 16,
        embed_width: int = 64,
        lr: float = 1e-3,
        embed_lr: float = 3e-3,
        lookahead_lr: float = 0.1,
        weight_decay: float = 1e-4,
        test_batch_size: int = 1024,
        eps: float = 0.05,
        old_set_size: int = 40,
        old_search_pool: int | None = 4096,
        score: str = "value",
        stratify: bool = True,
        recalibrate: bool = False,
        solver: str = "native",
        seed: int = 0,
        device: str = "auto",
        num_threads: int | None = 1,
        wave: int | str = "auto",
        layer_solver: str = "auto",
        cuda_graphs: bool = True,
    ):
        self.fraction = fraction
        self.embedding = embedding
        self.class_conditional = class_conditional
        self.cost_head = cost_head
        self.learn_embedding = learn_embedding
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.batch_size = batch_size
        self.hidden = hidden
        self.embed_dim = embed_dim
        self.embed_width = embed_width
        self.lr = lr
        self.embed_lr = embed_lr
        self.lookahead_lr = lookahead_lr
        self.weight_decay = weight_decay
        self.test_batch_size = test_batch_size
        self.eps = eps
        self.old_set_size = old_set_size
        self.old_search_pool = old_search_pool
        self.score = score
        self.stratify = stratify
        self.recalibrate = recalibrate
        self.solver = solver
        self.seed = seed
        self.device = device
        self.num_threads = num_threads
        self.wave = wave
        self.layer_solver = layer_solver
        self.cuda_graphs = cuda_graphs

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.epochs <= self.warmup_epochs:
            raise ValueError("epochs must exceed warmup_epochs (scores come after warm-up)")
        if self.score == "cost" and not self.cost_head:
            raise ValueError("score='cost' needs cost_head=True")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2")
        if self.old_set_size < 0:
            raise ValueError("old_set_size must be >= 0")
        if not (self.wave == "auto" or (isinstance(self.wave, int) and self.wave >= 1)):
            raise ValueError(f"wave must be an integer >= 1 or 'auto', got {self.wave!r}")
        if self.layer_solver not in LAYER_SOLVERS:
            raise ValueError(f"layer_solver must be one of {LAYER_SOLVERS}, got "
                             f"{self.layer_solver!r}")

    # ------------------------------------------------------------------ representation
    def _represent(self, model: MLP, x: torch.Tensor, y: torch.Tensor,
                   scales: torch.Tensor | None = None) -> torch.Tensor:
        """What h embeds, detached: θ is trained by its own loss, φ only through the layer.
        Each block is divided by its scale (its mean row norm over the training set, fixed for
        an epoch) so that blocks weigh alike and batches and old points share one scale."""
        with torch.no_grad():
            if self.embedding == "raw":
                blocks = [(x - model.mean) / model.scale]
            else:
                a = model.features(x)
                blocks = []
                if "hidden" in self.embedding:
                    blocks.append(a)
                if "gradient" in self.embedding:
                    p = torch.softmax(model.head(a), dim=1)
                    g = p - F.one_hot(y, p.shape[1]).to(p.dtype)
                    a1 = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
                    # the CE loss's gradient w.r.t. the head (weights and bias), flattened
                    blocks.append((g[:, :, None] * a1[:, None, :]).flatten(1))
            if scales is None:
                return torch.stack([bl.norm(dim=1).mean().clamp_min(1e-12) for bl in blocks])
            return torch.cat([bl / s for bl, s in zip(blocks, scales, strict=True)], dim=1)

    # ------------------------------------------------------------------ main loop
    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        self._check_params()
        previous = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            return self._run(train, test, progress)
        finally:
            torch.set_num_threads(previous)

    def _run(self, train: Dataset, test: Dataset,
             progress: ProgressCallback | None) -> ValuationResult:
        dev = resolve_device(self.device)
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        X = torch.as_tensor(train.X, device=dev)
        Y = torch.as_tensor(train.y, device=dev)
        Xt = torch.as_tensor(test.X, device=dev)
        Yt = torch.as_tensor(test.y, device=dev)
        n, K = train.n, train.n_classes

        model = MLP(train.n_features, K, self.hidden).to(dev)
        model.set_standardisation(X)
        # fused on CUDA: one kernel per step instead of a dozen (each launch costs more
        # than the step's arithmetic)
        fused = dev.type == "cuda" or None
        graphs = self.cuda_graphs and dev.type == "cuda"
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                               fused=fused, capturable=graphs)
        scales = self._represent(model, X, Y)
        d_rep = self._represent(model, X[:2], Y[:2], scales).shape[1]
        embed = _Embedding(d_rep, self.embed_dim, self.embed_width, self.cost_head).to(dev)
        embed_opt = torch.optim.Adam(embed.parameters(), lr=self.embed_lr, fused=fused)
        layer = SelectionLayer(fraction=self.fraction, eps=self.eps, solver=self.solver,
                               normalize=False)

        u_sum = torch.zeros(n, dtype=torch.float64, device=dev)
        mass_sum = torch.zeros(n, dtype=torch.float64, device=dev)
        # −dV/du_j summed over epochs: the look-ahead value signal that reaches φ
        signal_sum = torch.zeros(n, dtype=torch.float64, device=dev)
        u_count = 0
        n_batches = math.ceil(n / self.batch_size)
        total_steps = self.epochs * n_batches
        t_start = time.perf_counter()
        t_layer = 0.0
        grad_norms: list[float] = []
        epoch_times: list[float] = []
        epoch_cpu: list[float] = []  # process CPU seconds: robust to other work on the machine
        step = 0
        W = self._wave_size(dev, n_batches)
        waves = W > 1 or self._wave_path_at_one
        acc = _Accumulators(u_sum, mass_sum, signal_sum, grad_norms, _WaveSteps(graphs))
        for epoch in range(self.epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            warm = epoch < self.warmup_epochs
            scales = self._represent(model, X, Y)
            old_set = _OldSet(n, self.embed_dim, dev, self.old_search_pool, gen)
            epoch_loss = 0.0
            t_epoch, c_epoch = time.perf_counter(), time.process_time()
            if waves:
                # Waves: losses summed on the device, read (with progress) once per wave.
                loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
                for b0 in range(0, n_batches, W):
                    batches = [perm[b * self.batch_size:(b + 1) * self.batch_size]
                               for b in range(b0, min(b0 + W, n_batches))]
                    if warm:
                        for idx in batches:
                            loss_sum += self._plain_step(model, opt, X[idx], Y[idx]) * len(idx)
                    else:
                        t_layer += self._wave(model, opt, embed, embed_opt, layer, X, Y, Xt, Yt,
                                              batches, old_set, scales, gen, acc, loss_sum)
                    step += len(batches)
                    report(progress, "train", step, total_steps, epoch=epoch,
                           batch=b0 + len(batches) - 1, loss=float(loss_sum) / max(
                               1, min((b0 + len(batches)) * self.batch_size, n)))
                epoch_loss = float(loss_sum)
            for b in range(0 if waves else n_batches):
                idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
                xb, yb = X[idx], Y[idx]
                if warm or len(idx) < 2:
                    loss = self._plain_step(model, opt, xb, yb)
                else:
                    t0 = time.perf_counter()
                    out, old_idx, hb = self._select(model, embed, layer, X, Y, idx, old_set,
                                                    scales)
                    u = out.u
                    # off-diagonal: a point opened only for itself represents nobody else
                    Zn = out.Zn.detach()
                    mass_sum[idx] += (Zn.sum(0) - Zn.diagonal()).double()
                    mass_sum[old_idx] += out.Zo.detach().sum(0).double()
                    t_layer += time.perf_counter() - t0
                    loss, gnorm, dV_du = self._joint_step(model, opt, embed, embed_opt, xb, yb,
                                                          u, Xt, Yt, gen)
                    signal_sum[idx] -= dV_du.double()
                    grad_norms.append(gnorm)
                    ud = u.detach()
                    u_sum[idx] += ud.double()
                    k = subset_size(len(idx), self.fraction)
                    top = select_top_k(ud, k)
                    old_set.add(idx[top], hb[top])
                epoch_loss += float(loss.detach()) * len(idx)
                step += 1
                report(progress, "train", step, total_steps, epoch=epoch, batch=b,
                       loss=float(loss.detach()))
            if not warm:
                u_count += 1
                epoch_times.append(time.perf_counter() - t_epoch)
                epoch_cpu.append(time.process_time() - c_epoch)

        # waves keep their W norms on the device: one read-back per wave, here
        grad_norms = [float(x) for g in grad_norms
                      for x in (g.tolist() if isinstance(g, torch.Tensor) else [g])]
        scores = {"mean_u": u_sum, "mass": mass_sum, "value": signal_sum}
        scores = {k: (v / max(u_count, 1)).cpu().numpy() for k, v in scores.items()}
        if embed.cost is not None:
            with torch.no_grad():
                final_scales = self._represent(model, X, Y)
                _, c = embed(self._represent(model, X, Y, final_scales))
            scores["cost"] = -c.double().cpu().numpy()
        values = scores[self.score]
        # every per-point score, raw (before per-class standardisation), for analysis
        self.scores_ = scores
        self.model_ = model.eval()
        self.embedding_ = embed.eval()
        extra = {"score": self.score, "epochs_scored": u_count, "wave": W,
                 "cuda_graphs": acc.waves.status() if waves else "off",
                 "phi_grad_norm_median": float(np.median(grad_norms)) if grad_norms else 0.0,
                 "final_loss": epoch_loss / n}
        timings = {"layer_s": t_layer, "train_s": time.perf_counter() - t_start,
                   "selection_epoch_s": epoch_times, "selection_epoch_cpu_s": epoch_cpu,
                   "per_point_epoch_ms": 1e3 * (time.perf_counter() - t_start)
                   / (n * self.epochs)}
        k = subset_size(n, self.fraction)
        if self.stratify:
            values = _standardise_per_class(values, train.y)
            selected = _stratified_top_k(values, train.y, k)
        else:
            selected = np.sort(np.argsort(-values, kind="stable")[:k])
        return ValuationResult(values=values, selected=selected, method=self.name,
                               timings=timings, extra=extra)

    def _wave_size(self, dev: torch.device, n_batches: int) -> int:
        if self.wave == "auto":
            # a wave's old set is the one at its start: keep waves a small part of an epoch
            w = min(WAVE_AUTO.get(dev.type, 1), max(1, n_batches // _AUTO_WAVES_PER_EPOCH))
        else:
            w = int(self.wave)
        # the reference solver and subclasses that replace the per-minibatch selection
        # (benchmark ablations) run per minibatch
        if self.solver != "native" or type(self)._select is not HostCP._select:
            return 1
        return w

    @staticmethod
    def _plain_step(model, opt, xb, yb) -> torch.Tensor:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def _select(self, model, embed, layer, X, Y, idx, old_set, scales):
        """Distances of the batch to itself and to its k nearest selected points; solve the
        layer. Returns its output, the training indices of the old points it saw and the
        batch's embeddings."""
        xb, yb = X[idx], Y[idx]
        hb, cb = embed(self._represent(model, xb, yb, scales))
        Dn = _pairwise(hb, hb)
        old = old_set.nearest(hb.detach(), yb, Y, self.old_set_size, self.class_conditional)
        if old.numel():
            # fresh embeddings for the k chosen (the search used those cached at selection)
            ho, co = embed(self._represent(model, X[old], Y[old], scales))
            Do = _pairwise(hb, ho)
            yo = Y[old]
        else:
            Do = hb.new_zeros(len(idx), 0)
            co = None if cb is None else cb.new_zeros(0)
            yo = yb.new_zeros(0)
        scale = torch.cat([Dn.flatten(), Do.flatten()]).mean().detach().clamp_min(1e-12)
        Dn, Do = Dn / scale, Do / scale
        if cb is not None:
            Dn = Dn + cb[None, :] * (1 - torch.eye(len(idx), device=Dn.device))
            Do = Do + co[None, :]
        if self.class_conditional:
            Dn = torch.where(yb[:, None] == yb[None, :], Dn, _CROSS_CLASS_DISTANCE)
            Do = torch.where(yb[:, None] == yo[None, :], Do, _CROSS_CLASS_DISTANCE)
        return layer(Dn, Do), old, hb.detach()

    def _joint_step(self, model, opt, embed, embed_opt, xb, yb, u, Xt, Yt, gen):
        """θ step on the u-weighted loss (eq. 8); φ step on the look-ahead test loss (eq. 9, 12)."""
        loss, dV_du = self._theta_step(model, opt, xb, yb, u.detach(), Xt, Yt, gen)
        if not self.learn_embedding:
            return loss, 0.0, dV_du
        embed_opt.zero_grad(set_to_none=True)
        surrogate = (dV_du.to(u.dtype) * u).sum()
        surrogate.backward()
        gnorm = float(sum(p.grad.norm() ** 2 for p in embed.parameters()
                          if p.grad is not None) ** 0.5)
        embed_opt.step()
        return loss, gnorm, dV_du

    def _theta_steps_wave(self, model, opt, xb, yb, u, real, sizes, Xt, Yt, gen, loss_sum,
                          waves: _WaveSteps) -> torch.Tensor:
        """The θ steps of a wave's minibatches, one after the other (as ``_theta_step``), and
        their look-aheads dV/du in one vectorised call (``ThetaWave``: a CUDA graph on a GPU).
        xb (W, n, d), yb and u (W, n) padded as ``real`` says; returns dV/du (W, n), 0 on
        padded points."""
        tb = None
        if self.test_batch_size < Xt.shape[0]:
            # the draws of the per-minibatch algorithm, in its order; one copy to the device
            tb = torch.stack([torch.randperm(Xt.shape[0], generator=gen)[:self.test_batch_size]
                              for _ in sizes]).to(Xt.device)

        def run() -> torch.Tensor:
            key = tuple(xb.shape)
            if key not in waves.theta:
                waves.theta[key] = ThetaWave(model, opt, fraction=self.fraction,
                                             lookahead_lr=self.lookahead_lr, graph=waves.graph)
            return waves.theta[key].run(xb, yb, u, real, tb, Xt, Yt, loss_sum)

        return waves.attempt(run)

    def _theta_step(self, model, opt, xb, yb, ud, Xt, Yt, gen):
        """θ step with u held fixed; returns the loss and dV/du of the look-ahead."""
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = dict(model.named_buffers())
        norm = self.fraction * len(xb)

        def losses(p):
            return F.cross_entropy(functional_call(model, (p, buffers), (xb,)), yb,
                                   reduction="none")

        per_point = F.cross_entropy(model(xb), yb, reduction="none")
        loss = (ud * per_point).sum() / norm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = {k: v.grad.detach().clone() for k, v in model.named_parameters()}
        # Look-ahead: θ̂ = θ − α ∇θL(θ; u). dV/du_j = −(α/γ|D_t|) ⟨∇θ̂V, ∇θℓ_j(θ)⟩; the inner
        # products for the whole batch are one forward-mode JVP of the per-point losses.
        theta_hat = {k: params[k] - self.lookahead_lr * grads[k] for k in params}
        if self.test_batch_size >= Xt.shape[0]:
            Xv, Yv = Xt, Yt   # the whole test set: no sampling noise in the value signal
        else:
            tb = torch.randperm(Xt.shape[0], generator=gen)[:self.test_batch_size].to(Xt.device)
            Xv, Yv = Xt[tb], Yt[tb]
        shift = 0.0
        if self.recalibrate:
            with torch.no_grad():
                shift = _prior_shift(functional_call(model, (theta_hat, buffers), (Xv,)), Yv)
        th = {k: v.clone().requires_grad_(True) for k, v in theta_hat.items()}
        V = F.cross_entropy(functional_call(model, (th, buffers), (Xv,)) + shift, Yv)
        gV = torch.autograd.grad(V, list(th.values()))
        _, dots = jvp(losses, (params,), (dict(zip(th.keys(), gV, strict=True)),))
        dV_du = -(self.lookahead_lr / norm) * dots.detach()
        opt.step()
        return loss.detach(), dV_du

    # ------------------------------------------------------------------ waves (W > 1)
    def _problems(self, params, embed, R, Ro, yb, yo, real, valid):
        """Distances of the layer's problems from the representations of the new points R
        (..., n, d) and of their old points Ro (..., k, d), as ``_select`` computes them, with
        padded new points (``real`` False) and old columns (``valid`` False) masked out
        (``mask_padding``: one more old column). Works batched and per problem (under vmap), so
        φ's gradient can be taken per minibatch."""
        hb, cb = functional_call(embed, params, (R,))
        ho, co = functional_call(embed, params, (Ro,))
        Dn, Do = _pairwise(hb, hb), _pairwise(hb, ho)
        n = hb.shape[-2]
        rn = real.unsqueeze(-1)
        mn, mo = rn & real.unsqueeze(-2), rn & valid.unsqueeze(-2)
        n_real = real.sum(-1)
        count = n_real * n_real + n_real * valid.sum(-1)
        total = torch.where(mn, Dn, 0.0).sum((-2, -1)) + torch.where(mo, Do, 0.0).sum((-2, -1))
        scale = (total / count).detach().clamp_min(1e-12)[..., None, None]
        Dn, Do = Dn / scale, Do / scale
        if cb is not None:
            Dn = Dn + cb.unsqueeze(-2) * (1 - torch.eye(n, device=Dn.device))
            Do = Do + co.unsqueeze(-2)
        if self.class_conditional:
            # a Python scalar, not new_tensor: a host-to-device copy waits for the device
            Dn = torch.where(yb.unsqueeze(-1) == yb.unsqueeze(-2), Dn, _CROSS_CLASS_DISTANCE)
            Do = torch.where(yb.unsqueeze(-1) == yo.unsqueeze(-2), Do, _CROSS_CLASS_DISTANCE)
        return mask_padding(Dn, Do, real, valid)

    def _wave(self, model, opt, embed, embed_opt, layer, X, Y, Xt, Yt, batches, old_set,
              scales, gen, acc, loss_sum) -> float:
        """One wave: the selection problems of these minibatches solved in one call against
        the old set as it stands (a short minibatch padded to the others' size and masked),
        then the θ and φ steps per minibatch. Returns the seconds spent on the selection."""
        t0 = time.perf_counter()
        tiny = [b for b in batches if len(b) < 2]     # a last minibatch of 1: no selection
        batches = [b for b in batches if len(b) >= 2]
        t_layer = 0.0
        if batches:
            t_layer = self._wave_select_and_step(model, opt, embed, embed_opt, layer, X, Y, Xt,
                                                 Yt, batches, old_set, scales, gen, acc,
                                                 loss_sum, t0)
        for idx in tiny:
            loss_sum += self._plain_step(model, opt, X[idx], Y[idx]) * len(idx)
        return t_layer

    def _wave_select_and_step(self, model, opt, embed, embed_opt, layer, X, Y, Xt, Yt, batches,
                              old_set, scales, gen, acc, loss_sum, t0) -> float:
        W, nb = len(batches), max(len(b) for b in batches)
        sizes = [len(b) for b in batches]
        idxs = torch.stack([torch.cat([b, b[:1].expand(nb - len(b))]) for b in batches])
        ar = torch.arange(nb, device=idxs.device)
        real = ar[None, :] < torch.tensor(sizes, device=idxs.device)[:, None]   # (W, nb)
        yb = Y[idxs]
        R = self._represent(model, X[idxs.flatten()], yb.flatten(), scales).view(W, nb, -1)
        params = {k: v.detach() for k, v in embed.named_parameters()}
        with torch.no_grad():
            hb, _ = embed(R)
            old, valid = old_set.nearest_wave(hb, yb, real, Y, self.old_set_size,
                                              self.class_conditional)
            Ro = self._represent(model, X[old.flatten()], Y[old.flatten()],
                                 scales).view(W, old.shape[1], -1)
            yo = Y[old]
            Dn, Do = self._problems(params, embed, R, Ro, yb, yo, real, valid)
        budget = torch.tensor([layer.budget(s) for s in sizes], dtype=torch.float64,
                              device=Dn.device)
        mode = self.layer_solver
        if mode == "auto":
            mode = "static" if Dn.device.type == "cuda" else "adaptive"

        sol = acc.waves.attempt(lambda: solve_batch(
            Dn.double(), Do.double(), budget, self.eps, mode=mode, scale=_CROSS_CLASS_DISTANCE,
            graphs=acc.waves.newton))
        u, Zn = sol.u.to(Dn.dtype), sol.Zn.to(Dn.dtype)    # (W, nb), (W, nb, nb)
        # Padded slots add exact zeros (to a real index), so nothing is read back to the host.
        flat_real = real.flatten()
        ridx = idxs.flatten()
        mass = Zn.sum(-2) - Zn.diagonal(dim1=-2, dim2=-1)
        acc.mass.index_add_(0, ridx, torch.where(flat_real, mass.flatten(), 0.0).double())
        zo = sol.Zo[..., :-1].to(Dn.dtype).sum(-2)         # the sink column is no point
        acc.mass.index_add_(0, old.flatten(), torch.where(valid, zo, 0.0).flatten().double())
        acc.u.index_add_(0, ridx, torch.where(flat_real, u.flatten(), 0.0).double())
        top = select_top_k(u, subset_size(nb, self.fraction))   # padded u = 0 sort last
        for w, size in enumerate(sizes):
            t = top[w, :subset_size(size, self.fraction)]
            old_set.add(idxs[w, t], hb[w, t])
        t_layer = time.perf_counter() - t0
        if self.recalibrate:   # the bias re-fit iterates on the host: one minibatch at a time
            dV = torch.zeros_like(u)
            for w, size in enumerate(sizes):
                xb, ybw = X[idxs[w, :size]], yb[w, :size]
                loss, dV[w, :size] = self._theta_step(model, opt, xb, ybw, u[w, :size], Xt, Yt,
                                                      gen)
                loss_sum += loss * size
        else:
            dV = self._theta_steps_wave(model, opt, X[idxs], yb, u, real, sizes, Xt, Yt, gen,
                                        loss_sum, acc.waves)
        acc.signal.index_add_(0, ridx, -dV.flatten().double())   # padded dV are 0
        if not self.learn_embedding:
            acc.grad_norms.extend([0.0] * W)
            return t_layer
        zeros_n, zeros_o = torch.zeros_like(sol.Zn), torch.zeros_like(sol.Zo)
        gDn, gDo = implicit_vjp(sol.saved, self.eps, zeros_n, zeros_o, dV.to(sol.u.dtype))
        gDn, gDo = gDn.to(Dn.dtype), gDo.to(Do.dtype)

        def surrogate(p, R, Ro, yb, yo, real, valid, gDn, gDo):
            dn, do = self._problems(p, embed, R, Ro, yb, yo, real, valid)
            return (dn * gDn).sum() + (do * gDo).sum()

        grads = vmap(grad(surrogate), in_dims=(None, 0, 0, 0, 0, 0, 0, 0, 0))(
            params, R, Ro, yb, yo, real, valid, gDn, gDo)
        names = list(params)
        for w in range(W):
            embed_opt.zero_grad(set_to_none=True)
            for name, prm in embed.named_parameters():
                prm.grad = grads[name][w]
            embed_opt.step()
        norms = torch.stack([grads[k].flatten(1).square().sum(1) for k in names]).sum(0).sqrt()
        acc.grad_norms.append(norms)
        return t_layer


class _Accumulators(NamedTuple):
    u: torch.Tensor
    mass: torch.Tensor
    signal: torch.Tensor
    grad_norms: list      # floats (per minibatch) or device tensors of W (per wave)
    waves: _WaveSteps       # the wave steps' state, kept for the fit


class _WaveSteps:
    """What a fit's waves keep: per wave shape the θ steps with their look-aheads
    (``ThetaWave``) and, with ``graph`` (CUDA), the layer's Newton iterations, both replayed as
    CUDA graphs. A graph that fails (a kernel a capture cannot hold on some torch or CUDA build)
    turns graphs off for the rest of the fit, with a warning and the reason in the result's
    ``extra["cuda_graphs"]``; the eager steps compute the same."""

    def __init__(self, graph: bool) -> None:
        self.graph = graph
        self.newton = NewtonGraphs() if graph else None
        self.theta: dict[tuple, ThetaWave] = {}
        self.failed: str | None = None

    def attempt(self, step: Callable[[], T]) -> T:
        """``step()``; if it fails in a CUDA graph, graphs go off and it runs again eagerly
        (the failed capture ran nothing: a capture records kernels without running them)."""
        if not self.graph:
            return step()
        try:
            return step()
        except RuntimeError as err:
            if isinstance(err, SolverError):
                raise
            self.failed = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            warnings.warn(f"HOST-CP: CUDA graphs failed, running eagerly: {self.failed}",
                          RuntimeWarning, stacklevel=2)
            self.graph, self.newton, self.theta = False, None, {}
            return step()

    def status(self) -> str:
        if self.failed is not None:
            return f"failed: {self.failed}"
        return "on" if self.graph else "off"


class _OldSet:
    """O_t: the points selected so far this epoch, with their embeddings cached at selection
    time for the nearest-neighbour search (the paper uses LSH, the official code FAISS).

    With ``search_pool`` set, the search looks at a random sample of that many selected points
    once there are more, so a minibatch costs the same however large O_t grows (an approximate
    nearest-neighbour search, as LSH is)."""

    def __init__(self, n: int, dim: int, device: torch.device, search_pool: int | None = None,
                 generator: torch.Generator | None = None):
        self.idx = torch.empty(n, dtype=torch.long, device=device)
        self.h = torch.empty(n, dim, device=device)
        self.size = 0
        self.search_pool = search_pool
        self.generator = generator

    def add(self, idx: torch.Tensor, h: torch.Tensor) -> None:
        end = self.size + len(idx)
        self.idx[self.size:end] = idx
        self.h[self.size:end] = h
        self.size = end

    def nearest(self, hb: torch.Tensor, yb: torch.Tensor, Y: torch.Tensor, k: int,
                class_conditional: bool) -> torch.Tensor:
        """Training indices of the (up to) k selected points nearest to the batch."""
        if not self.size or not k:
            return self.idx[:0]
        rows = torch.arange(self.size, device=hb.device)
        if self.search_pool and self.size > self.search_pool:
            rows = torch.randperm(self.size, generator=self.generator)[:self.search_pool]
            rows = rows.to(hb.device)
        idx = self.idx[rows]
        d = torch.cdist(hb, self.h[rows])
        if class_conditional:
            d = d.masked_fill(yb[:, None] != Y[idx][None, :], float("inf"))
        nearest = d.min(0).values
        keep = torch.topk(-nearest, min(k, len(rows))).indices
        return idx[keep[torch.isfinite(nearest[keep])]]

    def nearest_wave(self, hb: torch.Tensor, yb: torch.Tensor, real: torch.Tensor,
                     Y: torch.Tensor, k: int,
                     class_conditional: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """For each of W batches (hb (W, n, dim), its real points ``real`` (W, n)): training
        indices of the (up to) k selected points nearest to it, padded to k, and which of them
        are real (W, k). One search pool is drawn for the wave."""
        W = hb.shape[0]
        out = torch.zeros(W, k, dtype=torch.long, device=hb.device)
        valid = torch.zeros(W, k, dtype=torch.bool, device=hb.device)
        if not self.size or not k:
            return out, valid
        rows = torch.arange(self.size, device=hb.device)
        if self.search_pool and self.size > self.search_pool:
            rows = torch.randperm(self.size, generator=self.generator)[:self.search_pool]
            rows = rows.to(hb.device)
        idx = self.idx[rows]
        yp = Y[idx] if class_conditional else torch.zeros_like(idx)
        yw = yb if class_conditional else torch.zeros_like(yb)
        nearest = _batch_distances(hb, yw, real, self.h[rows], yp,
                                   static=hb.device.type == "cuda")   # (W, pool)
        top = min(k, len(rows))
        neg, keep = torch.topk(-nearest, top, dim=1)
        out[:, :top] = idx[keep]
        valid[:, :top] = torch.isfinite(neg)
        return out, valid


def _batch_distances(hb: torch.Tensor, yb: torch.Tensor, real: torch.Tensor, P: torch.Tensor,
                     yp: torch.Tensor, static: bool) -> torch.Tensor:
    """(W, pool): each pool point's distance to the nearest real point of its class in each
    of W batches (hb (W, n, dim), yb and real (W, n); P (pool, dim), yp (pool,)); inf where
    there is none. As torch.cdist computes it (|h|² + |p|² − 2 h·p), with the batch's
    minimum taken before the pool point's |p|² is added and the root taken.

    ``static`` (for a GPU: no read-back) multiplies every pair and masks the other classes'.
    Otherwise each class's points meet only the batch's points of that class, gathered to the
    front of each batch: with C balanced classes 1/C² of the pairs (a search over 4,096 pool
    points took 40 ms a wave at W = 16 with two classes; this way 2 ms)."""
    W, n, dim = hb.shape
    inf = float("inf")
    hn = torch.where(real, (hb * hb).sum(-1), inf)
    pn = (P * P).sum(-1)
    if static:
        G = torch.baddbmm(hn.unsqueeze(-1), hb, P.T.expand(W, -1, -1), alpha=-2.0)
        G = torch.where(yb.unsqueeze(-1) == yp, G, inf)
        return (G.amin(1) + pn).clamp(min=0).sqrt()
    out = torch.full((W, P.shape[0]), inf, dtype=hb.dtype, device=hb.device)
    for c in torch.unique(yp).tolist():
        cols = (yp == c).nonzero().squeeze(1)
        rows = (yb == c) & real
        k = int(rows.sum(1).max())
        if not k:
            continue
        first = torch.argsort((~rows).to(torch.int8), dim=1, stable=True)[:, :k]  # class c first
        hc = torch.gather(hb, 1, first.unsqueeze(-1).expand(-1, -1, dim))
        hnc = torch.where(torch.gather(rows, 1, first), torch.gather(hn, 1, first), inf)
        G = torch.baddbmm(hnc.unsqueeze(-1), hc, P[cols].T.expand(W, -1, -1), alpha=-2.0)
        out[:, cols] = G.amin(1) + pn[cols]
    return out.clamp(min=0).sqrt()


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distances with a safe gradient at zero distance (no matmul shortcut:
    torch.cdist's is inexact, see reference/selection-layer.md)."""
    diff = a[..., :, None, :] - b[..., None, :, :]
    sq = (diff * diff).sum(-1)
    zero = sq <= 1e-24
    return torch.where(zero, torch.zeros_like(sq), torch.sqrt(torch.where(zero, 1.0, sq)))


def _prior_shift(logits: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3,
                 iters: int = 30) -> torch.Tensor:
    """The output-bias shift δ minimising mean CE(logits + δ, y) + l2/2 |δ|² (Newton's method on
    a smooth convex function of K variables; the small ridge keeps δ finite for classes absent
    from the batch). At δ the test loss has no gradient along the biases: the class-prior
    mismatch is removed from the look-ahead signal (envelope theorem)."""
    K = logits.shape[1]
    onehot = F.one_hot(y, K).to(logits.dtype)
    eye = torch.eye(K, dtype=logits.dtype, device=logits.device)
    delta = logits.new_zeros(K)
    for _ in range(iters):
        p = torch.softmax(logits + delta, dim=1)
        g = (p - onehot).mean(0) + l2 * delta
        H = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0) + l2 * eye
        step = torch.linalg.solve(H, g)
        step = step * min(1.0, 2.0 / float(step.abs().max().clamp_min(1e-12)))  # damped
        delta = delta - step
        if float(step.abs().max()) < 1e-6:
            break
    return delta


def _standardise_per_class(values: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).copy()
    for c in np.unique(y):
        rows = y == c
        v = out[rows]
        out[rows] = (v - v.mean()) / (v.std() if v.std() > 0 else 1.0)
    return out


def _stratified_top_k(values: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """The top of each class by value, classes in proportion to their size (largest
    remainders), k in all."""
    classes, counts = np.unique(y, return_counts=True)
    quota = k * counts / counts.sum()
    take = np.floor(quota).astype(int)
    for c in np.argsort(-(quota - take), kind="stable")[: k - take.sum()]:
        take[c] += 1
    picks = []
    for c, t in zip(classes, take, strict=True):
        rows = np.flatnonzero(y == c)
        picks.append(rows[np.argsort(-values[rows], kind="stable")[:t]])
    return np.sort(np.concatenate(picks))

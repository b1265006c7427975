"""DVRL (Yoon, Arik & Pfister 2020): a data-value estimator trained by REINFORCE."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hostcp_core.data import Dataset
from hostcp_core.device import resolve_device
from hostcp_core.errors import ValuationFailed
from hostcp_core.models import MLP
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult
from hostcp_core.valuer import Valuer
from hostcp_core.valuers._common import chunks, standardise, torch_generator

# Values whose spread is at most this are constant (float32 probabilities: about 10 ulps at 1).
_CONSTANT = 1e-6
# Consecutive constant batches before the whole training set is checked for a collapse.
_DEAD_PATIENCE = 50


class _Estimator(nn.Module):
    """h_φ(x, y, |y − p_val(x)|) ∈ (0, 1), the reference architecture: (x, onehot y) through
    ``layer_number − 2`` ReLU layers (the last ``comb_dim`` wide), then concatenated with the
    validation-model residual, one more ReLU layer and a sigmoid unit."""

    def __init__(self, n_in: int, n_classes: int, hidden_dim: int, comb_dim: int,
                 layer_number: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(n_in + n_classes, hidden_dim), nn.ReLU()]
        for _ in range(layer_number - 3):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        layers += [nn.Linear(hidden_dim, comb_dim), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.comb = nn.Sequential(nn.Linear(comb_dim + n_classes, comb_dim), nn.ReLU(),
                                  nn.Linear(comb_dim, 1))
        # The reference's layers (tf.contrib fully_connected) start with Glorot-uniform weights
        # and zero biases. PyTorch's default (weights U(±1/√fan_in), random biases) shrinks the
        # signal about √6-fold per ReLU layer, so after four layers the random biases decide
        # which units fire, the output hardly depends on the input (std 0.007 at the start) and
        # a few Adam steps can kill every unit of the last ReLU layer: constant values.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, y1h: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
        h = self.body(torch.cat([x, y1h], 1))
        return torch.sigmoid(self.comb(torch.cat([h, diff], 1)))[:, 0]


class DVRL(Valuer):
    """Values are the estimator's selection probabilities after ``iterations`` REINFORCE steps.

    Each step: a batch of min(``batch_size``, n) training points, selections s ~ Bernoulli(h),
    the predictor re-trained from the same saved initialisation on the selected points
    (``inner_iterations`` epochs of Adam, minibatches of ``batch_size_predictor``), reward =
    validation ``metric`` − baseline, loss = −reward·log π(s) + ``penalty``·(hinge of mean(h)
    outside [1 − threshold, threshold]), Adam(``learning_rate``) on the estimator. Baseline:
    ``"fixed"`` = the full-data predictor's validation score (the reference code) or
    ``"moving_average"`` over ``window`` steps, started at that score. The validation set is the
    test set passed in. Reference defaults: iterations 2000, batch 2000, inner 100, predictor
    minibatch 256, hidden 100, comb 10, 5 layers, lr 0.01, threshold 0.9, penalty 1e3.

    The predictor is an :class:`~hostcp_core.models.MLP` (``predictor_hidden=()`` is logistic
    regression, the reference's tabular predictor); it is trained only on the selected points,
    which for 0/1 weights equals the reference's weighted fit.

    A collapsed estimator (every selection probability equal: its last ReLU layer dead, so
    nothing but the output bias can learn again) is not returned: the estimator is trained
    again from a fresh initialisation, at most ``restarts`` times (``extra["restarts"]`` and
    ``extra["collapsed_at"]`` record it), and if every attempt collapses
    :class:`~hostcp_core.errors.ValuationFailed` is raised. Constant values rank nothing, and
    a top set drawn from ties would look like a valuation while being an arbitrary pick.
    """

    name = "dvrl"

    def __init__(self, fraction: float = 0.2, seed: int = 0, device: str = "auto",
                 iterations: int = 2000, batch_size: int = 2000, inner_iterations: int = 100,
                 batch_size_predictor: int = 256, predictor_hidden: Sequence[int] = (),
                 predictor_lr: float = 0.01, hidden_dim: int = 100, comb_dim: int = 10,
                 layer_number: int = 5, learning_rate: float = 0.01, threshold: float = 0.9,
                 penalty: float = 1e3, metric: str = "auc", baseline: str = "fixed",
                 window: int = 20, epsilon: float = 1e-8, restarts: int = 2):
        self.fraction = fraction
        self.seed = seed
        self.device = device
        self.iterations = iterations
        self.batch_size = batch_size
        self.inner_iterations = inner_iterations
        self.batch_size_predictor = batch_size_predictor
        self.predictor_hidden = predictor_hidden
        self.predictor_lr = predictor_lr
        self.hidden_dim = hidden_dim
        self.comb_dim = comb_dim
        self.layer_number = layer_number
        self.learning_rate = learning_rate
        self.threshold = threshold
        self.penalty = penalty
        self.metric = metric
        self.baseline = baseline
        self.window = window
        self.epsilon = epsilon
        self.restarts = restarts

    def _train_predictor(self, model: MLP, init: dict, X: torch.Tensor, y: torch.Tensor,
                         gen: torch.Generator) -> MLP:
        model.load_state_dict(init)  # the same saved init every time: never warm-started
        opt = torch.optim.Adam(model.parameters(), lr=self.predictor_lr)
        n = X.shape[0]
        for _ in range(self.inner_iterations):
            perm = torch.randperm(n, generator=gen).to(X.device)
            for sl in chunks(n, self.batch_size_predictor):
                idx = perm[sl]
                loss = F.cross_entropy(model(X[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return model

    @torch.no_grad()
    def _score(self, model: MLP, X: torch.Tensor, y: torch.Tensor) -> float:
        proba = torch.softmax(model(X), 1)
        if self.metric == "accuracy":
            return float((proba.argmax(1) == y).double().mean())
        if self.metric == "log_loss":
            return -float(F.nll_loss(torch.log(proba.clamp_min(1e-12)), y))
        from sklearn.metrics import roc_auc_score

        yn, pn = y.cpu().numpy(), proba.double().cpu().numpy()
        if pn.shape[1] == 2:
            return float(roc_auc_score(yn, pn[:, 1]))
        return float(roc_auc_score(yn, pn, multi_class="ovr", labels=np.arange(pn.shape[1])))

    def _train_estimator(self, data, predictor: MLP, init: dict, valid_perf: float,
                         gen: torch.Generator, progress: ProgressCallback | None,
                         attempt: int) -> tuple[_Estimator, list[float], int | None]:
        """One REINFORCE run from a fresh estimator. Returns it, the rewards, and the iteration
        at which it was found collapsed (None if it was not): its output constant on
        ``_DEAD_PATIENCE`` consecutive batches and then on the whole training set."""
        Xs, y1h, diff, Xtr, ytr, Xva, yva = data
        dev = Xs.device
        estimator = _Estimator(Xtr.shape[1], y1h.shape[1], self.hidden_dim, self.comb_dim,
                               self.layer_number).to(dev)
        opt = torch.optim.Adam(estimator.parameters(), lr=self.learning_rate)
        n = Xtr.shape[0]
        B = min(self.batch_size, n)
        baseline = valid_perf
        rewards: list[float] = []
        eps = self.epsilon
        stage = "dvrl:iterations" if attempt == 0 else f"dvrl:iterations (restart {attempt})"
        constant_run = 0
        for it in range(self.iterations):
            idx = torch.randperm(n, generator=gen)[:B].to(dev)
            prob = estimator(Xs[idx], y1h[idx], diff[idx])
            p_sample = prob.detach().cpu()   # sampled on the host: one copy serves both
            constant_run = constant_run + 1 if float(p_sample.max() - p_sample.min()) \
                <= _CONSTANT else 0
            if constant_run >= _DEAD_PATIENCE:
                with torch.no_grad():
                    everywhere = estimator(Xs, y1h, diff)
                if float(everywhere.max() - everywhere.min()) <= _CONSTANT:
                    return estimator, rewards, it
                constant_run = 0
            s = torch.bernoulli(p_sample, generator=gen).to(dev)
            if s.sum() == 0:  # the reference code's guard: resample at 0.5
                s = torch.bernoulli(torch.full((B,), 0.5), generator=gen).to(dev)
            chosen = idx[s > 0]
            model = self._train_predictor(predictor, init, Xtr[chosen], ytr[chosen], gen)
            perf = self._score(model, Xva, yva)
            reward = perf - baseline
            log_pi = (s * torch.log(prob + eps) + (1 - s) * torch.log(1 - prob + eps)).sum()
            mean_p = prob.mean()
            loss = -reward * log_pi + self.penalty * (
                F.relu(mean_p - self.threshold) + F.relu((1 - self.threshold) - mean_p))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if self.baseline == "moving_average":
                baseline = ((self.window - 1) * baseline + perf) / self.window
            rewards.append(reward)
            report(progress, stage, it + 1, self.iterations, loss=float(loss.detach()))
        return estimator, rewards, None

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        if self.metric not in ("accuracy", "auc", "log_loss"):
            raise ValueError(f"metric must be accuracy, auc or log_loss, not {self.metric!r}")
        if self.baseline not in ("fixed", "moving_average"):
            raise ValueError(f"baseline must be 'fixed' or 'moving_average', not "
                             f"{self.baseline!r}")
        dev = resolve_device(self.device)
        K = train.n_classes
        torch.manual_seed(self.seed)
        gen = torch_generator(self.seed, 3)
        Xtr = torch.as_tensor(train.X, device=dev)
        Xva = torch.as_tensor(test.X, device=dev)
        ytr = torch.as_tensor(train.y, device=dev)
        yva = torch.as_tensor(test.y, device=dev)
        Xs = torch.as_tensor(standardise(train)[0], dtype=torch.float32, device=dev)
        y1h = F.one_hot(ytr, K).float()

        predictor = MLP(Xtr.shape[1], K, self.predictor_hidden).to(dev)
        predictor.set_standardisation(Xtr)
        init = copy.deepcopy(predictor.state_dict())
        report(progress, "dvrl:baselines", 0, 2)
        ori = self._train_predictor(predictor, init, Xtr, ytr, gen)
        valid_perf = self._score(ori, Xva, yva)
        val_model = self._train_predictor(predictor, init, Xva, yva, gen)
        with torch.no_grad():
            diff = (y1h - torch.softmax(val_model(Xtr), 1)).abs()
        report(progress, "dvrl:baselines", 2, 2)

        data = (Xs, y1h, diff, Xtr, ytr, Xva, yva)
        collapsed_at: list[int] = []
        for attempt in range(self.restarts + 1):
            if attempt:  # a fresh, reproducible initialisation for each restart
                ss = np.random.SeedSequence([self.seed, 4, attempt])
                torch.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))
            estimator, rewards, dead_at = self._train_estimator(
                data, predictor, init, valid_perf, gen, progress, attempt)
            with torch.no_grad():
                values = estimator(Xs, y1h, diff).double().cpu().numpy()
            if dead_at is None and np.ptp(values) <= _CONSTANT:
                dead_at = self.iterations
            if dead_at is None:
                break
            collapsed_at.append(dead_at)
        else:
            raise ValuationFailed(
                f"DVRL's estimator collapsed on all {self.restarts + 1} attempts (every "
                f"selection probability equal, so the values would rank nothing; detected "
                f"at iterations {collapsed_at}); try another seed, a lower learning_rate or "
                f"baseline='moving_average'")
        extra = {"valid_perf": valid_perf, "metric": self.metric, "baseline": self.baseline,
                 "mean_reward_last_100": float(np.mean(rewards[-100:])) if rewards else None,
                 "restarts": len(collapsed_at), "collapsed_at": collapsed_at}
        return ValuationResult.from_values(values, self.fraction, self.name, extra=extra)

"""Truncated Monte-Carlo Data Shapley (Ghorbani & Zou 2019), in independent permutation chunks."""

from __future__ import annotations

import numpy as np

from hostcp_core.data import Dataset
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult
from hostcp_core.valuer import Valuer
from hostcp_core.valuers._utility import AccuracyUtility


def convergence_error(marginals: np.ndarray, window: int = 100) -> float:
    """The original code's ``shap_utils.error``: over the last ``window`` running means v_t of
    the marginals, max_t mean_i |v_t,i − v_T,i| / (|v_T,i| + 1e-12); 1.0 until ``window``
    permutations exist. Converged when it falls below ``err``."""
    mem = np.asarray(marginals, dtype=np.float64)
    if len(mem) < window:
        return 1.0
    running = np.cumsum(mem, 0) / np.arange(1, len(mem) + 1)[:, None]
    last = running[-window:]
    errors = np.mean(np.abs(last - last[-1:]) / (np.abs(last[-1:]) + 1e-12), -1)
    return float(np.max(errors))


def merge_chunks(chunks: list[np.ndarray], window: int = 100) -> tuple[np.ndarray, float]:
    """Stack chunk marginals (in chunk order) -> (Shapley estimates, convergence error)."""
    mem = np.concatenate([np.atleast_2d(c) for c in chunks], 0)
    return mem.mean(0), convergence_error(mem, window)


class TMCShapley(Valuer):
    """TMC-Shapley with the original truncation rule.

    Each permutation starts at ``random_score`` and adds points in order, refitting the
    utility learner once every class is present; the marginal of a point is the change in test
    accuracy. Truncation: when |V − mean_score| ≤ ``tolerance``·mean_score for more than
    ``patience`` consecutive points, the rest of the permutation gets 0 (mean_score is the
    full-data model's mean accuracy over ``n_bootstrap`` bootstrap resamples of the test set).
    Permutations run in chunks of ``check_every``; after each chunk the original convergence
    figure (:func:`convergence_error`) is checked against ``err``; ``max_permutations`` caps the
    run (the original runs until converged, typically 3n–5n permutations).

    Chunks are independent (:meth:`run_chunk` is deterministic in (seed, chunk_index)), so a
    service may run them in parallel and combine them with :func:`merge_chunks`. CPU only.
    """

    name = "tmc_shapley"

    def __init__(self, fraction: float = 0.2, seed: int = 0, device: str = "auto",
                 learner: str = "logreg", tolerance: float = 0.01, patience: int = 5,
                 err: float = 0.05, check_every: int = 100, max_permutations: int = 1000,
                 n_bootstrap: int = 100):
        self.fraction = fraction
        self.seed = seed
        self.device = device
        self.learner = learner
        self.tolerance = tolerance
        self.patience = patience
        self.err = err
        self.check_every = check_every
        self.max_permutations = max_permutations
        self.n_bootstrap = n_bootstrap

    def utility(self, train: Dataset, test: Dataset) -> AccuracyUtility:
        return AccuracyUtility(train.X, train.y, test.X, test.y, self.learner)

    def mean_score(self, utility: AccuracyUtility, seed: int) -> float:
        """Mean full-data accuracy over bootstrap resamples of the test set (the original's
        ``_tol_mean_score``); the same for every chunk of a run."""
        rng = np.random.default_rng([seed, 2**31 - 1])
        m = len(utility.y_test)
        # one fit: the learners are deterministic, so every resample scores the same model
        # (the same figure as refitting per resample, at 1/n_bootstrap of the cost)
        correct = utility._predict(np.arange(len(utility.y)), utility.X_test) == utility.y_test
        return float(np.mean([float(correct[rng.integers(0, m, m)].mean())
                              for _ in range(self.n_bootstrap)]))

    def run_chunk(self, train: Dataset, test: Dataset, chunk_index: int, n_permutations: int,
                  seed: int, *, progress: ProgressCallback | None = None) -> np.ndarray:
        """Marginal contributions (n_permutations, n) of one independent chunk."""
        utility = self.utility(train, test)
        return self._chunk(utility, self.mean_score(utility, seed), chunk_index,
                           n_permutations, seed, progress)

    def _chunk(self, utility: AccuracyUtility, mean_score: float, chunk_index: int,
               n_permutations: int, seed: int, progress: ProgressCallback | None,
               done: int = 0, total: int | None = None, start: int = 0) -> np.ndarray:
        """Permutations ``start`` .. ``start + n_permutations`` of chunk ``chunk_index``: a
        chunk computed in parts equals the chunk computed at once."""
        rng = np.random.default_rng([seed, chunk_index])
        n = len(utility.y)
        for _ in range(start):  # the stream's earlier permutations (microseconds each)
            rng.permutation(n)
        out = np.zeros((n_permutations, n))
        for t in range(n_permutations):
            out[t] = self._one_permutation(utility, rng.permutation(n), mean_score)
            report(progress, "tmc_shapley:permutations", done + t + 1, total or n_permutations)
        return out

    def _one_permutation(self, utility: AccuracyUtility, perm: np.ndarray,
                         mean_score: float) -> np.ndarray:
        marginals = np.zeros(len(perm))
        new_score = utility.random_score
        hits = 0
        for pos, i in enumerate(perm):
            old_score = new_score
            prefix = perm[:pos + 1]
            if utility.fittable(prefix):
                new_score = utility(prefix)
            marginals[i] = new_score - old_score
            if abs(new_score - mean_score) <= self.tolerance * mean_score:
                hits += 1
                if hits > self.patience:
                    break
            else:
                hits = 0
        return marginals

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        utility = self.utility(train, test)
        mean_score = self.mean_score(utility, self.seed)
        chunks: list[np.ndarray] = []
        done, error, c = 0, 1.0, 0
        while done < self.max_permutations:
            size = min(self.check_every, self.max_permutations - done)
            chunks.append(self._chunk(utility, mean_score, c, size, self.seed, progress,
                                      done, self.max_permutations))
            done += size
            c += 1
            values, error = merge_chunks(chunks)
            if error < self.err:
                break
        values, error = merge_chunks(chunks)
        extra = {"n_permutations": done, "n_chunks": c, "convergence_error": error,
                 "converged": bool(error < self.err), "mean_score": mean_score,
                 "random_score": utility.random_score}
        return ValuationResult.from_values(values, self.fraction, self.name, extra=extra)

"""The recommended selection (issue 14): several candidate subsets, the best chosen on the user's
own data.

The test set is split (stratified) into a *selection* part, the only test data any candidate
sees, and a *validation* part that scores the candidates: each candidate's subset trains the
learner the user names ``n_seeds`` times, and its accuracy on the validation part decides.

Candidates (all class-stratified: every class in proportion to its share of the training set):

- ``random``: a random subset (the control);
- ``hostcp``: HOST-CP as published (its own subset);
- ``top_data_oob``, ``top_knn_shapley``: each valuer's top values per class;
- ``trusted_random``: a random subset of the points the detector trusts (what filtering alone
  adds);
- ``coverage``: class-conditional greedy facility location over HOST-CP's learned embedding of
  its gradient representation (what coverage alone adds);
- ``trusted_coverage``: the same coverage, over and from the trusted points only (both);
- ``trusted_hostcp``: HOST-CP's values, top per class among the trusted points.

Two detectors. Data-OOB (out-of-bag agreement with the given label): a point is suspected when
its value falls in the low cluster of an exact 1-D 2-means split of the values (so the cut adapts
to how hard the data are), and each class keeps at least its quota of trusted points. The
calibrated label-error detector (``LabelErrorDetector``, forest + logistic regression; few flags
on clean data): its flags (P(label wrong) >= 0.5) are suspected too, and its probabilities
estimate the label-error rate of the whole set and of the trusted pool. While the pool's
estimate is above a third of the whole set's (clipped to [0.005, 0.02]), the trusted points with
the highest calibrated P(label wrong) leave the pool (each class keeps at least 1.5 times its
quota; ``pool_rank``). Until the third evidence run the points with the lowest Data-OOB values
left first: on synthetic data (labels drawn from P(y | x)) the flips Data-OOB trusts most are the
ones it ranks highest, and the best-valued 100 of that pool held 7 flips on one seed.

Winner rule: the highest mean validation accuracy; every candidate within one paired standard
error of it (per validation point, correctness averaged over the training seeds, difference to
the leader) counts as tied, and a tie goes to the candidate with the fewest expected label errors
in its subset (the detector's probabilities summed, to the nearest whole point: on data it finds
clean every candidate has 0, so the cheapest tied one wins, random first), then to the cheaper
one (``CANDIDATES`` order is by cost). Without the calibrated detector the tie-break counts
Data-OOB's suspects instead.

Budget: each candidate's subset trains the learner ``n_seeds`` times (once for a deterministic
learner), but all of a candidate's trainings together see at most ``max_training_share`` · n
points (so fewer trainings at large γ: at 0.6 and 3 seeds, 3 up to γ = 20%, 1 from γ = 30%).
Candidates whose subsets are identical are trained once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hostcp_core.data import Dataset
from hostcp_core.progress import Progress, ProgressCallback, report
from hostcp_core.result import ValuationResult, subset_size
from hostcp_core.valuer import Valuer

# Cheapest first: the order also breaks ties that the suspect count leaves.
CANDIDATES: tuple[str, ...] = ("random", "top_knn_shapley", "top_data_oob", "trusted_random",
                               "coverage", "trusted_coverage", "hostcp", "trusted_hostcp")
LEARNERS: tuple[str, ...] = ("logreg", "mlp", "gbt")
# What each candidate needs computed first (shared between candidates, timed once).
_NEEDS: dict[str, tuple[str, ...]] = {
    "random": (), "top_knn_shapley": ("knn_shapley",), "top_data_oob": ("data_oob",),
    "trusted_random": ("data_oob", "label_errors"), "coverage": ("hostcp",),
    "trusted_coverage": ("hostcp", "data_oob", "label_errors"), "hostcp": ("hostcp",),
    "trusted_hostcp": ("hostcp", "data_oob", "label_errors"),
}
# Greedy facility location costs O(quota · class size²) (a class of 2000 at γ = 0.2: ~1.6e9
# multiply-adds, seconds): above this many points in a class the coverage candidates are
# skipped (stated in the candidate table), not approximated.
COVERAGE_MAX_CLASS = 2000
# The calibrated detector's models: forest + logistic regression (measured at 500 rows, seed 7:
# the same clean/flipped separation as with boosting added, at a third to a half of the time).
LABEL_ERROR_MODELS: tuple[str, ...] = ("forest", "logistic")


@dataclass
class Candidate:
    """One candidate subset. ``order`` ranks every training point (most valuable first) and
    starts with ``selected``; ``seconds`` is what building it cost on top of shared parts."""

    name: str
    selected: np.ndarray
    order: np.ndarray
    seconds: float
    needs: tuple[str, ...]
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------- building blocks

def class_quotas(y: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Points per class for a subset of k: in proportion to class sizes (largest remainders),
    as HOST-CP's stratified top-k."""
    counts = np.bincount(y, minlength=n_classes)
    quota = k * counts / counts.sum()
    take = np.floor(quota).astype(int)
    for c in np.argsort(-(quota - take), kind="stable")[: k - take.sum()]:
        take[c] += 1
    return np.minimum(take, counts)


def stratified_order(score: np.ndarray, y: np.ndarray, k: int, n_classes: int,
                     allowed: np.ndarray | None = None) -> np.ndarray:
    """A ranking whose first k are the top of each class by ``score`` (class quotas as
    ``class_quotas``), taken from ``allowed`` points first (others only when a class has too
    few allowed ones), then every other point by ``score`` (allowed before the rest)."""
    score = np.asarray(score, dtype=np.float64)
    allowed = np.ones(len(y), dtype=bool) if allowed is None else allowed
    # lexicographic key: allowed first, then by score; stable on ties (index order)
    key = np.lexsort((-score, ~allowed))
    picked = []
    for c, t in enumerate(class_quotas(y, k, n_classes)):
        rows = key[y[key] == c]
        picked.append(rows[:t])
    selected = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    selected = selected[np.lexsort((-score[selected], ~allowed[selected]))]
    rest_mask = np.ones(len(y), dtype=bool)
    rest_mask[selected] = False
    rest = key[rest_mask[key]]
    return np.concatenate([selected, rest]).astype(np.int64)


def suspects_from_values(values: np.ndarray, y: np.ndarray, k: int, n_classes: int
                         ) -> np.ndarray:
    """Suspected mislabels from detector values (low = suspect): the low cluster of an exact
    1-D 2-means split, but never so many in a class that fewer than its quota stay trusted."""
    from hostcp_core.evaluation.detection import two_means_split

    v = np.asarray(values, dtype=np.float64)
    suspect = v < two_means_split(v) if np.ptp(v) > 0 else np.zeros(len(v), dtype=bool)
    for c, t in enumerate(class_quotas(y, k, n_classes)):
        rows = np.flatnonzero(y == c)
        trusted = rows[~suspect[rows]]
        if len(trusted) < t:   # un-suspect the class's best-valued suspects up to the quota
            sus = rows[suspect[rows]]
            suspect[sus[np.argsort(-v[sus], kind="stable")[: t - len(trusted)]]] = False
    return suspect


def pool_target(error_prob: np.ndarray) -> float:
    """The trusted pool's goal for its expected label-error rate: a third of the whole set's
    estimate, clipped to [0.005, 0.02]."""
    return float(np.clip(np.mean(error_prob) / 3.0, 0.005, 0.02)) if len(error_prob) else 0.0


def tighten_pool(trusted: np.ndarray, rank: np.ndarray, error_prob: np.ndarray, y: np.ndarray,
                 k: int, n_classes: int, keep_factor: float = 1.5) -> np.ndarray:
    """Drop trusted points, lowest ``rank`` first, while the mean of ``error_prob`` over the
    trusted pool is above ``pool_target``; a class never goes below ⌈keep_factor · quota⌉
    trusted points (nor below what it has)."""
    pool = np.asarray(trusted, dtype=bool).copy()
    p = np.asarray(error_prob, dtype=np.float64)
    target = pool_target(p)
    counts = np.bincount(y[pool], minlength=n_classes)
    floor_c = np.minimum(counts, np.ceil(keep_factor * class_quotas(y, k, n_classes)).astype(int))
    total, m = float(p[pool].sum()), int(pool.sum())
    for i in np.lexsort((np.arange(len(y)), rank)):
        if m == 0 or total / m <= target:
            break
        if not pool[i] or counts[y[i]] <= floor_c[y[i]]:
            continue
        pool[i] = False
        total -= p[i]
        m -= 1
        counts[y[i]] -= 1
    return pool


POOL_RANKS: tuple[str, ...] = ("data_oob", "label_errors", "both")


def pool_rank(how: str, oob_values: np.ndarray, error_prob: np.ndarray) -> np.ndarray:
    """The order in which ``tighten_pool`` drops trusted points (lowest first): ``data_oob``
    (Data-OOB's value), ``label_errors`` (1 − the calibrated P(label wrong)) or ``both`` (the
    mean of the two rank positions, ties averaged)."""
    from scipy.stats import rankdata

    if how == "data_oob":
        return np.asarray(oob_values, dtype=np.float64)
    if how == "label_errors":
        return 1.0 - np.asarray(error_prob, dtype=np.float64)
    if how == "both":
        return (rankdata(oob_values) + rankdata(-np.asarray(error_prob))) / 2.0
    raise ValueError(f"pool_rank must be one of {POOL_RANKS}, got {how!r}")


def facility_location_order(h: np.ndarray, y: np.ndarray, k: int, n_classes: int,
                            pool: np.ndarray | None = None,
                            progress: ProgressCallback | None = None) -> np.ndarray:
    """Class-conditional greedy facility location (max Σ_i max_{j∈S} s_ij, s = d_max − d within a
    class) over embeddings ``h``: each class gets its quota of representatives, chosen from
    and covering the ``pool`` points of that class (all when None). The ranking: the picks in
    greedy order, then pool points by their remaining gain, then the rest (by gain too)."""
    n = len(y)
    pool = np.ones(n, dtype=bool) if pool is None else pool
    h = np.asarray(h, dtype=np.float64)
    gain_all = np.zeros(n)
    picks_by_class = []
    last = time.monotonic()
    for c, t in enumerate(class_quotas(y, k, n_classes)):
        rows = np.flatnonzero(y == c)
        cand = rows[pool[rows]]
        if len(cand) < t:  # too few pool points: the class's others join (stated by the caller)
            cand = rows
        if len(cand) > COVERAGE_MAX_CLASS:
            raise ValueError(f"class {c} has {len(cand)} points: above COVERAGE_MAX_CLASS")
        hc = h[cand]
        sq = (hc * hc).sum(1)
        d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * hc @ hc.T, 0.0))
        sim = d.max() - d
        cover = np.zeros(len(cand))
        chosen = []
        taken = np.zeros(len(cand), dtype=bool)
        for _ in range(t):
            gains = np.maximum(sim - cover[:, None], 0.0).sum(0)
            gains[taken] = -np.inf
            j = int(np.argmax(gains))
            taken[j] = True
            chosen.append(j)
            cover = np.maximum(cover, sim[:, j])
            if progress is not None and time.monotonic() - last >= 1.0:
                last = time.monotonic()
                report(progress, "recommended:coverage", c, n_classes)
        gains = np.maximum(sim - cover[:, None], 0.0).sum(0)
        gain_all[cand] = gains
        picks_by_class.append(cand[np.asarray(chosen, dtype=np.int64)])
    selected = np.concatenate(picks_by_class) if picks_by_class else np.zeros(0, np.int64)
    rest_mask = np.ones(n, dtype=bool)
    rest_mask[selected] = False
    rest = np.flatnonzero(rest_mask)
    rest = rest[np.lexsort((-gain_all[rest], ~pool[rest]))]
    return np.concatenate([selected, rest]).astype(np.int64)


def hostcp_embedding(hc) -> Callable[[Dataset], np.ndarray]:
    """The learned embedding h(r; φ) of a fitted HostCP over its representation r (the
    classifier's per-example gradient embedding by default): the space its layer covers."""
    import torch

    def embed(train: Dataset) -> np.ndarray:
        dev = next(hc.model_.parameters()).device
        X = torch.as_tensor(train.X, device=dev)
        Y = torch.as_tensor(train.y, device=dev)
        with torch.no_grad():
            scales = hc._represent(hc.model_, X, Y)
            h, _ = hc.embedding_(hc._represent(hc.model_, X, Y, scales))
        return h.double().cpu().numpy()

    return embed


# ---------------------------------------------------------------- learners

def train_predict(learner: str, X: np.ndarray, y: np.ndarray, n_classes: int, Xv: np.ndarray,
                  *, seed: int, epochs: int,
                  on_progress: Callable[[int, int, float | None], None] | None = None
                  ) -> np.ndarray:
    """Predicted labels for ``Xv`` of ``learner`` trained on (X, y): ``logreg`` (standardised
    multinomial logistic regression, sklearn), ``mlp`` (the project's 64-64 MLP,
    ``train_classifier``, ``epochs`` epochs) or ``gbt`` (sklearn histogram gradient boosting).
    A subset with a single class predicts that class. ``on_progress`` reaches the MLP's
    training loop (sklearn's fits have no callback)."""
    present = np.unique(y)
    if present.size < 2:
        return np.full(len(Xv), present[0] if present.size else 0, dtype=np.int64)
    if learner == "mlp":
        from hostcp_core.models import predict_proba, train_classifier

        model = train_classifier(X, y, n_classes, hidden=(64, 64), epochs=epochs, seed=seed,
                                 on_progress=on_progress, progress_every=20)
        return predict_proba(model, Xv).argmax(1)
    if learner == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    elif learner == "gbt":
        from sklearn.ensemble import HistGradientBoostingClassifier

        clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    else:
        raise ValueError(f"learner must be one of {LEARNERS}, got {learner!r}")
    clf.fit(X, y)
    return clf.predict(Xv)


def learner_is_deterministic(learner: str) -> bool:
    """sklearn's logistic regression (lbfgs) does not depend on a seed: one training suffices."""
    return learner == "logreg"


# ---------------------------------------------------------------- scoring and the rule

def scoring_runs(learner: str, n_seeds: int, k: int, max_points: int | None = None) -> int:
    """Trainings per candidate: ``n_seeds`` (one for a deterministic learner), but no more than
    ``max_points`` training points in all (at least one training)."""
    runs = 1 if learner_is_deterministic(learner) else n_seeds
    if max_points is not None and k > 0:
        runs = min(runs, max(1, max_points // k))
    return runs


def score_candidates(cands: dict[str, Candidate], train: Dataset, val: Dataset, k: int, *,
                     learner: str, n_seeds: int, epochs: int, seed: int,
                     max_points: int | None = None,
                     progress: ProgressCallback | None = None) -> dict[str, dict]:
    """Validation accuracy of each candidate's subset (first k of its order): the learner
    trained ``scoring_runs`` times (seeds seed·1000 + s). A candidate whose subset equals an
    earlier one's reuses its trainings (``same_as``). Returns per candidate the accuracies,
    their mean and sd, the per-point correctness averaged over seeds (for the paired rule) and
    the seconds spent."""
    out: dict[str, dict] = {}
    runs = scoring_runs(learner, n_seeds, k, max_points)
    seen: dict[bytes, str] = {}
    total, done, last = len(cands) * runs, 0, time.monotonic()
    for name, cand in cands.items():
        idx = cand.order[:k]
        key = np.sort(idx).astype(np.int64).tobytes()
        if key in seen:   # the same subset: the same trainings (same seeds), not run again
            out[name] = {**out[seen[key]], "seconds": 0.0, "same_as": seen[key]}
            done += runs
            continue
        seen[key] = name
        t0 = time.perf_counter()
        correct = np.zeros(val.n)
        accs = []
        for s in range(runs):
            def tick(epoch, batch, loss, _name=name, _done=done):
                nonlocal last
                if progress is not None and time.monotonic() - last >= 1.0:
                    last = time.monotonic()
                    report(progress, "recommended:score", _done, total, message=_name)

            pred = train_predict(learner, train.X[idx], train.y[idx], train.n_classes, val.X,
                                 seed=seed * 1000 + s, epochs=epochs, on_progress=tick)
            hit = pred == val.y
            correct += hit
            accs.append(float(hit.mean()))
            done += 1
            now = time.monotonic()
            if now - last >= 1.0 or done == total:
                last = now
                report(progress, "recommended:score", done, total, message=name)
        out[name] = {"accuracies": accs, "mean": float(np.mean(accs)),
                     "sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                     "per_point": correct / runs, "seconds": time.perf_counter() - t0}
    return out


def choose_winner(scores: dict[str, dict], suspect_counts: dict[str, int],
                  order: Sequence[str], what: str = "suspected points"
                  ) -> tuple[str, dict[str, float], str]:
    """The rule (module docstring). ``suspect_counts`` is the tie-break (fewest first: expected
    label errors or suspected points in each subset, named by ``what``). Returns the winner,
    each candidate's paired standard error against the leader, and the reason in words."""
    names = [n for n in order if n in scores]
    leader = max(names, key=lambda n: (scores[n]["mean"], -names.index(n)))
    lead = scores[leader]["per_point"]
    se = {}
    tied = []
    for n in names:
        diff = lead - scores[n]["per_point"]
        se[n] = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if scores[leader]["mean"] - scores[n]["mean"] <= se[n]:
            tied.append(n)
    winner = min(tied, key=lambda n: (suspect_counts.get(n, 0), names.index(n)))
    if winner == leader and len(tied) == 1:
        why = (f"highest mean validation accuracy ({scores[leader]['mean']:.4f}); no other "
               "candidate within one paired standard error")
    elif winner == leader:
        why = (f"highest mean validation accuracy ({scores[leader]['mean']:.4f}); tied within "
               f"one paired standard error with {', '.join(t for t in tied if t != leader)}, "
               f"and it has the fewest {what} ({suspect_counts.get(winner, 0)}), "
               "then the lowest cost")
    else:
        why = (f"within one paired standard error ({se[winner]:.4f}) of the leader {leader} "
               f"({scores[leader]['mean']:.4f} vs {scores[winner]['mean']:.4f}); among the "
               f"tied ({', '.join(tied)}) it has the fewest {what} "
               f"({suspect_counts.get(winner, 0)}), then the lowest cost")
    return winner, se, why


def tie_counts(cands: dict[str, Candidate], shared: dict) -> tuple[dict[str, int], str]:
    """The tie-break of each candidate (fewest first) and its name: the expected label errors in
    its subset (the calibrated detector's P(label wrong) summed, to the nearest whole point), or
    without that detector the number of suspected points."""
    p = shared.get("label_error_prob")
    if p is not None:
        return ({c: int(round(float(p[cands[c].selected].sum()))) for c in cands},
                "expected label errors")
    suspect = shared["suspect"]
    return {c: int(suspect[cands[c].selected].sum()) for c in cands}, "suspected points"


def ranking_values(order: np.ndarray) -> np.ndarray:
    """Values that rank exactly as ``order`` (first = highest): (n − position)/n."""
    n = len(order)
    v = np.empty(n)
    v[order] = (n - np.arange(n)) / n
    return v


def split_indices(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of rows into (kept, split-off ≈ fraction of each class), seeded; each
    class with at least two rows keeps at least one row on each side."""
    rng = np.random.default_rng(seed)
    off = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rng.shuffle(rows)
        m = int(round(fraction * len(rows)))
        if len(rows) >= 2:
            m = min(max(m, 1), len(rows) - 1)
        off.append(rows[:m])
    off_idx = np.sort(np.concatenate(off))
    mask = np.ones(len(y), dtype=bool)
    mask[off_idx] = False
    return np.flatnonzero(mask), off_idx


# ---------------------------------------------------------------- the valuer

class RecommendedSelection(Valuer):
    """The recommended subset: candidates scored on a validation part of the test set.

    Parameters
    ----------
    fraction: γ, the subset size as a fraction of the training set.
    seed: seeds the split, every candidate and the learner's trainings.
    learner: what the user will train: ``"logreg"``, ``"mlp"`` or ``"gbt"``.
    candidates: names from ``CANDIDATES`` (None: all of them).
    validation_fraction: the share of the test set (per class) kept for validation; no
        candidate sees it.
    n_seeds: trainings of the learner per candidate (one for a deterministic learner).
    epochs: MLP epochs per training (the budget per candidate: ``n_seeds`` trainings on
        ⌈γn⌉ points, at most ``max_training_share`` · n points in all).
    max_training_share: all of one candidate's scoring trainings together see at most this
        many times n training points (None: no cap). At 0.6, 3 trainings up to γ = 20% and one
        from γ = 30%: the scoring grows with γ while HOST-CP's cost does not.
    label_errors: also run the calibrated label-error detector (its flags join the suspects,
        it tightens the trusted pool and its expected errors break ties; module docstring).
    pool_rank: which points leave the trusted pool first while it is tightened (``pool_rank``):
        ``"label_errors"`` (the highest P(label wrong) first; the default), ``"data_oob"``
        (the lowest Data-OOB values first; the default until the third evidence run) or
        ``"both"`` (mean rank).
    hostcp_params, oob_params: passed to HostCP and DataOOB (e.g. fewer epochs in tests).
    device: for HOST-CP (``"auto"``).
    n_jobs: threads for Data-OOB's trees.
    num_threads: torch and BLAS threads while fitting (restored after; None leaves them). Many
        small trainings run fastest on one thread: measured on this 2-core shared machine, one
        logistic regression on 100 TF-IDF rows took 5–8 s with OpenBLAS's 2 threads and
        0.12–0.25 s with one.
    """

    name = "recommended"

    def __init__(self, fraction: float = 0.2, seed: int = 0, learner: str = "mlp",
                 candidates: Sequence[str] | None = None, validation_fraction: float = 0.5,
                 n_seeds: int = 3, epochs: int = 30, max_training_share: float | None = 0.6,
                 label_errors: bool = True, pool_rank: str = "label_errors",
                 hostcp_params: dict | None = None, oob_params: dict | None = None,
                 device: str = "auto", n_jobs: int = 1, num_threads: int | None = 1):
        self.fraction = fraction
        self.seed = seed
        self.learner = learner
        self.candidates = candidates
        self.validation_fraction = validation_fraction
        self.n_seeds = n_seeds
        self.epochs = epochs
        self.max_training_share = max_training_share
        self.label_errors = label_errors
        self.pool_rank = pool_rank
        self.hostcp_params = hostcp_params
        self.oob_params = oob_params
        self.device = device
        self.n_jobs = n_jobs
        self.num_threads = num_threads

    def _check(self) -> list[str]:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.learner not in LEARNERS:
            raise ValueError(f"learner must be one of {LEARNERS}, got {self.learner!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must be in (0, 1)")
        if self.n_seeds < 1:
            raise ValueError("n_seeds must be at least 1")
        if self.pool_rank not in POOL_RANKS:
            raise ValueError(f"pool_rank must be one of {POOL_RANKS}, got {self.pool_rank!r}")
        names = list(CANDIDATES if self.candidates is None else self.candidates)
        unknown = [c for c in names if c not in CANDIDATES]
        if unknown or not names:
            raise ValueError(f"unknown candidate(s) {unknown}; choose from {CANDIDATES}")
        return [c for c in CANDIDATES if c in names]

    def max_points(self, n: int) -> int | None:
        """The cap on one candidate's scoring trainings' points (``max_training_share`` · n)."""
        if self.max_training_share is None:
            return None
        return int(np.floor(self.max_training_share * n + 1e-9))

    def split(self, test: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """Test rows for (selection, validation): the split ``fit`` uses."""
        return split_indices(test.y, self.validation_fraction, self.seed)

    def build_candidates(self, train: Dataset, selection: Dataset,
                         progress: ProgressCallback | None = None
                         ) -> tuple[dict[str, Candidate], dict]:
        """Every requested candidate, from ``train`` and the selection part of the test set
        only. Returns the candidates and the shared parts' record (seconds, suspects)."""
        names = self._check()
        n, K = train.n, train.n_classes
        k = subset_size(n, self.fraction)
        needs = {p for c in names for p in _NEEDS[c]}
        shared: dict = {"seconds": {}}

        def sub(stage):
            if progress is None:
                return None

            def cb(p: Progress):
                progress(Progress(stage=f"recommended:{stage}:{p.stage}", step=p.step,
                                  total=p.total, epoch=p.epoch, batch=p.batch, loss=p.loss,
                                  message=p.message))
            return cb

        oob = knn = hc_res = hc = None
        if "data_oob" in needs:
            from hostcp_core.valuers.data_oob import DataOOB

            t0 = time.perf_counter()
            oob = DataOOB(fraction=self.fraction, seed=self.seed, n_jobs=self.n_jobs,
                          **{"n_estimators": 200, **(self.oob_params or {})}
                          ).fit(train, selection, progress=sub("data_oob"))
            shared["seconds"]["data_oob"] = time.perf_counter() - t0
        if "knn_shapley" in needs:
            from hostcp_core.valuers.knn_shapley import KNNShapley

            t0 = time.perf_counter()
            knn = KNNShapley(fraction=self.fraction, seed=self.seed, device=self.device
                             ).fit(train, selection, progress=sub("knn_shapley"))
            shared["seconds"]["knn_shapley"] = time.perf_counter() - t0
        if "hostcp" in needs:
            from hostcp_core.hostcp import HostCP

            t0 = time.perf_counter()
            hc = HostCP(fraction=self.fraction, seed=self.seed, device=self.device,
                        **(self.hostcp_params or {}))
            hc_res = hc.fit(train, selection, progress=sub("hostcp"))
            shared["seconds"]["hostcp"] = time.perf_counter() - t0
        suspect = np.zeros(n, dtype=bool)
        detectors = []
        if oob is not None:
            suspect = suspects_from_values(oob.values, train.y, k, K)
            detectors.append("data_oob")
        error_prob = None
        if self.label_errors:
            from hostcp_core.evaluation.label_errors import LabelErrorDetector

            t0 = time.perf_counter()
            led = LabelErrorDetector(models=LABEL_ERROR_MODELS, seed=self.seed,
                                     n_jobs=self.n_jobs).fit(train, progress=sub("label_errors"))
            shared["seconds"]["label_errors"] = time.perf_counter() - t0
            error_prob = np.asarray(led.label_error_prob_, dtype=np.float64)
            flagged = error_prob >= 0.5
            # the flags join the suspects, but a class keeps its quota (best-valued first)
            rank = oob.values if oob is not None else 1.0 - error_prob
            for c, t in enumerate(class_quotas(train.y, k, K)):
                rows = np.flatnonzero(train.y == c)
                new = rows[flagged[rows] & ~suspect[rows]]
                room = max(0, int((~suspect[rows]).sum()) - int(t))
                suspect[new[np.argsort(-rank[new], kind="stable")[:room]]] = True
            detectors.append("label_errors")
            shared["label_error_prob"] = error_prob
            shared["expected_error_rate"] = float(error_prob.mean())
        trusted = ~suspect
        if error_prob is not None and oob is not None:
            trusted = tighten_pool(trusted, pool_rank(self.pool_rank, oob.values, error_prob),
                                   error_prob, train.y, k, K)
            shared["pool_target"] = pool_target(error_prob)
            shared["pool_expected_error_rate"] = (float(error_prob[trusted].mean())
                                                  if trusted.any() else 0.0)
        if detectors:
            shared["detector"] = "+".join(detectors)
            shared["n_suspected"] = int(suspect.sum())
            shared["n_trusted"] = int(trusted.sum())
        rng_seed = np.random.SeedSequence(self.seed).generate_state(1)[0]
        h = None
        cands: dict[str, Candidate] = {}
        for name in names:
            t0 = time.perf_counter()
            info: dict = {}
            if name == "random":
                order = stratified_order(np.random.default_rng(rng_seed).random(n), train.y, k, K)
            elif name == "top_data_oob":
                order = stratified_order(oob.values, train.y, k, K)
            elif name == "top_knn_shapley":
                order = stratified_order(knn.values, train.y, k, K)
            elif name == "trusted_random":
                order = stratified_order(np.random.default_rng(rng_seed).random(n), train.y, k, K,
                                         allowed=trusted)
            elif name == "hostcp":
                # its own subset first, then the rest, each by its value
                chosen = np.zeros(n, dtype=bool)
                chosen[hc_res.selected] = True
                order = np.lexsort((-hc_res.values, ~chosen))
            elif name == "trusted_hostcp":
                order = stratified_order(hc_res.values, train.y, k, K, allowed=trusted)
            elif name in ("coverage", "trusted_coverage"):
                counts = np.bincount(train.y, minlength=K)
                if counts.max() > COVERAGE_MAX_CLASS:
                    info["skipped"] = (f"a class has {counts.max()} points, above "
                                       f"{COVERAGE_MAX_CLASS} (facility location is quadratic)")
                    shared.setdefault("skipped", {})[name] = info["skipped"]
                    continue
                if h is None:
                    h = hostcp_embedding(hc)(train)
                order = facility_location_order(h, train.y, k, K,
                                                pool=trusted if name == "trusted_coverage"
                                                else None, progress=progress)
            else:  # pragma: no cover - _check guards the names
                raise ValueError(name)
            cands[name] = Candidate(name, np.sort(order[:k]), order, time.perf_counter() - t0,
                                    _NEEDS[name], info)
        shared["suspect"] = suspect
        shared["trusted"] = trusted
        return cands, shared

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        if not self.num_threads:
            return self._run(train, test, progress)
        # load sklearn's and scipy's BLAS/OpenMP first: threadpool_limits only reaches libraries
        # already loaded, and scipy's OpenBLAS left at 2 threads made LR fits 2x (quiet) to 30x
        # (loaded machine) slower
        import scipy.linalg  # noqa: F401
        import sklearn.ensemble  # noqa: F401
        import sklearn.linear_model  # noqa: F401
        import torch
        from threadpoolctl import threadpool_limits

        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            with threadpool_limits(self.num_threads):
                return self._run(train, test, progress)
        finally:
            torch.set_num_threads(previous)

    def _run(self, train: Dataset, test: Dataset,
             progress: ProgressCallback | None) -> ValuationResult:
        names = self._check()
        sel_rows, val_rows = self.split(test)
        selection = test.subset(sel_rows, name=f"{test.name}[selection]")
        validation = test.subset(val_rows, name=f"{test.name}[validation]")
        self.selection_rows_, self.validation_rows_ = sel_rows, val_rows
        t0 = time.perf_counter()
        cands, shared = self.build_candidates(train, selection, progress)
        t_build = time.perf_counter() - t0
        k = subset_size(train.n, self.fraction)
        max_points = self.max_points(train.n)
        t0 = time.perf_counter()
        scores = score_candidates(cands, train, validation, k, learner=self.learner,
                                  n_seeds=self.n_seeds, epochs=self.epochs, seed=self.seed,
                                  max_points=max_points, progress=progress)
        t_score = time.perf_counter() - t0
        ties, what = tie_counts(cands, shared)
        suspect = shared.pop("suspect")
        shared.pop("trusted")
        error_prob = shared.pop("label_error_prob", None)
        sus_counts = {c: int(suspect[cands[c].selected].sum()) for c in cands}
        winner, se, why = choose_winner(scores, ties, list(cands), what=what)
        self.candidates_ = cands
        self.scores_ = scores
        self.suspected_ = suspect
        self.label_error_prob_ = error_prob
        table = []
        for c in cands:
            s = scores[c]
            shared_s = sum(shared["seconds"].get(p, 0.0) for p in cands[c].needs)
            table.append({"candidate": c, "validation_accuracy_mean": s["mean"],
                          "validation_accuracy_sd": s["sd"], "paired_se_vs_leader": se[c],
                          "trainings": len(s["accuracies"]), "n_selected": int(k),
                          "suspected_in_subset": sus_counts[c],
                          "expected_label_errors_in_subset": (
                              round(float(error_prob[cands[c].selected].sum()), 2)
                              if error_prob is not None else None),
                          "same_as": s.get("same_as"),
                          "build_seconds": cands[c].seconds + shared_s,
                          "score_seconds": s["seconds"], "needs": list(cands[c].needs),
                          "winner": c == winner})
        for c, reason in shared.get("skipped", {}).items():
            table.append({"candidate": c, "skipped": reason})
        runs = scoring_runs(self.learner, self.n_seeds, k, max_points)
        extra = {
            "winner": winner, "why": why,
            "rule": ("highest mean validation accuracy; candidates within one paired standard "
                     "error (per validation point, correctness averaged over training seeds) "
                     f"are tied; ties go to the fewest {what} in the subset, then to the "
                     "cheaper candidate (order: " + ", ".join(names) + ")"),
            "candidates": table,
            "budget": {"per_candidate": f"{runs} training(s) of {self.learner} on {k} points"
                       + (f", {self.epochs} epochs each" if self.learner == "mlp" else ""),
                       "shared": {p: round(t, 3) for p, t in shared["seconds"].items()}},
            "learner": self.learner,
            "n_selection_rows": int(len(sel_rows)), "n_validation_rows": int(len(val_rows)),
            "detector": shared.get("detector"), "n_suspected": shared.get("n_suspected", 0),
            "n_trusted": shared.get("n_trusted"),
            "expected_error_rate": shared.get("expected_error_rate"),
            "pool_expected_error_rate": shared.get("pool_expected_error_rate"),
        }
        timings = {"candidates_s": t_build, "scoring_s": t_score, **{
            f"{p}_s": t for p, t in shared["seconds"].items()}}
        order = cands[winner].order
        return ValuationResult(values=ranking_values(order), selected=np.sort(order[:k]),
                               method=self.name, timings=timings, extra=extra)

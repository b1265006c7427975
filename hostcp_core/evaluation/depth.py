"""Evaluation of a valuation at a chosen depth, with a bounded cost whatever the data size.

:func:`evaluate_subset` is what a job (and ``hostcp value``) runs after valuation: the
addition curve of the method's ranking, the same curve for a random order, and the selected
subset's accuracy against a random subset of the same size, all scored on a held-out set.
:func:`evaluate_ranking` draws a ranking's addition and removal curves at the same depths
(comparison jobs).

Depths:

* ``"full"``: today's protocol: every learner is trained on all the points it is given
  (``addition_curve``/``subset_accuracy``: the (64, 64) MLP, minibatch 64, ``epochs`` epochs).
  Its cost grows with n (at 100k rows, hours on 2 cores).
* ``"quick"`` (the default): every learner is trained on at most ``cap`` (4000) points. For fraction
  f the method's ranking still decides which points are eligible (the top ⌈f·n⌉); a uniform
  sample of ``cap`` of them is drawn when there are more. Epochs are scaled so each fit takes
  about ``target_steps`` (1000) minibatch steps (between ``min_epochs`` 5 and ``max_epochs``
  30 epochs: the full protocol's learner and the service's epochs, so a small sample gets the
  full fit) and stop early when the training loss stalls; at most ``eval_cap`` (20k) held-out
  rows are scored. The cost is bounded by (2 × fractions + 2) fits of at most
  max(target_steps, cap/64 · min_epochs) steps, whatever n is. What was sampled is stated in
  the result.
* ``"none"``: nothing is trained; the result says it was skipped.

Progress is reported in minibatch steps across all fits (within an epoch every 50 steps), so
the callback runs at least every few tenths of a second and may raise
:class:`hostcp_core.Cancelled` to stop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from hostcp_core.data import Dataset
from hostcp_core.evaluation._common import n_of
from hostcp_core.evaluation.curves import _check_order, random_order
from hostcp_core.progress import ProgressCallback, report

DEPTHS: tuple[str, ...] = ("quick", "full", "none")
DEFAULT_DEPTH = "quick"
# The service's curve fractions (app settings); a caller may pass its own.
DEFAULT_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


@dataclass(frozen=True)
class QuickSettings:
    """How ``depth="quick"`` bounds each fit (documented defaults)."""

    cap: int = 4000            # training points per learner, at most
    eval_cap: int = 20_000     # held-out rows scored, at most
    # the learner of "full" (minibatch 64, Adam 1e-3) and the service's 30 epochs: a fit on at
    # most target_steps / 30 · 64 ≈ 2100 points is the full protocol's fit, larger samples get
    # fewer epochs. (A first try with minibatch 128, lr 2e-3 and up to 60 epochs overfitted the
    # flipped labels of small random subsets: 0.846 vs 0.893 held-out accuracy at 1000 points.)
    batch_size: int = 64
    lr: float = 1e-3
    target_steps: int = 1000   # minibatch steps per fit the epoch count aims at
    min_epochs: int = 5
    max_epochs: int = 30
    patience: int | None = 3   # early stopping on the training loss (relative 1e-3); None: off

    def epochs_for(self, n_fit: int) -> int:
        per_epoch = max(1, -(-n_fit // self.batch_size))
        return int(min(self.max_epochs, max(self.min_epochs, -(-self.target_steps // per_epoch))))


QUICK = QuickSettings()


@dataclass
class SubsetEvaluation:
    """What :func:`evaluate_subset` (or :func:`evaluate_ranking`) measured and how.

    ``curves``: one row per (curve, fraction): curve ("addition" = the method's ranking,
    "random" = a random order, "removal" = all but the ranking's top), step, fraction,
    n_points (the points eligible: ⌈f·n⌉ for an addition),
    n_fitted (the points the learner was trained on), epochs (run), accuracy.
    ``subset``/``random_subset``: n_points, n_fitted, epochs, accuracy. ``sampling`` states the
    depth's settings (cap, eval_cap, n_eval, learner, epochs rule).
    """

    depth: str
    curves: list[dict] = field(default_factory=list)
    subset: dict | None = None
    random_subset: dict | None = None
    sampling: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def curve_points(self) -> list[dict]:
        """Rows in the service's curve-point shape (curve, step, fraction, n_points, value);
        the subset check is the "subset" and "random_subset" curves (one point each)."""
        rows = [{"curve": r["curve"], "step": r["step"], "fraction": r["fraction"],
                 "n_points": r["n_points"], "value": r["accuracy"]} for r in self.curves]
        for name, res in (("subset", self.subset), ("random_subset", self.random_subset)):
            if res is not None:
                rows.append({"curve": name, "step": 0, "fraction": res["fraction"],
                             "n_points": res["n_points"], "value": res["accuracy"]})
        return rows

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_subset(
    train: Dataset,
    holdout: Dataset,
    ranking,
    selected: Sequence[int] | np.ndarray,
    *,
    depth: str = DEFAULT_DEPTH,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    device: str = "cpu",
    epochs: int | None = None,
    hidden: Sequence[int] = (64, 64),
    quick: QuickSettings = QUICK,
    num_threads: int | None = 1,
    progress: ProgressCallback | None = None,
) -> SubsetEvaluation:
    """Addition curves (the method's ``ranking`` and a random order) and ``selected`` against
    a random subset of the same size, trained on ``train`` and scored on ``holdout``.

    ``ranking`` is a permutation of the training rows, most valuable first (or a
    ValuationResult). ``epochs``: in "full" the epochs of every fit (default 60, as
    ``addition_curve``); in "quick" the most epochs a fit may run (default
    ``quick.max_epochs``). Fits use seed ``seed``; the random order is
    ``random_order(n, seed)`` and the random subset ``default_rng(seed).choice(n, k)`` as in
    the service and CLI. ``fractions=()`` leaves the curves out (only the subset check).
    ``num_threads``: torch CPU threads while training (restored after; None leaves them): the
    small MLP's many tiny ops run fastest on one thread, and on a shared 2-core machine two
    threads were several times slower than one (spinning while descheduled).
    """
    t0 = time.perf_counter()
    if (skipped := _skipped(depth)) is not None:
        return skipped
    order = _check_order(ranking, train.n)
    selected = np.asarray(selected, dtype=np.int64).ravel()
    fractions = [float(f) for f in fractions]
    for f in fractions:
        n_of(train.n, f)  # validates the range
    n = train.n
    k = int(selected.size)
    rand = random_order(n, seed=seed)
    rand_subset = np.random.default_rng(seed).choice(n, k, replace=False) if k else selected

    # (name, step, fraction, eligible rows); the learner's sample is drawn from the eligible rows
    jobs = [(name, step, f, o[:n_of(n, f)])
            for name, o in (("addition", order), ("random", rand))
            for step, f in enumerate(fractions)]
    jobs += [("subset", 0, k / n, selected), ("random_subset", 0, k / n, rand_subset)]
    return _evaluate(train, holdout, jobs, depth=depth, seed=seed, device=device, epochs=epochs,
                     hidden=hidden, quick=quick, num_threads=num_threads, progress=progress,
                     t0=t0)


def evaluate_ranking(
    train: Dataset,
    holdout: Dataset,
    ranking,
    *,
    addition: Sequence[float] = DEFAULT_FRACTIONS,
    removal: Sequence[float] = (),
    depth: str = DEFAULT_DEPTH,
    seed: int = 0,
    device: str = "cpu",
    epochs: int | None = None,
    hidden: Sequence[int] = (64, 64),
    quick: QuickSettings = QUICK,
    num_threads: int | None = 1,
    progress: ProgressCallback | None = None,
) -> SubsetEvaluation:
    """The addition and removal curves of one ranking at a depth (comparison jobs): for
    fraction f a learner is trained on the top ⌈f·n⌉ of ``ranking`` (curve "addition") or on
    every point but them (curve "removal", f in [0, 1)); in "quick" each training set is
    sampled down to ``quick.cap`` as in :func:`evaluate_subset`, whose other arguments these
    are. ``n_points`` of a row is the size of the set the sample was drawn from."""
    t0 = time.perf_counter()
    if (skipped := _skipped(depth)) is not None:
        return skipped
    order = _check_order(ranking, train.n)
    n = train.n
    bad = [f for f in removal if not 0.0 <= float(f) < 1.0]
    if bad:
        raise ValueError(f"removal fractions must lie in [0, 1), got {bad}")
    jobs = [("addition", step, float(f), order[:n_of(n, float(f))])
            for step, f in enumerate(addition)]
    jobs += [("removal", step, float(f), order[n_of(n, float(f)):])
             for step, f in enumerate(removal)]
    return _evaluate(train, holdout, jobs, depth=depth, seed=seed, device=device, epochs=epochs,
                     hidden=hidden, quick=quick, num_threads=num_threads, progress=progress,
                     t0=t0)


def _skipped(depth: str) -> SubsetEvaluation | None:
    """The result of depth "none" (nothing trained); None for a depth that trains."""
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {', '.join(DEPTHS)}, not {depth!r}")
    if depth == "none":
        return SubsetEvaluation(depth="none", sampling={"depth": "none", "skipped": True},
                                timings={"total_s": 0.0})
    return None


def _evaluate(train: Dataset, holdout: Dataset, jobs: list, *, depth: str, seed: int,
              device: str, epochs: int | None, hidden: Sequence[int], quick: QuickSettings,
              num_threads: int | None, progress: ProgressCallback | None,
              t0: float) -> SubsetEvaluation:
    """Train and score one learner per (name, step, fraction, eligible rows) job; "subset" and
    "random_subset" rows go to their attributes, every other name is a curve."""
    if depth == "full":
        ev = holdout
        max_ep = 60 if epochs is None else int(epochs)
        samples = [np.sort(rows) for *_, rows in jobs]
        plan = [max_ep] * len(jobs)
        fit_kw = {"batch_size": 64, "lr": 1e-3}
        sampling = {"depth": "full", "cap": None, "eval_cap": None, "n_eval": holdout.n,
                    "learner": {"hidden": list(hidden), "batch_size": 64, "lr": 1e-3,
                                "epochs": max_ep, "early_stopping": False}}
    else:
        max_ep = quick.max_epochs if epochs is None else int(epochs)
        ev_rows = _sample(np.arange(holdout.n), quick.eval_cap, seed, 10**6)
        ev = holdout if ev_rows.size == holdout.n else holdout.subset(ev_rows)
        samples = [_sample(rows, quick.cap, seed, i) for i, (*_, rows) in enumerate(jobs)]
        plan = [min(max_ep, quick.epochs_for(s.size)) for s in samples]
        fit_kw = {"batch_size": quick.batch_size, "lr": quick.lr, "patience": quick.patience}
        sampling = {"depth": "quick", "cap": quick.cap, "eval_cap": quick.eval_cap,
                    "n_eval": ev.n,
                    "learner": {"hidden": list(hidden), "batch_size": quick.batch_size,
                                "lr": quick.lr, "target_steps": quick.target_steps,
                                "min_epochs": quick.min_epochs, "max_epochs": max_ep,
                                "early_stopping": {"patience": quick.patience,
                                                   "min_delta": 1e-3}},
                    "sample": "top ceil(f*n) by the ranking, then uniform without replacement "
                              "down to cap"}

    import torch

    bs = fit_kw["batch_size"]
    units = [ep * max(1, -(-s.size // bs)) for ep, s in zip(plan, samples, strict=True)]
    total = max(1, sum(units))
    out = SubsetEvaluation(depth=depth, sampling=sampling)
    done = 0
    report(progress, "evaluation", 0, total)  # a cancel is honoured before any training
    _preload_optimizers(progress, total)
    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        for (name, step, f, rows), idx, ep, unit in zip(jobs, samples, plan, units, strict=True):
            report(progress, "evaluation", done, total, message=f"{name} {f:.3g}")
            acc, ran = _fit_score(train, ev, idx, hidden=hidden, epochs=ep, seed=seed,
                                  device=device, fit_kw=fit_kw, progress=progress, done=done,
                                  total=total, label=name)
            done += unit
            report(progress, "evaluation", done, total, message=f"{name} {f:.3g}")
            row = {"fraction": f, "n_points": int(rows.size), "n_fitted": int(idx.size),
                   "epochs": ran, "accuracy": acc}
            if name in ("subset", "random_subset"):
                setattr(out, name, row)
            else:
                out.curves.append({"curve": name, "step": step, **row})
    finally:
        torch.set_num_threads(threads)
    out.sampling["num_threads"] = num_threads
    out.timings["total_s"] = time.perf_counter() - t0
    return out


def _preload_optimizers(progress: ProgressCallback | None, total: int) -> None:
    """The first torch optimizer of a process imports torch._dynamo (measured: 12.9 s before
    the first 50 minibatches on the loaded 2-core machine): import it in a thread while this
    one keeps reporting, so the bar moves and a cancel is honoured within half a second."""
    import importlib
    import sys
    import threading

    if "torch._dynamo" in sys.modules:
        return
    worker = threading.Thread(target=importlib.import_module, args=("torch._dynamo",),
                              name="preload-torch-dynamo", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
        report(progress, "evaluation", 0, total, message="loading torch")


def _sample(rows: np.ndarray, cap: int, seed: int, stream: int) -> np.ndarray:
    """``rows`` itself (sorted) when it has at most ``cap`` entries, else a uniform sample of
    ``cap`` of them, reproducible for (seed, stream)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size > cap:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 13, stream]))
        rows = rng.choice(rows, cap, replace=False)
    return np.sort(rows)


def _fit_score(train, ev, idx, *, hidden, epochs, seed, device, fit_kw, progress, done, total,
               label) -> tuple[float, int]:
    from hostcp_core.models import accuracy, train_classifier

    if idx.size == 0:  # as subset_accuracy: a model trained on nothing guesses uniformly
        return 1.0 / train.n_classes, 0
    per_epoch = max(1, -(-idx.size // fit_kw["batch_size"]))

    def on_progress(epoch: int, batches: int, loss: float | None) -> None:
        report(progress, "evaluation", min(total, done + epoch * per_epoch + batches), total,
               epoch=epoch, loss=loss, message=label)

    model = train_classifier(train.X[idx], train.y[idx], train.n_classes, hidden=hidden,
                             epochs=epochs, seed=seed, device=device, on_progress=on_progress,
                             **fit_kw)
    return accuracy(model, ev.X, ev.y), int(model.epochs_run_)

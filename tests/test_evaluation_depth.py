"""evaluate_subset at each depth (issue 13): "full" is today's protocol exactly, "quick" trains
on capped samples of the points the ranking picks, "none" trains nothing; progress moves and a
cancel raised from the callback stops it."""

import numpy as np
import pytest
import torch

from hostcp_core import Cancelled, make_synthetic, split_test
from hostcp_core.evaluation.curves import (
    addition_curve,
    random_order,
    removal_curve,
    subset_accuracy,
)
from hostcp_core.evaluation.depth import QuickSettings, evaluate_ranking, evaluate_subset
from hostcp_core.models import train_classifier


@pytest.fixture(scope="module")
def task():
    train, test = make_synthetic(300, 200, seed=2, n_features=6)
    return train, split_test(test, 0.5, seed=0)[1]


def test_full_depth_is_todays_protocol(task):
    train, holdout = task
    order = np.random.default_rng(0).permutation(train.n)
    selected = np.sort(order[:60])
    res = evaluate_subset(train, holdout, order, selected, depth="full", fractions=(0.2, 1.0),
                          epochs=3, seed=1)
    want = addition_curve(train, holdout, order, (0.2, 1.0), epochs=3, seed=1)
    rand = addition_curve(train, holdout, random_order(train.n, 1), (0.2, 1.0), epochs=3, seed=1)
    got = {c: [r["accuracy"] for r in res.curves if r["curve"] == c] for c in ("addition",
                                                                             "random")}
    assert got["addition"] == list(want["accuracy"])
    assert got["random"] == list(rand["accuracy"])
    assert res.subset["accuracy"] == subset_accuracy(train, holdout, selected, epochs=3, seed=1)
    assert res.subset["n_fitted"] == 60 and res.sampling["cap"] is None


def test_quick_depth_caps_every_fit_and_follows_the_ranking(task):
    train, holdout = task
    # class-0 points first: the top 30% hold only class 0 (if there are enough of them), so a
    # learner that really trained on the ranking's top points predicts class 0 everywhere
    order = np.argsort(train.y, kind="stable")
    n0 = int((train.y == 0).sum())
    f = 0.5 * n0 / train.n
    quick = QuickSettings(cap=40, eval_cap=50, target_steps=20)
    res = evaluate_subset(train, holdout, order, order[:10], fractions=(f, 1.0), quick=quick)
    assert all(r["n_fitted"] <= 40 for r in res.curves)
    top = res.curves[0]
    assert top["n_points"] == int(np.ceil(f * train.n - 1e-9)) and top["n_fitted"] == 40
    ev = holdout.subset(np.sort(np.random.default_rng(np.random.SeedSequence([0, 13, 10**6]))
                                .choice(holdout.n, 50, replace=False)))
    assert top["accuracy"] == pytest.approx(float((ev.y == 0).mean()))
    assert res.sampling["n_eval"] == 50 and res.sampling["cap"] == 40
    assert res.subset["n_points"] == 10 and res.random_subset["n_points"] == 10
    assert all(r["epochs"] <= quick.max_epochs for r in res.curves)
    again = evaluate_subset(train, holdout, order, order[:10], fractions=(f, 1.0), quick=quick)
    assert again.curves == res.curves and again.subset == res.subset


def test_quick_epochs_scale_with_the_sample():
    q = QuickSettings(batch_size=100, target_steps=600, min_epochs=5, max_epochs=60)
    assert q.epochs_for(100) == 60       # one step an epoch: capped at max_epochs
    assert q.epochs_for(4000) == 15      # 40 steps an epoch
    assert q.epochs_for(10**6) == 5      # never fewer than min_epochs


def test_none_depth_trains_nothing(task):
    train, holdout = task
    res = evaluate_subset(train, holdout, np.arange(train.n), [0, 1], depth="none")
    assert res.curves == [] and res.subset is None and res.sampling["skipped"]
    with pytest.raises(ValueError, match="depth"):
        evaluate_subset(train, holdout, np.arange(train.n), [0], depth="deep")


def test_curve_points_have_the_service_shape(task):
    train, holdout = task
    res = evaluate_subset(train, holdout, np.arange(train.n), np.arange(30), fractions=(0.5,),
                          quick=QuickSettings(cap=30, target_steps=5))
    rows = res.curve_points()
    assert [r["curve"] for r in rows] == ["addition", "random", "subset", "random_subset"]
    assert set(rows[0]) == {"curve", "step", "fraction", "n_points", "value"}


def test_progress_moves_and_cancel_stops(task):
    train, holdout = task
    events = []
    evaluate_subset(train, holdout, np.arange(train.n), np.arange(30), fractions=(0.5, 1.0),
                    quick=QuickSettings(cap=100, target_steps=10), progress=events.append)
    steps = [e.step for e in events]
    assert steps == sorted(steps) and steps[-1] == events[-1].total and len(events) > 6
    calls = []

    def cancel(p):
        calls.append(p)
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        evaluate_subset(train, holdout, np.arange(train.n), np.arange(30), progress=cancel)
    assert len(calls) == 1 and calls[0].step < calls[0].total


def test_train_classifier_callbacks_do_not_change_the_model(task):
    train, _ = task
    plain = train_classifier(train.X, train.y, 2, epochs=3, seed=4)
    seen = []
    watched = train_classifier(train.X, train.y, 2, epochs=3, seed=4, progress_every=2,
                               on_progress=lambda *a: seen.append(a))
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [s for s in seen if s[2] is not None][-1][:2] == (2, 5)  # 300 rows / 64 = 5 batches
    assert any(s[2] is None for s in seen)
    stopped = train_classifier(train.X, train.y, 2, epochs=200, seed=4, patience=1,
                               min_delta=0.5)
    assert stopped.epochs_run_ < 200


def test_quick_on_a_small_sample_is_the_full_fit(task):
    # below cap points and target_steps / 30 epochs, quick trains exactly the full protocol's
    # learner for the service's 30 epochs (early stopping off, so nothing can cut it short)
    train, holdout = task
    order = np.random.default_rng(3).permutation(train.n)
    kw = dict(fractions=(0.1, 0.3), seed=2)
    quick = evaluate_subset(train, holdout, order, np.sort(order[:20]), depth="quick",
                            quick=QuickSettings(patience=None), **kw)
    full = evaluate_subset(train, holdout, order, np.sort(order[:20]), depth="full", epochs=30,
                           **kw)
    assert [r["accuracy"] for r in quick.curves] == [r["accuracy"] for r in full.curves]
    assert quick.subset == full.subset and quick.random_subset == full.random_subset


def test_ranking_curves_at_each_depth(task):
    train, holdout = task
    order = np.random.default_rng(3).permutation(train.n)
    full = evaluate_ranking(train, holdout, order, addition=(0.2,), removal=(0.0, 0.5),
                            depth="full", epochs=3, seed=1)
    want = removal_curve(train, holdout, order, (0.0, 0.5), epochs=3, seed=1)
    assert [r["accuracy"] for r in full.curves if r["curve"] == "removal"] == \
        list(want["accuracy"])
    assert [r["n_points"] for r in full.curves] == [60, 300, 150]
    quick = evaluate_ranking(train, holdout, order, addition=(0.2,), removal=(0.0, 0.5),
                             quick=QuickSettings(cap=100, target_steps=10))
    assert [(r["curve"], r["n_points"], r["n_fitted"]) for r in quick.curves] == [
        ("addition", 60, 60), ("removal", 300, 100), ("removal", 150, 100)]
    assert evaluate_ranking(train, holdout, order, depth="none").curves == []
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        evaluate_ranking(train, holdout, order, removal=(1.0,))

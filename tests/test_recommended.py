"""The recommended selection (issue 14): the rule, the split, determinism, the candidate table,
and that it keeps flipped labels out on a small flipped synthetic set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hostcp_core import Cancelled, flip_labels, make_synthetic
from hostcp_core.recommended import (
    CANDIDATES,
    Candidate,
    RecommendedSelection,
    choose_winner,
    class_quotas,
    facility_location_order,
    pool_rank,
    pool_target,
    ranking_values,
    score_candidates,
    scoring_runs,
    stratified_order,
    suspects_from_values,
    tie_counts,
    tighten_pool,
)
from hostcp_core.result import subset_size, to_jsonable

# Cheap settings: the structure under test does not need HOST-CP's full training.
FAST = {"hostcp_params": {"epochs": 3, "warmup_epochs": 1}, "oob_params": {"n_estimators": 40},
        "n_seeds": 2, "epochs": 10}


@pytest.fixture(scope="module")
def data():
    train, test = make_synthetic(240, 300, seed=3)
    return train, test.__class__(test.X, test.y, test.classes, np.arange(test.n),
                                 test.feature_names, test.name)


@pytest.fixture(scope="module")
def fitted(data):
    train, test = data
    rec = RecommendedSelection(fraction=0.2, seed=0, learner="logreg", **FAST)
    return rec, rec.fit(train, test)


def _rule(table, order):
    """The stated rule, recomputed from the candidate table."""
    rows = {r["candidate"]: r for r in table if "skipped" not in r}
    best = max(r["validation_accuracy_mean"] for r in rows.values())
    tied = [c for c in order if c in rows
            and best - rows[c]["validation_accuracy_mean"] <= rows[c]["paired_se_vs_leader"]]
    return min(tied, key=lambda c: (rows[c]["suspected_in_subset"], order.index(c)))


def test_winner_follows_the_stated_rule(fitted):
    rec, res = fitted
    table = res.extra["candidates"]
    assert res.extra["winner"] == _rule(table, list(CANDIDATES))
    assert [r["candidate"] for r in table if r.get("winner")] == [res.extra["winner"]]
    # the winner's subset is what is returned
    np.testing.assert_array_equal(res.selected, rec.candidates_[res.extra["winner"]].selected)


def test_choose_winner_clear_leader_ties_and_order():
    n = 400
    rng = np.random.default_rng(0)
    base = (rng.random(n) < 0.7).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:60]] = 1.0        # +15 points: a clear winner
    scores = {"a": {"mean": base.mean(), "per_point": base},
              "b": {"mean": better.mean(), "per_point": better}}
    w, se, why = choose_winner(scores, {"a": 0, "b": 5}, ["a", "b"])
    assert w == "b" and "no other candidate" in why and se["b"] == 0.0
    # one point apart on 400 (three gained, two lost): within a paired standard error, so the
    # fewer suspects win
    near = base.copy()
    near[np.flatnonzero(base == 0)[:3]] = 1.0
    near[np.flatnonzero(base == 1)[:2]] = 0.0
    scores = {"a": {"mean": base.mean(), "per_point": base},
              "b": {"mean": near.mean(), "per_point": near}}
    assert choose_winner(scores, {"a": 0, "b": 5}, ["a", "b"])[0] == "a"
    assert choose_winner(scores, {"a": 5, "b": 0}, ["a", "b"])[0] == "b"
    # equal suspects: the cheaper (earlier) candidate
    assert choose_winner(scores, {"a": 1, "b": 1}, ["b", "a"])[0] == "b"
    assert choose_winner(scores, {"a": 1, "b": 1}, ["a", "b"])[0] == "a"


def test_validation_part_is_disjoint_from_what_candidates_saw(data, monkeypatch):
    from hostcp_core.hostcp import HostCP
    from hostcp_core.valuers.data_oob import DataOOB
    from hostcp_core.valuers.knn_shapley import KNNShapley

    seen: list[np.ndarray] = []
    for cls in (HostCP, DataOOB, KNNShapley):
        original = cls.fit

        def spy(self, train, test, *, progress=None, _original=original):
            seen.append(np.asarray(test.ids))
            return _original(self, train, test, progress=progress)

        monkeypatch.setattr(cls, "fit", spy)
    train, test = data
    rec = RecommendedSelection(fraction=0.2, seed=1, learner="logreg", **FAST)
    res = rec.fit(train, test)
    assert len(seen) == 3
    sel, val = set(rec.selection_rows_), set(rec.validation_rows_)
    assert sel.isdisjoint(val) and sel | val == set(range(test.n))
    for ids in seen:
        assert set(ids.tolist()) == sel
    assert res.extra["n_validation_rows"] == len(val)
    # the split is stratified: every class is on both sides
    assert set(test.y[rec.validation_rows_]) == set(test.y) == set(test.y[rec.selection_rows_])


def test_deterministic_for_a_seed(data):
    train, test = data
    a = RecommendedSelection(fraction=0.2, seed=2, learner="mlp", **FAST).fit(train, test)
    b = RecommendedSelection(fraction=0.2, seed=2, learner="mlp", **FAST).fit(train, test)
    np.testing.assert_array_equal(a.selected, b.selected)
    np.testing.assert_array_equal(a.values, b.values)
    strip = [{k: v for k, v in r.items() if not k.endswith("seconds")}
             for r in a.extra["candidates"]]
    assert strip == [{k: v for k, v in r.items() if not k.endswith("seconds")}
                     for r in b.extra["candidates"]]


def test_candidate_table_content(fitted, data):
    rec, res = fitted
    train, _ = data
    k = subset_size(train.n, 0.2)
    table = res.extra["candidates"]
    assert [r["candidate"] for r in table] == list(CANDIDATES)
    for r in table:
        assert 0.0 <= r["validation_accuracy_mean"] <= 1.0
        assert r["validation_accuracy_sd"] == 0.0 and r["trainings"] == 1   # logreg: one fit
        assert r["n_selected"] == k and r["build_seconds"] >= 0 and r["score_seconds"] > 0
        mine = rec.candidates_[r["candidate"]]
        assert len(mine.selected) == k
        assert r["suspected_in_subset"] == int(rec.suspected_[mine.selected].sum())
        assert r["validation_accuracy_mean"] == pytest.approx(
            rec.scores_[r["candidate"]]["mean"])
    assert "winner" in res.extra["why"] or res.extra["winner"] in res.extra["why"] or \
        "highest mean" in res.extra["why"]
    assert "per_candidate" in res.extra["budget"] and "hostcp" in res.extra["budget"]["shared"]
    json.dumps(res.extra)   # plain JSON for the job summary (no numpy types)
    json.dumps(res.summary(), default=to_jsonable)
    # values rank exactly as the winner's order: its subset is the top k by value
    top = np.sort(np.argsort(-res.values, kind="stable")[:k])
    np.testing.assert_array_equal(top, res.selected)
    # every candidate's subset keeps the classes in proportion
    quota = class_quotas(train.y, k, train.n_classes)
    for c in rec.candidates_.values():
        if c.name != "hostcp":
            np.testing.assert_array_equal(np.bincount(train.y[c.selected],
                                                      minlength=train.n_classes), quota)


def test_flipped_share_below_base_rate():
    train, test = make_synthetic(300, 400, seed=5)
    noisy, flipped = flip_labels(train, 0.2, seed=5)
    res = RecommendedSelection(fraction=0.2, seed=0, learner="logreg", **FAST).fit(noisy, test)
    share = np.isin(res.selected, flipped).mean()
    assert share < 0.2 / 2, (share, res.extra["winner"])


def test_candidates_subset_and_cancel(data):
    train, test = data
    res = RecommendedSelection(fraction=0.1, seed=0, learner="logreg",
                               candidates=["random", "top_knn_shapley"], **FAST
                               ).fit(train, test)
    assert [r["candidate"] for r in res.extra["candidates"]] == ["random", "top_knn_shapley"]
    assert "hostcp" not in res.extra["budget"]["shared"]
    with pytest.raises(ValueError, match="unknown candidate"):
        RecommendedSelection(candidates=["nope"]).fit(train, test)
    with pytest.raises(ValueError, match="learner"):
        RecommendedSelection(learner="svm").fit(train, test)
    events = []

    def cancel(p):
        events.append(p.stage)
        if p.stage.startswith("recommended:score"):
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        RecommendedSelection(fraction=0.1, learner="logreg", candidates=["random", "top_data_oob"],
                             **FAST).fit(train, test, progress=cancel)
    assert any(s.startswith("recommended:data_oob") for s in events)


def test_building_blocks():
    y = np.array([0] * 6 + [1] * 4)
    score = np.arange(10, dtype=float)
    allowed = np.ones(10, dtype=bool)
    allowed[[5, 9]] = False
    order = stratified_order(score, y, 5, 2, allowed=allowed)
    assert sorted(order.tolist()) == list(range(10))
    assert set(order[:5].tolist()) == {4, 3, 2, 8, 7}   # quotas 3 + 2, best allowed of each
    # suspects never leave a class below its quota of trusted points
    v = np.array([0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9])
    sus = suspects_from_values(v, y, 6, 2)
    assert (~sus[y == 0]).sum() >= class_quotas(y, 6, 2)[0]
    # facility location: picks the centre of a tight cluster before an outlier
    h = np.array([[0.0], [0.1], [-0.1], [10.0], [0.0], [5.0]])
    fl = facility_location_order(h, np.zeros(6, dtype=int), 1, 1)
    assert fl[0] in (0, 4)
    np.testing.assert_array_equal(np.argsort(-ranking_values(fl), kind="stable"), fl)


def test_tighten_pool_drops_lowest_ranked_until_the_target():
    rng = np.random.default_rng(0)
    n = 400
    y = np.repeat([0, 1], n // 2)
    rank = rng.random(n)
    # the detector's error probabilities: high for the lowest-ranked fifth of each class
    p = np.where(rank < 0.2, 0.3, 0.0)
    trusted = np.ones(n, dtype=bool)
    k = 40   # quotas 20 + 20: each class keeps at least 30
    pool = tighten_pool(trusted, rank, p, y, k, 2)
    target = pool_target(p)
    assert target == pytest.approx(np.clip(p.mean() / 3, 0.005, 0.02))
    assert p[pool].mean() <= target < p[trusted].mean()
    # only the lowest-ranked points left, and only as many as needed
    assert rank[~pool].max() < rank[pool].min()
    assert p[pool | (np.arange(n) == np.flatnonzero(~pool)[np.argmax(rank[~pool])])].mean() \
        > target
    # a class never falls below 1.5 x its quota, even when the target cannot be reached
    pool = tighten_pool(trusted, rank, np.full(n, 0.5), y, k, 2)
    np.testing.assert_array_equal(np.bincount(y[pool]), [30, 30])
    # data the detector finds clean: nothing leaves
    assert tighten_pool(trusted, rank, np.zeros(n), y, k, 2).all()


def test_pool_rank_orders_and_default():
    oob = np.array([0.9, 0.1, 0.5, 0.7])
    p = np.array([0.4, 0.0, 0.1, 0.2])
    np.testing.assert_array_equal(pool_rank("data_oob", oob, p), oob)
    # label_errors: the highest P(label wrong) is the lowest rank (leaves the pool first)
    assert np.argmin(pool_rank("label_errors", oob, p)) == 0
    both = pool_rank("both", oob, p)
    np.testing.assert_allclose(both, [2.5, 2.5, 2.5, 2.5])   # ranks (4,1,2,3) and (1,4,3,2)
    with pytest.raises(ValueError):
        pool_rank("nope", oob, p)
    assert RecommendedSelection().pool_rank == "label_errors"
    with pytest.raises(ValueError):
        RecommendedSelection(pool_rank="nope")._check()
    # tightened by the detector: the points it finds most likely wrong leave first, whatever
    # Data-OOB says of them (the synthetic case: flips that Data-OOB values highest)
    n = 200
    y = np.repeat([0, 1], n // 2)
    rng = np.random.default_rng(1)
    oob = rng.random(n)
    p = np.zeros(n)
    wrong = np.flatnonzero(oob > 0.9)          # trusted most by Data-OOB, yet likely wrong
    p[wrong] = 0.6
    trusted = np.ones(n, dtype=bool)
    by_p = tighten_pool(trusted, pool_rank("label_errors", oob, p), p, y, 20, 2)
    by_oob = tighten_pool(trusted, pool_rank("data_oob", oob, p), p, y, 20, 2)
    left = np.flatnonzero(~by_p)
    assert set(left) <= set(wrong) and p[by_p].mean() <= pool_target(p)
    assert by_oob[wrong].all()                  # the old order keeps every one of them
    assert by_p[wrong].sum() < by_oob[wrong].sum() and by_p.sum() > by_oob.sum()


def test_scoring_budget_and_identical_subsets(data):
    train, test = data
    assert scoring_runs("mlp", 3, 100, 300) == 3 and scoring_runs("mlp", 3, 250, 300) == 1
    assert scoring_runs("mlp", 3, 100, None) == 3 and scoring_runs("logreg", 3, 100, 300) == 1
    k = 30
    order = np.arange(train.n)
    same = np.concatenate([order[:k][::-1], order[k:]])     # the same first k, another order
    other = np.roll(order, -k)
    cands = {n: Candidate(n, np.sort(o[:k]), o, 0.0, ()) for n, o in
             (("a", order), ("b", same), ("c", other))}
    calls = []
    import hostcp_core.recommended as rm

    original = rm.train_predict

    def counting(*a, **kw):
        calls.append(1)
        return original(*a, **kw)

    rm.train_predict = counting
    try:
        out = score_candidates(cands, train, test, k, learner="mlp", n_seeds=3, epochs=2,
                               seed=0, max_points=2 * k)
    finally:
        rm.train_predict = original
    assert len(calls) == 2 * 2            # two distinct subsets, two trainings each (cap 2k)
    assert out["b"]["same_as"] == "a" and out["b"]["mean"] == out["a"]["mean"]
    assert "same_as" not in out["c"] and len(out["c"]["accuracies"]) == 2


def test_tie_break_counts_expected_label_errors(fitted):
    rec, res = fitted
    table = {r["candidate"]: r for r in res.extra["candidates"]}
    shared = {"label_error_prob": np.zeros(len(rec.suspected_)), "suspect": rec.suspected_}
    counts, what = tie_counts(rec.candidates_, shared)
    assert what == "expected label errors" and set(counts.values()) == {0}
    # on data found clean every candidate ties at 0: a tie goes to the cheapest (earliest)
    scores = {c: {"mean": 0.8, "per_point": np.r_[np.ones(8), np.zeros(2)]} for c in counts}
    assert choose_winner(scores, counts, list(CANDIDATES))[0] == "random"
    # the table's expected errors are the detector's probabilities summed over each subset
    p = rec.label_error_prob_
    assert p is not None and p.shape == (len(rec.suspected_),)
    real, _ = tie_counts(rec.candidates_, {"label_error_prob": p, "suspect": rec.suspected_})
    for c, row in table.items():
        got = row["expected_label_errors_in_subset"]
        assert got == pytest.approx(p[rec.candidates_[c].selected].sum(), abs=0.006)
        assert real[c] == round(got)
    counts, what = tie_counts(rec.candidates_, {"suspect": rec.suspected_})
    assert what == "suspected points"
    assert counts == {c: table[c]["suspected_in_subset"] for c in counts}
    assert "expected label errors" in res.extra["rule"]


def test_blas_limited_to_one_thread_while_scoring(data, monkeypatch):
    from threadpoolctl import threadpool_info

    import hostcp_core.recommended as rm

    seen = []
    original = rm.train_predict

    def spy(*a, **kw):
        seen.extend(d["num_threads"] for d in threadpool_info()
                    if d["user_api"] == "blas")
        return original(*a, **kw)

    monkeypatch.setattr(rm, "train_predict", spy)
    train, test = data
    RecommendedSelection(fraction=0.2, learner="logreg", candidates=["random", "top_data_oob"],
                         **FAST).fit(train, test)
    assert seen and set(seen) == {1}


def test_detector_off_counts_each_suspect_once(data):
    """Without the calibrated detector the tie-break is Data-OOB's suspects: each suspected
    point in a subset counts once (table, tie-break and reason agree), the suspects and the
    trusted pool partition the training set, and no pool tightening happens."""
    train, test = data
    rec = RecommendedSelection(fraction=0.2, seed=0, learner="logreg", label_errors=False,
                               **FAST)
    res = rec.fit(train, test)
    table = {r["candidate"]: r for r in res.extra["candidates"] if "skipped" not in r}
    sus = rec.suspected_
    assert res.extra["detector"] == "data_oob" and rec.label_error_prob_ is None
    assert res.extra["n_suspected"] == int(sus.sum())
    assert res.extra["n_suspected"] + res.extra["n_trusted"] == train.n
    counts, what = tie_counts(rec.candidates_, {"suspect": sus})
    assert what == "suspected points" and "suspected points" in res.extra["rule"]
    for c, row in table.items():
        sel = rec.candidates_[c].selected
        assert len(np.unique(sel)) == len(sel)
        assert row["suspected_in_subset"] == counts[c] == int(sus[sel].sum()) <= len(sel)
        assert row["expected_label_errors_in_subset"] is None
    assert res.extra["winner"] == _rule(res.extra["candidates"], list(CANDIDATES))
    if "fewest" in res.extra["why"]:
        assert f"({table[res.extra['winner']]['suspected_in_subset']})" in res.extra["why"]

"""benchmarks/paper.py --quick end to end on the synthetic data (no extra packages needed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _paper_module():
    spec = importlib.util.spec_from_file_location("paper_bench", ROOT / "benchmarks" / "paper.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_quick_run_writes_sane_outputs(tmp_path):
    paper = _paper_module()
    paper.main(["--quick", "--out", str(tmp_path)])
    for name in ("curves", "flips", "detection", "classes", "runs"):
        assert (tmp_path / f"{name}.csv").stat().st_size > 0
    for png in ("fig1_addition_removal", "table1_flips_found", "fig2_fix_retrain",
                "fig3_class_distribution", "fig4_ndcg", "table2_runtime"):
        assert (tmp_path / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = pd.read_csv(tmp_path / "curves.csv")
    methods = {"hostcp", "knn_shapley", "random"}
    assert set(curves["method"]) == methods
    assert set(curves["kind"]) == {"addition", "removal", "fix"}
    assert curves["accuracy"].between(0, 1).all()
    # the addition curve's last point trains on every point (in each method's row order, so
    # only the minibatch order differs): close for every method, and better than chance
    full = curves[(curves["kind"] == "addition") & np.isclose(curves["fraction"], 1.0)]
    assert len(full) == 3 and full["accuracy"].min() > 0.55
    assert full["accuracy"].max() - full["accuracy"].min() < 0.08
    flips = pd.read_csv(tmp_path / "flips.csv")
    assert flips["found"].between(0, 1).all()
    for _, g in flips.groupby("method"):   # cumulative recall never falls
        assert np.all(np.diff(g.sort_values("fraction")["found"]) >= 0)
    det = pd.read_csv(tmp_path / "detection.csv").set_index("method")
    assert det.loc[:, ["roc_auc_ranking", "ndcg@flipped"]].apply(
        lambda c: c.between(0, 1)).all().all()
    # a real detector beats chance on 10% flipped synthetic labels
    assert det.loc["knn_shapley", "roc_auc_ranking"] > 0.55
    classes = pd.read_csv(tmp_path / "classes.csv")
    assert all(abs(sum(json.loads(f)) - 1) < 1e-9 for f in classes["fractions"])
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert (runs["seconds_clean"] > 0).all()
    text = (tmp_path / "PAPER_RESULTS.md").read_text()
    assert "## synthetic" in text and "HOST-CP" in text and "| hostcp |" in text


def test_ranking_puts_the_selected_subset_first():
    from hostcp_core import ValuationResult
    from hostcp_core.evaluation import paper_ranking, rank_values

    res = ValuationResult(values=np.array([5.0, 1.0, 3.0, 4.0, 2.0]), selected=np.array([1, 2]),
                          method="x")
    order = paper_ranking(res)
    assert order.tolist() == [2, 1, 0, 3, 4]
    rv = rank_values(order)
    assert np.argsort(-rv, kind="stable").tolist() == order.tolist()

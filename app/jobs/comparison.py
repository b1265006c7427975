"""Comparison jobs (method ``"compare"``): several methods on the same data, scored the paper's way.

Every method sees the same training set (with the job's injected label flips, if it asked for
them), the same valuation part of the test set and the same seed; every retrained model is
scored on the same held-out part. Per method this stores what the paper reports (section 4):
addition and removal curves, the fraction of the flipped labels found against the fraction
inspected (lowest value first), flip-detection F1 / ROC-AUC, NDCG@|flips|, the class
distribution of the top 5 % by value, and the fit's run time. The evaluations are
``hostcp_core.evaluation``'s, as in ``benchmarks/paper.py``.

The first method is the job's default: its values fill ``job_points`` (with its mislabel
report), so the subset, values and mislabels downloads of a comparison job are the first
method's; every method's values are in ``job_method_points``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from app.core.config import Settings
from app.jobs.data import jsonable
from app.jobs.methods import build_valuers
from app.jobs.progress import JobReporter

# the paper's class-distribution figure looks at the top 5 % by value
TOP_FRACTION = 0.05
# a fit's share of one method's slice of the progress bar; its curves take the rest
FIT_SHARE = 0.5
# the overall progress the methods share (JobReporter's "valuing" phase through "mislabels")
SPAN = (0.02, 0.8)


class _MethodProgress:
    """A hostcp_core progress callback for one method's slice of the job's progress; its stage
    names the method (``"knn_shapley 1/3:valuing"``). Raises at the next event once a cancel
    is seen, as the job's own reporter does."""

    def __init__(self, reporter: JobReporter, index: int, count: int, method: str) -> None:
        self.reporter, self.method, self.label = reporter, method, f"{method} {index + 1}/{count}"
        width = (SPAN[1] - SPAN[0]) / count
        self.lo = SPAN[0] + index * width
        self.width = width
        self.part, self.kind = (0.0, FIT_SHARE), "valuing"

    def begin(self, part: str) -> None:
        self.part = (0.0, FIT_SHARE) if part == "valuing" else (FIT_SHARE, 1.0)
        self.kind = part
        self.reporter.phase("valuing", stage=f"{self.label}:{part}")
        self._set(0.0)

    def _set(self, fraction: float) -> None:
        a, b = self.part
        r = self.reporter
        r.progress = max(r.progress, self.lo + self.width * (a + (b - a) * fraction))

    def __call__(self, event) -> None:
        r = self.reporter
        r.stage = f"{self.label}:{self.kind}" + (f":{event.stage}" if event.stage else "")
        if event.fraction is not None:
            self._set(event.fraction)
        if event.message:
            r.message = event.message[:500]
        r.check()


def run_comparison(job_id: str, settings: Settings, reporter: JobReporter, *, train, valuation,
                   holdout, methods: list[str], params: dict, fraction: float, seed: int,
                   inject_flips: float | None, device: str = "cpu",
                   flag_precision: float | None = None,
                   depth: str = "full") -> dict[str, Any]:
    """Fit and score every method; returns the pieces ``run_job`` persists: ``train`` (as the
    methods saw it), ``result``/``order``/``report`` (the default method's), ``curves``,
    ``method_points``, ``timings`` and ``summary`` (its ``comparison`` part).

    ``depth`` is the job's evaluation depth (``hostcp_core.evaluation.depth.evaluate_ranking``):
    "full" draws the paper's curves (every learner on all its points), "quick" the same curves on
    capped samples (bounded cost whatever n is), "none" no curves."""
    from hostcp_core import flip_labels
    from hostcp_core.evaluation import DEFAULT_FRACTIONS as INSPECT_FRACTIONS
    from hostcp_core.evaluation import (
        class_distribution,
        flip_detection_scores,
        flips_found_curve,
        mislabel_report,
        ndcg_at_k,
        paper_ranking,
        positions,
        rank_values,
    )
    from hostcp_core.evaluation.depth import evaluate_ranking
    valuers = build_valuers(methods, fraction=fraction, seed=seed, params=params)
    flipped = None
    if inject_flips:
        # seeded by the job's seed: a rerun flips the same labels
        train, flipped = flip_labels(train, inject_flips, seed=seed)
    # the job's fraction is on the addition curve: its point is each method's subset accuracy
    add_fr = sorted({f for f in settings.curve_fractions if 0 < f <= 1} | {fraction})
    # removing nothing is the whole-set fit; removing everything says nothing
    rem_fr = [0.0] + [f for f in add_fr if f < 1]
    curve_kw = {"epochs": settings.curve_epochs, "seed": seed, "device": device}
    timings = {"valuation_s": 0.0, "curves_s": 0.0}
    curves: list[dict] = []
    points: list[dict] = []
    records: list[dict] = []
    first = None
    for i, method in enumerate(methods):
        progress = _MethodProgress(reporter, i, len(methods), method)
        progress.begin("valuing")
        t = time.perf_counter()
        result = valuers[method].fit(train, valuation, progress=progress)
        fit_s = time.perf_counter() - t
        order = paper_ranking(result)
        if first is None:
            first = (result, order)

        progress.begin("curves")
        t = time.perf_counter()
        drawn = evaluate_ranking(train, holdout, order, addition=add_fr, removal=rem_fr,
                                 depth=depth, progress=progress, **curve_kw).curves
        series = {kind: [r for r in drawn if r["curve"] == kind]
                  for kind in ("addition", "removal")}
        curves_s = time.perf_counter() - t
        timings["valuation_s"] += fit_s
        timings["curves_s"] += curves_s
        for kind, rows in series.items():
            curves += [{"curve": f"{method}:{kind}", "step": r["step"], "fraction": r["fraction"],
                        "n_points": r["n_points"], "value": r["accuracy"]} for r in rows]

        rv = rank_values(order)
        rank = positions(order)
        selected = result.selected_mask
        points += [{"job_id": job_id, "method": method, "point_index": j,
                    "score": float(result.values[j]), "rank": int(rank[j]),
                    "selected": bool(selected[j])} for j in range(train.n)]
        classes = class_distribution(rv, train.y, train.n_classes, TOP_FRACTION)
        rec: dict[str, Any] = {
            "method": method, "run_time_s": fit_s, "curves_s": curves_s,
            "n_selected": int(len(result.selected)),
            **{kind: [{"fraction": r["fraction"], "accuracy": r["accuracy"]} for r in rows]
               for kind, rows in series.items()},
            "top_classes": {"fractions": classes["fractions"], "counts": classes["counts"],
                            "n_top": classes["n_top"], "n_distinct": classes["n_distinct"],
                            "entropy": classes["entropy"]},
            "method_params": jsonable(result.params), "extra": jsonable(result.extra)}
        if flipped is not None:
            found = flips_found_curve(rv, flipped, INSPECT_FRACTIONS)
            curves += [{"curve": f"{method}:flips", "step": step, "fraction": float(r.fraction),
                        "n_points": int(r.n_inspected), "value": float(r.found)}
                       for step, r in enumerate(found.itertuples(index=False))]
            # F1 needs the values' own clusters (2-means); AUC and NDCG score the ranking
            det = flip_detection_scores(result.values, flipped)
            rec.update({
                "flips_found": [{"fraction": float(r.fraction), "found": float(r.found)}
                                for r in found.itertuples(index=False)],
                "flip_f1": det["f1"], "flip_precision": det["precision"],
                "flip_recall": det["recall"],
                "flip_roc_auc": flip_detection_scores(rv, flipped)["roc_auc"],
                "ndcg": ndcg_at_k(rv, flipped)})
        records.append(jsonable(rec))

    result, order = first
    reporter.phase("mislabels")
    t = time.perf_counter()
    report = mislabel_report(train, result.values, seed=seed, flag_precision=flag_precision,
                             progress=reporter.callback)
    timings["mislabels_s"] = time.perf_counter() - t

    counts = np.bincount(train.y, minlength=train.n_classes)
    comparison = {
        "methods": records, "default_method": methods[0], "classes": list(train.classes),
        "train_class_fractions": (counts / train.n).tolist(), "top_fraction": TOP_FRACTION,
        "inject_flips": inject_flips, "n_flipped": 0 if flipped is None else int(len(flipped)),
        "addition_fractions": add_fr, "removal_fractions": rem_fr, "evaluation": depth}
    summary = {"n_selected": int(len(result.selected)),
               "n_suspected": int(report["suspected"].sum()),
               "mislabels": jsonable(report.attrs), "comparison": comparison}
    if flipped is not None:
        summary["injected_flips"] = [int(j) for j in flipped]
    return {"train": train, "result": result, "order": order, "report": report,
            "curves": curves, "method_points": points, "timings": timings, "summary": summary}


"""Issue 14 evidence: the recommended selection against random, every single method and the full
training set, scored on data no selection saw.

Per dataset, seed and label condition (clean; 10% flipped): the test set is split into a
held-out third (scores every subset; nothing else touches it) and the rest, which the
recommendation splits again into its selection part (the only test data any candidate sees) and
its validation part (chooses the winner). For each fraction the candidates are built once and
the winner chosen twice, once per learner (logistic regression, MLP): the user names the
learner. Each candidate's subset and the full (noisy) training set are then trained with that
learner and scored on the held-out third; the single methods are the candidates themselves
(HOST-CP as published, each valuer's stratified top set), fitted on the selection part.

    python benchmarks/recommended.py --datasets synthetic digits --seeds 0 --fractions 0.2
    python benchmarks/recommended.py --report-only      # results/recommended/REPORT.md

Rows are appended to ``<out>/rows[_<part>].csv`` and ``<out>/choices[_<part>].csv`` as each
run finishes, so a long run can be read (and resumed: finished (dataset, seed, condition,
fraction) keys are skipped) at any time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from hostcp_core import Dataset, flip_labels, make_dataset, split_test  # noqa: E402
from hostcp_core.datasets import load_paper_dataset  # noqa: E402
from hostcp_core.recommended import (  # noqa: E402
    RecommendedSelection,
    choose_winner,
    score_candidates,
    tie_counts,
    train_predict,
)
from hostcp_core.result import subset_size  # noqa: E402

PAPER = ("synthetic", "fashion_mnist", "statlog_dna", "newsgroups", "adult")
# Real datasets shipped inside the scikit-learn wheel (no download).
SKLEARN = {"digits": (500, 1000), "breast_cancer": (300, 269)}
SINGLE = ("hostcp", "top_data_oob", "top_knn_shapley")


def load(name: str, seed: int, n_train: int, n_test: int) -> tuple[Dataset, Dataset]:
    if name in PAPER:
        return load_paper_dataset(name, n_train, n_test, seed=seed)
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    ntr, nte = SKLEARN[name]
    Xtr, Xte, ytr, yte = train_test_split(X, y, train_size=ntr, test_size=nte,
                                          stratify=y, random_state=seed)
    train = make_dataset(Xtr, ytr, name=name)
    return train, make_dataset(Xte, yte, classes=train.classes, name=f"{name}[test]")


def holdout_accuracy(learner: str, train: Dataset, idx: np.ndarray, hold: Dataset,
                     seeds: list[int], epochs: int) -> float:
    accs = [float((train_predict(learner, train.X[idx], train.y[idx], train.n_classes, hold.X,
                                 seed=s, epochs=epochs) == hold.y).mean()) for s in seeds]
    return float(np.mean(accs))


def run_one(args, dataset: str, seed: int, condition: str, fraction: float,
            data, rows_path: Path, choices_path: Path) -> None:
    train, valuation, hold, flipped = data
    k = subset_size(train.n, fraction)
    rec = RecommendedSelection(fraction=fraction, seed=seed, n_seeds=args.n_seeds,
                               epochs=args.select_epochs, n_jobs=1,
                               pool_rank=args.pool_rank)
    sel_rows, val_rows = rec.split(valuation)
    selection, validation = valuation.subset(sel_rows), valuation.subset(val_rows)
    t0 = time.perf_counter()
    cands, shared = rec.build_candidates(train, selection)
    t_build = time.perf_counter() - t0
    suspect, trusted = shared["suspect"], shared["trusted"]
    ties, what = tie_counts(cands, shared)
    key = {"dataset": dataset, "seed": seed, "condition": condition, "fraction": fraction}
    flip_mask = np.zeros(train.n, dtype=bool)
    flip_mask[flipped] = True
    rows, choices = [], []
    for learner in args.learners:
        t0 = time.perf_counter()
        scores = score_candidates(cands, train, validation, k, learner=learner,
                                  n_seeds=args.n_seeds, epochs=args.select_epochs, seed=seed,
                                  max_points=rec.max_points(train.n))
        winner, se, why = choose_winner(scores, ties, list(cands), what=what)
        t_score = time.perf_counter() - t0
        eval_seeds = [1000 + seed + r for r in range(1 if learner == "logreg" else args.repeats)]
        hold_acc = {c: holdout_accuracy(learner, train, cands[c].order[:k], hold, eval_seeds,
                                        args.eval_epochs) for c in cands}
        hold_acc["recommended"] = hold_acc[winner]
        for c, acc in hold_acc.items():
            sel = cands[winner if c == "recommended" else c].order[:k]
            rows.append({**key, "learner": learner, "method": c, "holdout_accuracy": acc,
                         "validation_accuracy": scores[winner if c == "recommended" else c]
                         ["mean"], "flipped_share": float(flip_mask[sel].mean()),
                         "n_selected": k, "winner": winner})
        hostcp_s = shared["seconds"].get("hostcp", float("nan"))
        choices.append({**key, "learner": learner, "winner": winner, "why": why,
                        "recommended_seconds": t_build + t_score, "build_seconds": t_build,
                        "score_seconds": t_score, "hostcp_seconds": hostcp_s,
                        "shared_seconds": json.dumps({p: round(t, 2) for p, t in
                                                      shared["seconds"].items()}),
                        "n_suspected": int(suspect.sum()), "n_trusted": int(trusted.sum()),
                        "trusted_flip_share": float(flip_mask[trusted].mean()),
                        "expected_error_rate": shared.get("expected_error_rate", np.nan),
                        "tie_counts": json.dumps(ties),
                        "suspected_flip_precision": float(flip_mask[suspect].mean())
                        if suspect.any() else float("nan"),
                        "validation": json.dumps({c: round(scores[c]["mean"], 4)
                                                  for c in cands})})
        print(f"  [{dataset} s{seed} {condition} {fraction:.2f} {learner}] winner {winner}: "
              f"holdout {hold_acc[winner]:.3f} random {hold_acc['random']:.3f} hostcp "
              f"{hold_acc.get('hostcp', float('nan')):.3f}; {t_build + t_score:.1f}s "
              f"(hostcp {hostcp_s:.1f}s)", flush=True)
    _append(rows_path, rows)
    _append(choices_path, choices)


def full_rows(args, dataset, seed, condition, data, path: Path) -> None:
    train, _, hold, flipped = data
    rows = []
    for learner in args.learners:
        seeds = [1000 + seed + r for r in range(1 if learner == "logreg" else args.repeats)]
        acc = holdout_accuracy(learner, train, np.arange(train.n), hold, seeds, args.eval_epochs)
        rows.append({"dataset": dataset, "seed": seed, "condition": condition, "fraction": 1.0,
                     "learner": learner, "method": "full", "holdout_accuracy": acc,
                     "validation_accuracy": np.nan,
                     "flipped_share": len(flipped) / train.n, "n_selected": train.n,
                     "winner": ""})
    _append(path, rows)


def _append(path: Path, rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    df.to_csv(path, mode="a", header=not path.exists(), index=False)


def done_keys(path: Path) -> set:
    if not path.exists():
        return set()
    d = pd.read_csv(path)
    return set(zip(d["dataset"], d["seed"], d["condition"], d["fraction"].round(4),
                   strict=True))


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.part}" if args.part else ""
    rows_path, choices_path = out / f"rows{suffix}.csv", out / f"choices{suffix}.csv"
    done = done_keys(rows_path)
    # fractions in the given order across all datasets: the first (20%) completes first
    for fraction in args.fractions:
        for dataset in args.datasets:
            for seed in args.seeds:
                n_tr, n_te = SKLEARN.get(dataset, (args.n_train, args.n_test))
                train, test = load(dataset, seed, n_tr, n_te)
                valuation, hold = split_test(test, 1 / 3, seed=seed)
                noisy, flipped = flip_labels(train, 0.1, seed=seed)
                for condition, tr, fl in (("clean", train, np.zeros(0, np.int64)),
                                          ("flipped", noisy, flipped)):
                    data = (tr, valuation, hold, fl)
                    if (dataset, seed, condition, 1.0) not in done:
                        full_rows(args, dataset, seed, condition, data, rows_path)
                        done.add((dataset, seed, condition, 1.0))
                    if (dataset, seed, condition, round(fraction, 4)) in done:
                        continue
                    print(f"[{dataset} seed={seed} {condition} γ={fraction}] train {tr.n}x"
                          f"{tr.n_features}, {tr.n_classes} classes; selection+validation "
                          f"{valuation.n}, held out {hold.n}", flush=True)
                    run_one(args, dataset, seed, condition, fraction, data, rows_path,
                            choices_path)


# ---------------------------------------------------------------- the report

def paired(d: pd.DataFrame, a: str, b: str) -> tuple[float, float, int]:
    """Mean and standard error of holdout(a) − holdout(b), paired over seeds."""
    piv = d.pivot_table(index="seed", columns="method", values="holdout_accuracy")
    if a not in piv or b not in piv:
        return float("nan"), float("nan"), 0
    diff = (piv[a] - piv[b]).dropna()
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return float(diff.mean()), se, len(diff)


def report(out: Path) -> str:
    # parallel runs write rows_<part>.csv each
    rows = pd.concat([pd.read_csv(p) for p in sorted(out.glob("rows*.csv"))],
                     ignore_index=True)
    ch = pd.concat([pd.read_csv(p) for p in sorted(out.glob("choices*.csv"))],
                   ignore_index=True)
    full = rows[rows["method"] == "full"]
    sub = rows[rows["method"] != "full"]
    L = []
    fr = sorted(sub["fraction"].unique())
    for frac in fr:
        d = sub[np.isclose(sub["fraction"], frac)]
        L += [f"#### {frac:.0%} subsets", "",
              "| dataset | labels | learner | seeds | recommended | vs random | vs best single "
              "(which) | vs full set | flipped share (rec / random) | winners |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for (ds, cond, lr), g in d.groupby(["dataset", "condition", "learner"], sort=False):
            rec = g[g["method"] == "recommended"]["holdout_accuracy"]
            means = g[g["method"].isin(SINGLE)].groupby("method")["holdout_accuracy"].mean()
            best = means.idxmax() if len(means) else None
            mr, sr, n = paired(g, "recommended", "random")
            mb, sb, _ = paired(g, "recommended", best) if best else (np.nan, np.nan, 0)
            f = full[(full["dataset"] == ds) & (full["condition"] == cond)
                     & (full["learner"] == lr)]
            gf = pd.concat([g[g["method"] == "recommended"], f.assign(seed=f["seed"])])
            mf, sf, _ = paired(gf, "recommended", "full")
            fs = g[g["method"] == "recommended"]["flipped_share"].mean()
            fsr = g[g["method"] == "random"]["flipped_share"].mean()
            win = g[g["method"] == "recommended"]["winner"].value_counts()
            L.append(f"| {ds} | {cond} | {lr} | {n} | {rec.mean():.3f} | {100 * mr:+.1f} ± "
                     f"{100 * sr:.1f} | {100 * mb:+.1f} ± {100 * sb:.1f} ({best}) | "
                     f"{100 * mf:+.1f} ± {100 * sf:.1f} | {fs:.3f} / {fsr:.3f} | "
                     + ", ".join(f"{w} ×{c}" for w, c in win.items()) + " |")
        L.append("")
    L += checks(sub, full, ch)
    L += ablation(sub)
    # run time per dataset (one recommendation, one learner, at each fraction)
    L += ["#### Run time per dataset (seconds, mean over seeds, conditions and fractions)", "",
          "| dataset | learner | recommended (build + score) | HOST-CP alone (same size) | "
          "ratio (max over runs) |", "|---|---|---|---|---|"]
    for (ds, lr), g in ch.groupby(["dataset", "learner"], sort=False):
        ratio = g["recommended_seconds"] / g["hostcp_seconds"]
        L.append(f"| {ds} | {lr} | {g['recommended_seconds'].mean():.1f} | "
                 f"{g['hostcp_seconds'].mean():.1f} | {ratio.mean():.2f} ({ratio.max():.2f}) |")
    L.append("")
    return "\n".join(L)


def checks(sub: pd.DataFrame, full: pd.DataFrame, ch: pd.DataFrame) -> list[str]:
    """The issue's "Done when" at 20%, each computed from the rows."""
    d = sub[np.isclose(sub["fraction"], 0.2)]
    if d.empty:
        return []
    L = ["#### Done-when checks at 20% (computed)", ""]
    n_ok = n_all = 0
    losses = []
    for (ds, cond, lr), g in d.groupby(["dataset", "condition", "learner"], sort=False):
        m, se, _ = paired(g, "recommended", "random")
        n_all += 1
        n_ok += m >= 0
        if m < 0:
            losses.append(f"{ds}/{cond}/{lr} {100 * m:+.1f} ± {100 * se:.1f}")
    L.append(f"- At least as accurate as random (paired mean difference ≥ 0): {n_ok} of {n_all} "
             "dataset × labels × learner cells" + (f"; below in {', '.join(losses)}"
                                                   if losses else "") + ".")
    for (cond, lr), g in d.groupby(["condition", "learner"], sort=False):
        per = g.groupby(["dataset", "method"])["holdout_accuracy"].mean().unstack()
        singles = [m for m in SINGLE if m in per]
        best_fixed = per[singles].mean().idxmax()
        oracle = per[singles].max(axis=1)
        fl = full[(full["condition"] == cond) & (full["learner"] == lr)].groupby(
            "dataset")["holdout_accuracy"].mean()
        within = ((per["recommended"] - fl.reindex(per.index)) >= -0.01).sum()
        L.append(f"- {cond}, {lr}: mean over {len(per)} datasets: recommended "
                 f"{per['recommended'].mean():.4f}; best single method on average "
                 f"({best_fixed}) {per[best_fixed].mean():.4f} (difference "
                 f"{100 * (per['recommended'].mean() - per[best_fixed].mean()):+.2f} points); "
                 f"the best single method chosen per dataset after the fact "
                 f"{oracle.mean():.4f} ({100 * (per['recommended'].mean() - oracle.mean()):+.2f}"
                 f"); within 1 point of the full (noisy) training set on {within} of "
                 f"{len(per)} datasets.")
    fd = d[(d["condition"] == "flipped") & (d["method"] == "recommended")]
    share = fd.groupby("dataset")["flipped_share"].mean()
    if len(share):
        bad = share[share > 0.1 / 3 + 1e-12]
        L.append("- Flipped share of the recommended 20% (base rate 0.10; goal ≤ 0.033): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in share.items())
                 + (f"; above the goal on {', '.join(bad.index)}" if len(bad) else
                    "; at or below the goal on every flipped dataset") + ".")
    c = ch[np.isclose(ch["fraction"], 0.2)]
    if len(c):
        ratio = c["recommended_seconds"] / c["hostcp_seconds"]
        L.append(f"- Cost: recommended / HOST-CP alone at the same size, per run: mean "
                 f"{ratio.mean():.2f}×, max {ratio.max():.2f}× ({len(ratio)} runs).")
    L.append("")
    return L


def ablation(sub: pd.DataFrame) -> list[str]:
    """What each part adds: paired differences (mean over datasets and seeds) at each fraction."""
    pairs = [("trusted_random", "random", "the detector alone (random among trusted − random)"),
             ("coverage", "random", "coverage alone (facility location on HOST-CP's embedding "
              "− random)"),
             ("trusted_coverage", "trusted_random", "coverage on top of the detector"),
             ("trusted_coverage", "coverage", "the detector on top of coverage"),
             ("trusted_hostcp", "hostcp", "the detector on top of HOST-CP's values"),
             ("top_data_oob", "random", "Data-OOB's stratified top set − random"),
             ("top_knn_shapley", "random", "KNN-Shapley's stratified top set − random"),
             ("hostcp", "random", "HOST-CP as published − random"),
             ("recommended", "trusted_random", "choosing on validation − always "
              "trusted_random")]
    L = ["#### Ablation: what each part adds (points, mean ± se over dataset × seed pairs)", "",
         "| comparison | fraction | pairs | clean, logreg | clean, mlp | flipped, logreg | "
         "flipped, mlp |", "|---|---|---|---|---|---|---|"]
    for a, b, what in pairs:
        for frac in sorted(sub["fraction"].unique()):
            cells = []
            pairs_n = sub[np.isclose(sub["fraction"], frac) & (sub["method"] == a)
                          & (sub["learner"] == "logreg") & (sub["condition"] == "clean")]
            cells.append(str(len(pairs_n)))
            for cond in ("clean", "flipped"):
                for lr in ("logreg", "mlp"):
                    g = sub[np.isclose(sub["fraction"], frac) & (sub["condition"] == cond)
                            & (sub["learner"] == lr)]
                    piv = g.pivot_table(index=["dataset", "seed"], columns="method",
                                        values="holdout_accuracy")
                    if a not in piv or b not in piv or piv.empty:
                        cells.append("–")
                        continue
                    diff = 100 * (piv[a] - piv[b])
                    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.nan
                    cells.append(f"{diff.mean():+.1f} ± {se:.1f}")
            L.append(f"| {what} | {frac:.0%} | " + " | ".join(cells) + " |")
    L.append("")
    return L


def detector_check(args) -> None:
    """Which suspect rule to use: the calibrated label-error detector (P(label wrong) ≥ 0.5)
    against Data-OOB's 2-means low cluster, on clean and 10%-flipped training sets: seconds,
    points flagged, recall of the flips, and the flip share left among the trusted points."""
    from hostcp_core.evaluation.label_errors import LabelErrorDetector
    from hostcp_core.recommended import suspects_from_values
    from hostcp_core.valuers.data_oob import DataOOB

    for ds in args.datasets:
        for seed in args.seeds:
            tr, te = load(ds, seed, *SKLEARN.get(ds, (args.n_train, args.n_test)))
            noisy, fl = flip_labels(tr, 0.1, seed=seed)
            for cond, t in (("clean", tr), ("flip", noisy)):
                m = np.zeros(t.n, bool)
                m[fl] = cond == "flip"
                t0 = time.perf_counter()
                f = LabelErrorDetector(seed=seed).fit(t).label_error_prob_ >= 0.5
                s1 = time.perf_counter() - t0
                t0 = time.perf_counter()
                o = DataOOB(n_estimators=200, n_jobs=1, seed=seed).fit(t, te).values
                s2 = time.perf_counter() - t0
                so = suspects_from_values(o, t.y, int(0.2 * t.n), t.n_classes)
                print(f"{ds:14s} {cond:5s} LED {s1:5.1f}s flagged {f.sum():3d} rec "
                      f"{m[f].sum() / max(m.sum(), 1):.2f} trusted-flip {m[~f].mean():.3f} | "
                      f"OOB {s2:4.1f}s flagged {so.sum():3d} rec "
                      f"{m[so].sum() / max(m.sum(), 1):.2f} trusted-flip {m[~so].mean():.3f}",
                      flush=True)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(PAPER) + list(SKLEARN))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.05, 0.1, 0.5])
    ap.add_argument("--learners", nargs="+", default=["logreg", "mlp"])
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-seeds", type=int, default=3, help="trainings per candidate (MLP)")
    ap.add_argument("--select-epochs", type=int, default=30, help="MLP epochs when choosing")
    ap.add_argument("--eval-epochs", type=int, default=60, help="MLP epochs on the held-out")
    ap.add_argument("--repeats", type=int, default=2, help="MLP trainings per held-out score")
    ap.add_argument("--out", default=str(ROOT / "results" / "recommended"))
    ap.add_argument("--pool-rank", default="label_errors",
                    help="order in which the trusted pool is tightened (RecommendedSelection)")
    ap.add_argument("--part", default="", help="suffix of this process's CSVs (parallel runs)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--detector-check", action="store_true",
                    help="compare the two suspect rules (see detector_check) and exit")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    import torch

    args = parse(argv)
    torch.set_num_threads(1)   # shared machine: every fit and training is serial
    out = Path(args.out)
    if args.detector_check:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            detector_check(args)
        return
    if not args.report_only:
        import scipy.linalg  # noqa: F401  (loaded before the limit, or it keeps 2 threads)
        import sklearn.ensemble  # noqa: F401
        import sklearn.linear_model  # noqa: F401
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        with threadpool_limits(1):   # BLAS too: 2 OpenBLAS threads made LR fits 30-60x slower
            run(args)
        print(f"done in {time.perf_counter() - t0:.0f}s", flush=True)
    text = report(out)
    (out / "REPORT.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

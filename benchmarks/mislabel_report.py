"""Issue 16: the mislabel report's detector measured against flipped labels, and against
cleanlab's ``find_label_issues`` and the valuers on the same splits.

Datasets: the paper protocol's five (``hostcp_core.datasets``; 500 training points, the paper
run's subsample per seed) and three real datasets shipped inside scikit-learn (digits,
breast_cancer, wine; a stratified 500-point, or whole-set, training part per seed). Noise: 0%,
10% and 30% of the training labels flipped, ``uniform`` (``hostcp_core.flip_labels``: binary to
the other class, multi-class to a uniformly random other class; at 10% exactly the paper run's
flips) or ``classdep`` (each class c to the fixed class (c+1) mod K; for binary data the same
as uniform, so only run for multi-class data). Seeds 0–2.

Per run: the report's flags (the default rule, expected precision 0.8, and the 0.5 threshold)
— precision, recall, F1, flagged share —, ROC-AUC of label_error_prob, expected vs actual error
count; cleanlab's ``find_label_issues`` (default ``filter_by='prune_by_noise_rate'``) on two
pred_probs: the 5-fold out-of-fold HistGradientBoosting probabilities (cleanlab's tabular
tutorial model; logistic regression, its text tutorial's, where the detector skips boosting) and
our pooled, calibrated out-of-fold probabilities. ``--valuers`` adds the cheap valuers' flip
ROC-AUC on the sklearn datasets at 10% uniform flips (the paper datasets' valuer rows are in
results/paper, on the same splits and flips).

    python benchmarks/mislabel_report.py --out results/mislabels            # the full grid
    python benchmarks/mislabel_report.py --datasets wine --seeds 0 --quick  # a smoke run
    python benchmarks/mislabel_report.py --scale 100000 1000000 --out results/mislabels
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from hostcp_core import flip_labels  # noqa: E402
from hostcp_core.data import Dataset, make_dataset  # noqa: E402
from hostcp_core.evaluation.label_errors import LabelErrorDetector, flag_errors  # noqa: E402

PAPER = ["synthetic", "fashion_mnist", "statlog_dna", "newsgroups", "adult"]
SKLEARN = ["digits", "breast_cancer", "wine"]
N_TRAIN = 500


def load(name: str, seed: int) -> tuple[Dataset, Dataset]:
    if name in PAPER:
        from hostcp_core.datasets import load_paper_dataset
        return load_paper_dataset(name, N_TRAIN, 1000, seed=seed)
    import sklearn.datasets as skd
    from sklearn.model_selection import train_test_split

    bunch = getattr(skd, f"load_{name}")()
    X, y = bunch.data, bunch.target
    n_train = min(N_TRAIN, int(0.7 * len(y)))
    tr, te = train_test_split(np.arange(len(y)), train_size=n_train, stratify=y,
                              random_state=seed)
    classes = tuple(str(c) for c in np.unique(y))
    return (make_dataset(X[tr], y[tr], classes=classes, name=name),
            make_dataset(X[te], y[te], classes=classes, name=f"{name}-test"))


def flip(train: Dataset, rate: float, kind: str, seed: int) -> tuple[Dataset, np.ndarray]:
    if rate == 0:
        return train, np.zeros(0, dtype=np.int64)
    if kind == "uniform":
        return flip_labels(train, rate, seed=seed)
    rng = np.random.default_rng(seed)
    k = int(round(rate * train.n))
    idx = np.sort(rng.choice(train.n, k, replace=False))
    y = train.y.copy()
    y[idx] = (y[idx] + 1) % train.n_classes
    return train.with_labels(y), idx


def scores(flags: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((flags & truth).sum())
    prec = tp / flags.sum() if flags.any() else float("nan")
    rec = tp / truth.sum() if truth.any() else float("nan")
    f1 = 2 * tp / (flags.sum() + truth.sum()) if (flags.sum() + truth.sum()) else float("nan")
    return {"flagged": int(flags.sum()), "flagged_share": float(flags.mean()),
            "precision": prec, "recall": rec, "f1": f1}


def cleanlab_flags(y: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    from cleanlab.filter import find_label_issues

    p = np.clip(pred_probs, 1e-9, None)
    return find_label_issues(y, p / p.sum(1, keepdims=True))


def valuer_aucs(noisy: Dataset, test: Dataset, truth: np.ndarray, seed: int,
                p_err: np.ndarray) -> dict:
    """Each cheap valuer's flip ROC-AUC (low value = suspect), and the AUC of the detector's
    label_error_prob rank-averaged with the valuer's (do the values help the report?)."""
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    from hostcp_core import get_valuer, split_test

    valuation, _ = split_test(test, 0.5, seed=seed)
    out = {}
    for method, kw in (("knn_shapley", {}), ("data_oob", {"n_estimators": 200}), ("loo", {})):
        res = get_valuer(method, fraction=0.2, seed=seed, **kw).fit(noisy, valuation)
        v = np.asarray(res.values)
        out[f"auc_{method}"] = roc_auc_score(truth, -v)
        out[f"auc_report+{method}"] = roc_auc_score(truth, rankdata(p_err) + rankdata(-v))
    return out


def run_one(name: str, seed: int, rate: float, kind: str, args) -> dict:
    from sklearn.metrics import roc_auc_score

    train, test = load(name, seed)
    noisy, idx = flip(train, rate, kind, seed)
    truth = np.zeros(noisy.n, dtype=bool)
    truth[idx] = True
    det = LabelErrorDetector(models=args.models, seed=seed, n_jobs=1,
                             anchor_fraction=args.anchor_fraction).fit(noisy)
    p = det.label_error_prob_
    if args.points:  # per-point evidence, to study flag rules without refitting
        Path(args.points).mkdir(parents=True, exist_ok=True)
        np.savez_compressed(Path(args.points) / f"{name}_s{seed}_{kind}_{rate:.1f}.npz",
                            p=p, truth=truth, y=noisy.y, q=det.pred_probs_,
                            **{f"oof_{m}": v for m, v in det.oof_probs_.items()})
    row = {"dataset": name, "seed": seed, "rate": rate, "kind": kind, "n": noisy.n,
           "K": noisy.n_classes, "true_errors": int(truth.sum()),
           "expected_errors": det.expected_errors_, "seconds": det.seconds_,
           "auc": roc_auc_score(truth, p) if 0 < truth.sum() < noisy.n else float("nan"),
           "weights": json.dumps({k: round(v, 3) for k, v in det.weights_.items()}),
           "temperature": det.temperature_,
           "est_noise": float(1 - np.trace(det.noise_matrix_) / noisy.n_classes)}
    for tag, kw in (("", {}), ("t50_", {"threshold": 0.5})):
        mask, _ = flag_errors(p, **kw)
        row.update({tag + k: v for k, v in scores(mask, truth).items()})
    if 0 < truth.sum():
        row["suggest_acc"] = float((det.suggested_[idx] == train.y[idx]).mean())
    if not args.no_cleanlab:
        # cleanlab's tabular tutorial model (HGB); its text tutorial's (logistic regression)
        # where the detector skips boosting (many classes)
        ref = det.oof_probs_.get("hgb", det.oof_probs_["logistic"])
        row["cleanlab_model"] = "hgb" if "hgb" in det.oof_probs_ else "logistic"
        for tag, probs in (("cl_hgb_", ref), ("cl_pool_", det.pred_probs_)):
            row.update({tag + k: v for k, v in
                        scores(cleanlab_flags(noisy.y, probs), truth).items()})
        if 0 < truth.sum():
            row["auc_cleanlab_model_selfconf"] = roc_auc_score(
                truth, -ref[np.arange(noisy.n), noisy.y])
    if args.valuers and name in SKLEARN and rate == 0.1 and kind == "uniform":
        row.update(valuer_aucs(noisy, test, truth, seed, p))
    return row


def grid(args) -> pd.DataFrame:
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        for seed in args.seeds:
            for rate in args.rates:
                for kind in (["uniform"] if rate == 0 else args.kinds):
                    K = load(name, seed)[0].n_classes
                    if kind == "classdep" and K == 2:
                        continue  # binary: the same flips as uniform
                    t = time.perf_counter()
                    r = run_one(name, seed, rate, kind, args)
                    rows.append(r)
                    print(f"{name:14s} s{seed} {kind:8s} {rate:.1f}  err {r['true_errors']:3d} "
                          f"exp {r['expected_errors']:6.1f}  F1 {r['f1']:.3f} "
                          f"P {r['precision']:.2f} R {r['recall']:.2f} "
                          f"flag {r['flagged_share']:.3f} AUC {r['auc']:.3f} | "
                          f"cl_hgb F1 {r.get('cl_hgb_f1', float('nan')):.3f} "
                          f"flag {r.get('cl_hgb_flagged_share', float('nan')):.3f} "
                          f"[{time.perf_counter() - t:.1f}s]", flush=True)
                    pd.DataFrame(rows).to_csv(out / args.csv, index=False)
    return pd.DataFrame(rows)


def scale(args) -> pd.DataFrame:
    """Seconds and peak RSS of the report at n rows × 20 features × 3 classes (10% flipped)."""
    from sklearn.datasets import make_classification

    from hostcp_core.evaluation.mislabels import mislabel_report

    rows = []
    for n in args.scale:
        X, y = make_classification(n, 20, n_informative=10, n_classes=3, random_state=0)
        ds = make_dataset(X, y, name=f"scale-{n}")
        noisy, idx = flip_labels(ds, 0.1, seed=0)
        events = []
        cpu0 = time.process_time()
        t = time.perf_counter()
        df = mislabel_report(noisy, seed=0, progress=lambda e, t0=t, ev=events: ev.append(
            time.perf_counter() - t0), n_jobs=args.n_jobs)
        secs = time.perf_counter() - t
        cpu = time.process_time() - cpu0  # all threads: the work, whatever else the machine runs
        gaps = np.diff([0.0, *events]) if events else np.array([secs])
        truth = np.zeros(n, dtype=bool)
        truth[idx] = True
        flags = np.zeros(n, dtype=bool)
        flags[df.loc[df["suspected"], "index"].to_numpy()] = True
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
        r = {"n": n, "seconds": secs, "cpu_seconds": cpu, "load_avg_1min": os.getloadavg()[0],
             "peak_rss_mib": peak, "max_progress_gap_s": gaps.max(),
             "n_jobs": args.n_jobs, "expected_errors": df.attrs["expected_errors"],
             "true_errors": int(idx.size), **scores(flags, truth)}
        print(r, flush=True)
        rows.append(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "scale.csv", index=False)
    return pd.DataFrame(rows)


def rescore(args) -> pd.DataFrame:
    """Recompute the report's own columns of ``<out>/<csv>`` from the stored per-point pooled
    probabilities (``--points``) with the library's current noise model and flag rule: the
    out-of-fold probabilities do not depend on either, so this equals a fresh run of the report
    (cleanlab's and the valuers' columns are kept as they were measured)."""
    from sklearn.metrics import roc_auc_score

    from hostcp_core.evaluation.label_errors import error_posterior, estimate_noise_matrix

    runs = pd.read_csv(Path(args.out) / args.csv)
    for i, r in runs.iterrows():
        z = np.load(Path(args.points) / f"{r.dataset}_s{r.seed}_{r.kind}_{r.rate:.1f}.npz")
        q, y, truth = z["q"], z["y"], z["truth"]
        T, _ = estimate_noise_matrix(q, y, q.shape[1])
        p = 1.0 - error_posterior(q, y, T)[np.arange(y.size), y]
        runs.loc[i, "expected_errors"] = p.sum()
        runs.loc[i, "est_noise"] = float(1 - np.trace(T) / T.shape[0])
        if 0 < truth.sum() < truth.size:
            runs.loc[i, "auc"] = roc_auc_score(truth, p)
        for tag, kw in (("", {}), ("t50_", {"threshold": 0.5})):
            mask, _ = flag_errors(p, **kw)
            for k, v in scores(mask, truth).items():
                runs.loc[i, tag + k] = v
    runs = runs.drop(columns=["suggest_acc"], errors="ignore")  # needs the original labels
    runs.to_csv(Path(args.out) / args.csv, index=False)
    return runs


def _markdown(df: pd.DataFrame) -> str:
    head = [*df.index.names, *df.columns]
    rows = [[*(k if isinstance(k, tuple) else (k,)), *v] for k, v in zip(
        df.index, df.to_numpy().tolist(), strict=True)]
    fmt = [" | ".join("" if isinstance(x, float) and np.isnan(x) else str(x) for x in r)
           for r in rows]
    return "\n".join([f"| {' | '.join(map(str, head))} |",
                      "|" + "---|" * len(head), *(f"| {r} |" for r in fmt)])


def summary(args) -> str:
    """Markdown tables of ``<out>/<csv>``: means over seeds per dataset and noise condition."""
    d = pd.read_csv(Path(args.out) / args.csv)
    d["cond"] = np.where(d["rate"] == 0, "clean", d["kind"] + " " +
                         (100 * d["rate"]).round().astype(int).astype(str) + "%")
    d["exp/true"] = d["expected_errors"] / d["true_errors"].where(d["true_errors"] > 0)
    cols = {"f1": "F1", "precision": "P", "recall": "R", "flagged_share": "flagged",
            "auc": "AUC", "exp/true": "exp/true", "t50_f1": "F1@t0.5",
            "t50_flagged_share": "flagged@t0.5", "cl_hgb_f1": "cleanlab F1 (HGB)",
            "cl_hgb_flagged_share": "cleanlab flagged (HGB)", "cl_pool_f1": "cleanlab F1 (ours)",
            "cl_pool_flagged_share": "cleanlab flagged (ours)"}
    g = d.groupby(["dataset", "cond"], sort=False)[list(cols)].mean().rename(columns=cols)
    lines = [_markdown(g.round(3)), ""]
    for cond in d["cond"].unique():
        m = d[d["cond"] == cond][list(cols)].mean().rename(cols)
        lines.append(f"- {cond}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()
                                              if not np.isnan(v)))
    # the valuers' flip ROC-AUC on the same splits and flips (10% uniform): the paper run's rows
    # for the paper datasets (results/paper/detection.csv), this script's --valuers otherwise
    u10 = d[(d["rate"] == 0.1) & (d["kind"] == "uniform")]
    paper = pd.read_csv(ROOT / "results/paper/detection.csv")
    paper = paper[paper["method"] != "random"]
    pv = paper.pivot_table(index="dataset", columns="method", values="roc_auc_values",
                           aggfunc="mean")
    own = {c[4:]: u10.groupby("dataset")[c].mean() for c in u10.columns
           if c.startswith("auc_") and "+" not in c and c != "auc_cleanlab_model_selfconf"}
    tab = pd.concat([u10.groupby("dataset")["auc"].mean().rename("report"),
                     u10.groupby("dataset")["auc_cleanlab_model_selfconf"].mean().rename(
                         "cleanlab model self-confidence"),
                     pv, pd.DataFrame(own)], axis=1)
    tab = tab.T.groupby(level=0, sort=False).first().T   # one column per method
    tab = tab.reindex(u10["dataset"].unique())
    lines += ["", "Flip ROC-AUC at 10% uniform flips, mean over seeds 0-2 (same splits):", "",
              _markdown(tab.round(3)), ""]
    combos = [c for c in u10.columns if c.startswith("auc_report+")]
    if combos:
        cm = u10.groupby("dataset")[["auc", *combos]].mean().dropna()
        lines += ["Report alone vs rank-averaged with a valuer's values:", "",
                  _markdown(cm.round(3)), ""]
    clean = d[d["rate"] == 0].groupby("dataset")["flagged_share"].max()
    lines.append(f"- clean data, largest flagged share over seeds: {clean.round(3).to_dict()}")
    out = "\n".join(lines)
    print(out)
    return out


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=PAPER + SKLEARN)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.1, 0.3])
    ap.add_argument("--kinds", nargs="+", default=["uniform", "classdep"])
    ap.add_argument("--models", nargs="+", default=["forest", "hgb", "logistic"])
    ap.add_argument("--anchor-fraction", type=float, default=0.1)
    ap.add_argument("--valuers", action="store_true")
    ap.add_argument("--no-cleanlab", action="store_true")
    ap.add_argument("--quick", action="store_true", help="rates 0 and 0.1 only")
    ap.add_argument("--scale", nargs="+", type=int, help="measure cost at these row counts")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--points", help="folder for per-point npz files (optional)")
    ap.add_argument("--rescore", action="store_true",
                    help="recompute the report's columns from --points (no refitting)")
    ap.add_argument("--summary", action="store_true", help="print the tables of <out>/<csv>")
    ap.add_argument("--out", default="/tmp/mislabels")
    ap.add_argument("--csv", default="runs.csv")
    args = ap.parse_args(argv)
    if args.quick:
        args.rates = [0.0, 0.1]
    return args


def main(argv=None) -> None:
    import torch

    torch.set_num_threads(1)
    args = parse(argv)
    if args.rescore:
        rescore(args)
    if args.summary:
        summary(args)
    if args.rescore or args.summary:
        return
    if args.scale:
        scale(args)
    else:
        grid(args)


if __name__ == "__main__":
    main()

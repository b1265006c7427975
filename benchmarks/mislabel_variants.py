"""Issue 16: noise-model and pooling variants of the mislabel detector, measured without
refitting on the per-point out-of-fold probabilities that ``mislabel_report.py --points`` stores.

Each variant takes a run's per-model out-of-fold probabilities and given labels and returns
label_error_prob; flags use the library's default rule (expected precision 0.8). ``library`` is
the detector as committed (one pool, its anchors' noise matrix, the posterior); it equals the
report's own label_error_prob. The others were tried on top of it on 4 December and none was
adopted: docs/RESULTS.md ("Mislabel report", "Tried on 4 December") says what each did.

    python benchmarks/mislabel_report.py --no-cleanlab --points /tmp/points --out /tmp/ml
    python benchmarks/mislabel_variants.py --points /tmp/points --out results/mislabels/variants.csv
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hostcp_core.evaluation import label_errors as le  # noqa: E402


def _anchors(q, y, K, af=0.1, ma=60):
    """The library's anchor histogram (estimate_noise_matrix): (hist, sizes)."""
    n = y.size
    counts = np.bincount(y, minlength=K)
    frac = min(1.0, max(af, ma / n))
    hist, sizes = np.zeros((K, K)), np.zeros(K)
    for i in range(K):
        if counts[i]:
            m = int(min(n, max(1, np.ceil(frac * counts[i]))))
            top = np.argpartition(-q[:, i], m - 1)[:m]
            hist[i], sizes[i] = np.bincount(y[top], minlength=K), m
    return hist, sizes


def _level_pattern(T):
    K = T.shape[0]
    rho = 1 - T[0, 0]
    pat = (T - np.diag(np.diag(T))) / rho if rho > 0 else (1 - np.eye(K)) / max(K - 1, 1)
    return rho, pat


def _post(q, y, T):
    return 1 - le.error_posterior(q, y, T)[np.arange(y.size), y]


def pool(r, n_folds=1):
    """The library's pool (weights + temperature by log-loss); n_folds > 1: cross-fitted (for
    every use, anchors included, unlike the library)."""
    P = [r["oof"][m] for m in r["oof"]]
    y, n = r["y"], r["y"].size
    if n_folds < 2:
        return le._pool(P, y, 20_000, r["seed"])[0]
    fold = np.random.default_rng(r["seed"]).permutation(n) % n_folds
    q = np.empty_like(P[0])
    for k in range(n_folds):
        a = fold == k
        _, w, temp = le._pool([p[~a] for p in P], y[~a], 20_000, r["seed"])
        mix = np.tensordot(w, np.stack([p[a] for p in P]), 1)
        q[a] = softmax(np.log(np.clip(mix, 1e-6, None)) / temp, axis=1)
    return q


def pool_uniform_mix(r):
    """Pool, temperature and a uniform mixture weight λ, all by log-loss: q' = (1-λ)q + λ/K."""
    P = np.stack([r["oof"][m] for m in r["oof"]])
    m, y, K = P.shape[0], r["y"], P.shape[2]

    def pooled(th):
        lq = np.log(np.clip(np.tensordot(softmax(np.r_[0.0, th[:m - 1]]), P, 1), 1e-6, None))
        lam = 1 / (1 + np.exp(-th[m]))
        return (1 - lam) * np.exp(log_softmax(lq / np.exp(th[m - 1]), axis=1)) + lam / K, lam

    res = minimize(lambda th: -np.log(pooled(th)[0][np.arange(y.size), y]).mean(),
                   np.r_[np.zeros(m), -6.0], method="L-BFGS-B",
                   bounds=[(-8, 8)] * (m - 1) + [(np.log(0.2), np.log(5.0)), (-12, 0)])
    return pooled(res.x)


def v_library(r):
    q = pool(r)
    return _post(q, r["y"], le.estimate_noise_matrix(q, r["y"], q.shape[1])[0])


def v_crossfit_posterior(r):
    """Anchors (T) from the full-data pool, the posterior from the 5-fold cross-fitted pool."""
    q, qc = pool(r), pool(r, n_folds=5)
    return _post(qc, r["y"], le.estimate_noise_matrix(q, r["y"], q.shape[1])[0])


def v_crossfit(r):
    q = pool(r, n_folds=5)
    return _post(q, r["y"], le.estimate_noise_matrix(q, r["y"], q.shape[1])[0])


def _floor(q, y, quant):
    """Label rate among the (point, class) pairs with the lowest pooled probability."""
    low = q <= np.quantile(q, quant)
    return np.eye(q.shape[1])[y][low].sum() / max(low.sum(), 1)


def _floor_T(r, level, quant=0.5, ps=20.0):
    q, y = pool(r), r["y"]
    K = q.shape[1]
    if K == 2:  # the pattern is fixed for binary data: the library's estimate
        return q, le.estimate_noise_matrix(q, y, K)[0]
    hist, sizes = _anchors(q, y, K)
    prior = np.full((K, K), _floor(q, y, quant))
    np.fill_diagonal(prior, 0)
    off = hist - np.diag(np.diag(hist))
    est = (off + ps * prior) / (sizes[:, None] + ps)
    np.fill_diagonal(est, 0)
    lvl = est.sum(1)
    pat = est / np.where(lvl[:, None] > 0, lvl[:, None], 1)
    rho = (hist.sum() - np.trace(hist)) / max(hist.sum(), 1) if level == "pooled" else \
        (lvl * sizes).sum() / sizes.sum()
    return q, (1 - rho) * np.eye(K) + rho * pat


def v_floor_pattern(r):
    q, T = _floor_T(r, "pooled")
    return _post(q, r["y"], T)


def v_floor_rows(r):
    q, T = _floor_T(r, "rows")
    return _post(q, r["y"], T)


def v_floor_rows_q30(r):
    q, T = _floor_T(r, "rows", quant=0.3)
    return _post(q, r["y"], T)


def v_uniform_mix(r):
    q, _ = pool_uniform_mix(r)
    return _post(q, r["y"], le.estimate_noise_matrix(q, r["y"], q.shape[1])[0])


def v_consensus_anchors(r):
    """Anchors ranked by the smallest of the models' probabilities; level and pattern as the
    library's, from those anchors."""
    q, y = pool(r), r["y"]
    K = q.shape[1]
    rank = np.min(np.stack([r["oof"][m] for m in r["oof"]]), 0)
    hist, sizes = _anchors(rank, y, K)
    rho = (hist.sum() - np.trace(hist)) / max(hist.sum(), 1)
    prior = np.full((K, K), rho / max(K - 1, 1))
    np.fill_diagonal(prior, 1 - rho)
    shrunk = (hist + 20.0 * prior) / (sizes[:, None] + 20.0)
    off = shrunk - np.diag(np.diag(shrunk))
    mass = off.sum(1, keepdims=True)
    pat = np.where(mass > 0, off / np.where(mass > 0, mass, 1), (1 - np.eye(K)) / max(K - 1, 1))
    return _post(q, y, (1 - rho) * np.eye(K) + rho * pat)


def v_depth_extrapolated(r):
    """Anchor impurity at 1x, 1.5x, 2x and 3x the anchor share, the level its linear
    extrapolation to depth 0 (clipped to [0, the library's level])."""
    q, y = pool(r), r["y"]
    K, n = q.shape[1], y.size
    T0 = le.estimate_noise_matrix(q, y, K)[0]
    rho_a, pat = _level_pattern(T0)
    base = max(0.1, 60 / n)
    fs, imp = [], []
    for mult in (1.0, 1.5, 2.0, 3.0):
        hist, _ = _anchors(q, y, K, af=min(1.0, base * mult), ma=0)
        fs.append(base * mult)
        imp.append((hist.sum() - np.trace(hist)) / hist.sum())
    slope, icpt = np.polyfit(fs, imp, 1)
    rho = float(np.clip(icpt, 0, rho_a)) if slope > 0 else rho_a
    return _post(q, y, (1 - rho) * np.eye(K) + rho * pat)


def v_em_level(r):
    """The level re-estimated as the mean label_error_prob until it settles (30 steps)."""
    q, y = pool(r), r["y"]
    K = q.shape[1]
    rho, pat = _level_pattern(le.estimate_noise_matrix(q, y, K)[0])
    for _ in range(30):
        rho = _post(q, y, (1 - rho) * np.eye(K) + rho * pat).mean()
    return _post(q, y, (1 - rho) * np.eye(K) + rho * pat)


VARIANTS = {"library": v_library, "crossfit_posterior": v_crossfit_posterior,
            "crossfit_pool": v_crossfit,
            "floor_pattern": v_floor_pattern, "floor_rows": v_floor_rows,
            "floor_rows_q30": v_floor_rows_q30,
            "uniform_mix": v_uniform_mix, "consensus_anchors": v_consensus_anchors,
            "depth_extrapolated": v_depth_extrapolated, "em_level": v_em_level}


def load(folder):
    for f in sorted(Path(folder).glob("*.npz")):
        m = re.match(r"(.+)_s(\d+)_(\w+)_([\d.]+)\.npz", f.name)
        z = np.load(f)
        yield {"dataset": m[1], "seed": int(m[2]), "kind": m[3], "rate": float(m[4]),
               "y": z["y"], "truth": z["truth"],
               "oof": {k[4:]: z[k] for k in z.files if k.startswith("oof_")}}


def run(folder) -> pd.DataFrame:
    rows = []
    for r in load(folder):
        t = r["truth"]
        for name, fn in VARIANTS.items():
            p = fn(r)
            mask, _ = le.flag_errors(p)
            tp = int((mask & t).sum())
            rows.append({"variant": name, "dataset": r["dataset"], "seed": r["seed"],
                         "kind": r["kind"], "rate": r["rate"], "true_errors": int(t.sum()),
                         "expected_errors": float(p.sum()), "flagged_share": float(mask.mean()),
                         "precision": tp / mask.sum() if mask.any() else np.nan,
                         "f1": 2 * tp / (mask.sum() + t.sum()) if mask.sum() + t.sum() else np.nan,
                         "auc": roc_auc_score(t, p) if 0 < t.sum() < t.size else np.nan})
    return pd.DataFrame(rows)


def summary(d: pd.DataFrame) -> pd.DataFrame:
    out = []
    for name, g in d.groupby("variant", sort=False):
        clean = g[g.rate == 0].groupby("dataset").flagged_share
        cells = g[g.rate > 0].groupby(["dataset", "kind", "rate"]).apply(
            lambda c: c.expected_errors.mean() / c.true_errors.mean(), include_groups=False)
        ok = (cells >= 1 / 1.5) & (cells <= 1.5)
        out.append({"variant": name, "F1 10%": g[g.rate == 0.1].f1.mean(),
                    "F1 30%": g[g.rate == 0.3].f1.mean(),
                    "P 10%": g[g.rate == 0.1].precision.mean(),
                    "clean newsgroups mean": clean.mean()["newsgroups"],
                    "clean newsgroups max": clean.max()["newsgroups"],
                    "clean others max": clean.max().drop("newsgroups").max(),
                    "clean others max at": clean.max().drop("newsgroups").idxmax(),
                    "cells within x1.5": f"{int(ok.sum())}/{len(ok)}",
                    "cells missed": "; ".join(f"{a} {k} {round(100 * r)}% x{v:.2f}"
                                              for (a, k, r), v in cells[~ok].items())})
    return pd.DataFrame(out).round(3)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", required=True)
    ap.add_argument("--out", required=True, help="CSV of per-run rows")
    args = ap.parse_args(argv)
    d = run(args.points)
    d.to_csv(args.out, index=False)
    s = summary(d)
    print(f"| {' | '.join(s.columns)} |\n|" + "---|" * len(s.columns))
    for row in s.itertuples(index=False):
        print("| " + " | ".join(str(x) for x in row) + " |")


if __name__ == "__main__":
    main()

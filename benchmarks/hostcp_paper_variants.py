"""HOST-CP variants on the paper's protocol: which of the method's settings help on real data?

Runs HOST-CP with the given parameter overrides on exactly the splits, flips and curve seeds of
``benchmarks/paper.py`` (so the rows line up with the baselines in ``results/paper/``) and records
the figures the paper report judges: addition accuracy at 5/20/50%, removal accuracy at 20/50%,
flips found at 20% inspected, flip ROC-AUC of the ranking, fix-and-retrain at 20%.

    python benchmarks/hostcp_paper_variants.py --variant default='{}' \
        --variant full_test='{"test_batch_size": 100000}' --datasets synthetic adult
    python benchmarks/hostcp_paper_variants.py --summarise   # table vs results/paper baselines
    python benchmarks/hostcp_paper_variants.py --paired      # each variant minus --base

Rows are appended to ``--out`` (a CSV), one per (variant, dataset, seed), so runs can be split
over processes and resumed.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hostcp_core import flip_labels, get_valuer, split_test  # noqa: E402
from hostcp_core.datasets import load_paper_dataset  # noqa: E402
from hostcp_core.evaluation import (  # noqa: E402
    addition_curve,
    fix_and_retrain_curve,
    flip_detection_scores,
    flips_found_curve,
    paper_ranking,
    rank_values,
    removal_curve,
)

DATASETS = ["synthetic", "fashion_mnist", "statlog_dna", "newsgroups", "adult"]
ADD, REMOVE, INSPECT, FIX = (0.05, 0.2, 0.5), (0.2, 0.5), (0.2,), (0.2,)
# metric column -> higher is better?
METRICS = {"add@5": True, "add@20": True, "add@50": True, "rem@20": False, "rem@50": False,
           "flips@20": True, "auc": True, "fix@20": True}


def evaluate(dataset: str, seed: int, params: dict, n_train: int, n_test: int,
             epochs: int) -> dict:
    train, test = load_paper_dataset(dataset, n_train, n_test, seed=seed)
    valuation, holdout = split_test(test, 0.5, seed=seed)
    noisy, flipped = flip_labels(train, 0.1, seed=seed)
    kw = {"fraction": 0.2, "seed": seed, **params}
    t0 = time.perf_counter()
    order = paper_ranking(get_valuer("hostcp", **kw).fit(train, valuation))
    seconds = time.perf_counter() - t0
    row: dict = {}
    add = addition_curve(train, holdout, order, ADD, seed=1000 + seed, epochs=epochs)
    rem = removal_curve(train, holdout, order, REMOVE, seed=1000 + seed, epochs=epochs)
    for f, a in zip(ADD, add["accuracy"], strict=True):
        row[f"add@{round(100 * f)}"] = a
    for f, a in zip(REMOVE, rem["accuracy"], strict=True):
        row[f"rem@{round(100 * f)}"] = a
    rv = rank_values(paper_ranking(get_valuer("hostcp", **kw).fit(noisy, valuation)))
    row["flips@20"] = float(flips_found_curve(rv, flipped, INSPECT)["found"].iloc[0])
    row["auc"] = flip_detection_scores(rv, flipped)["roc_auc"]
    fx = fix_and_retrain_curve(noisy, train.y, holdout, rv, FIX, seed=1000 + seed, epochs=epochs)
    row["fix@20"] = float(fx["accuracy"].iloc[-1])
    row["seconds"] = seconds
    return row


def baselines(paper_dir: Path) -> pd.DataFrame:
    """The same metrics for every method of the stored paper run (seed-level rows)."""
    curves = pd.read_csv(paper_dir / "curves.csv")
    flips = pd.read_csv(paper_dir / "flips.csv")
    det = pd.read_csv(paper_dir / "detection.csv")
    key = ["dataset", "seed", "method"]
    parts = []
    for kind, name, fracs in (("addition", "add", ADD), ("removal", "rem", REMOVE),
                              ("fix", "fix", FIX)):
        for f in fracs:
            d = curves[(curves["kind"] == kind) & np.isclose(curves["fraction"], f)]
            parts.append(d.set_index(key)["accuracy"].rename(f"{name}@{round(100 * f)}"))
    d = flips[np.isclose(flips["fraction"], 0.2)]
    parts.append(d.set_index(key)["found"].rename("flips@20"))
    parts.append(det.set_index(key)["roc_auc_ranking"].rename("auc"))
    return pd.concat(parts, axis=1).reset_index()


def summarise(out: Path, paper_dir: Path) -> str:
    runs = pd.read_csv(out)
    base = baselines(paper_dir)
    lines = []
    for ds in [d for d in DATASETS if d in set(runs["dataset"])]:
        r = runs[runs["dataset"] == ds]
        b = base[(base["dataset"] == ds) & base["seed"].isin(r["seed"].unique())]
        lines += [f"\n### {ds} (seeds {sorted(int(s) for s in r['seed'].unique())})", "",
                  "| row | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for name, g in list(b.groupby("method", sort=False)) + list(
                r.groupby("variant", sort=False)):
            label = name if "variant" not in g else f"hostcp[{name}]"
            cells = [f"{g[m].mean():.3f}" if m in g and g[m].notna().any() else "–"
                     for m in METRICS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        best = []
        for m, hi in METRICS.items():
            means = b.groupby("method")[m].mean().drop("hostcp", errors="ignore").dropna()
            if len(means):
                best.append(f"{means.idxmax() if hi else means.idxmin()}")
        lines.append("| best other | " + " | ".join(best) + " |")
    return "\n".join(lines)


def paired(out: Path, base: str = "default", paper_dir: Path | None = None) -> str:
    """Each variant minus ``base`` on the same (dataset, seed): mean and standard error over
    the pairs. ``base="paper"``: HOST-CP's rows of the paper run in ``paper_dir`` (the same
    computation as a variant without overrides under the defaults of that run)."""
    runs = pd.read_csv(out).set_index(["dataset", "seed"])
    if base == "paper":
        ref = baselines(paper_dir).query("method == 'hostcp'").set_index(["dataset", "seed"])
        ref = ref[list(METRICS)]
    else:
        ref = runs[runs["variant"] == base][list(METRICS)]
    lines = [f"| variant − {base} (pairs) | " + " | ".join(METRICS) + " |",
             "|---" * (len(METRICS) + 1) + "|"]
    for name in [v for v in dict.fromkeys(runs["variant"]) if v != base]:
        diff = (runs[runs["variant"] == name][list(METRICS)] - ref).dropna()
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        cells = [f"{diff[m].mean():+.3f} ({se[m]:.3f})" for m in METRICS]
        lines.append(f"| {name} ({len(diff)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=JSON of HostCP parameters (repeatable)")
    ap.add_argument("--datasets", nargs="+", default=DATASETS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--eval-epochs", type=int, default=60)
    ap.add_argument("--out", default=str(ROOT / "results" / "exploration" / "paper_variants.csv"))
    ap.add_argument("--paper-dir", default=str(ROOT / "results" / "paper"))
    ap.add_argument("--summarise", action="store_true")
    ap.add_argument("--paired", action="store_true", help="each variant minus --base")
    ap.add_argument("--base", default="default", help="the variant --paired subtracts "
                    "('paper': HOST-CP's rows in --paper-dir)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.summarise or args.paired:
        print(summarise(out, Path(args.paper_dir)) if args.summarise
              else paired(out, args.base, Path(args.paper_dir)))
        return
    torch.set_num_threads(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    for spec in args.variant:
        name, _, js = spec.partition("=")
        params = json.loads(js or "{}")
        for ds in args.datasets:
            for seed in args.seeds:
                row = {"variant": name, "params": json.dumps(params), "dataset": ds,
                       "seed": seed, **evaluate(ds, seed, params, args.n_train, args.n_test,
                                                args.eval_epochs)}
                pd.DataFrame([row]).to_csv(out, mode="a", header=not out.exists(), index=False)
                print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items() if k != "params"), flush=True)


if __name__ == "__main__":
    main()

"""HOST-CP subsets vs random subsets, raw-feature facility location and the full set.

Synthetic data (Data Shapley generator), n training points, γ = fraction, seeds, clean and with
10% flipped labels. Each subset is scored by the held-out accuracy of an MLP trained from scratch
on it (mean over --eval-seeds trainings), on a held-out part of the test set that HOST-CP never
saw. Prints per-variant means, spreads and paired differences (with standard errors) and writes
a CSV of every run.

    python benchmarks/hostcp_synthetic.py --seeds 0 1 2 3 4 --out results/hostcp_synthetic.csv

Large n (e.g. HOST-CP variants only, paired against plain HOST-CP; raw facility location is
quadratic in n):

    python benchmarks/hostcp_synthetic.py --n 10000 --baselines --variants hostcp "hostcp[wave=16]"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from hostcp_core import flip_labels, make_synthetic, split_test, subset_size
from hostcp_core.hostcp import HostCP
from hostcp_core.models import accuracy, train_classifier
from hostcp_core.valuers.facility_location import RawFacilityLocation

VARIANTS = {
    "hostcp": {},
    "hostcp[frozen]": {"learn_embedding": False},
    "hostcp[hidden+gradient]": {"embedding": "hidden+gradient"},
    "hostcp[hidden+gradient,frozen]": {"embedding": "hidden+gradient", "learn_embedding": False},
    "hostcp[hidden]": {"embedding": "hidden"},
    "hostcp[hidden,frozen]": {"embedding": "hidden", "learn_embedding": False},
    "hostcp[raw]": {"embedding": "raw"},
    "hostcp[raw,frozen]": {"embedding": "raw", "learn_embedding": False},
    "hostcp[score=mass]": {"score": "mass"},
    "ablation[no-layer]": {"_no_layer": True, "learn_embedding": False},
    # issue 12: selection problems of W minibatches solved in one call
    "hostcp[wave=4]": {"wave": 4},
    "hostcp[wave=8]": {"wave": 8},
    "hostcp[wave=16]": {"wave": 16},
    "hostcp[wave=auto]": {"wave": "auto"},
}


BASELINES = ("full", "random", "facility_location[raw]")


class _NoLayerHostCP(HostCP):
    """Ablation: the same training and score with the selection layer replaced by a uniform
    u = γ (no selection, no old set): what the layer adds."""

    def _select(self, model, embed, layer, X, Y, idx, old_set, scales):
        n = len(idx)
        u = torch.full((n,), self.fraction, device=X.device)
        out = SimpleNamespace(u=u, Zn=torch.zeros(n, n, device=X.device),
                              Zo=torch.zeros(n, 0, device=X.device))
        return out, idx[:0], torch.zeros(n, self.embed_dim, device=X.device)


def make_variant(name: str, fraction: float, seed: int, overrides: dict) -> HostCP:
    params = {**VARIANTS[name], **overrides}
    cls = _NoLayerHostCP if params.pop("_no_layer", False) else HostCP
    return cls(fraction, seed=seed, **params)


def subset_acc(train, holdout, idx, eval_seeds, epochs):
    accs = []
    for s in eval_seeds:
        m = train_classifier(train.X[idx], train.y[idx], train.n_classes, epochs=epochs, seed=s)
        accs.append(accuracy(m, holdout.X, holdout.y))
    return float(np.mean(accs))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--noise", nargs="+", default=["clean", "flip10"])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--set", nargs="*", default=[], help="HostCP overrides, key=json")
    ap.add_argument("--eval-seeds", type=int, default=3)
    ap.add_argument("--eval-epochs", type=int, default=100)
    ap.add_argument("--baselines", nargs="*", default=list(BASELINES),
                    help="reference subsets to score besides the variants (none: only variants)")
    ap.add_argument("--paired", default="hostcp", metavar="VARIANT",
                    help="also print every variant minus this one, paired over seeds")
    ap.add_argument("--out", default="results/hostcp_synthetic.csv")
    ap.add_argument("--summarise", nargs="+", metavar="CSV",
                    help="only print the summary of earlier runs' CSVs (concatenated)")
    args = ap.parse_args(argv)
    if args.summarise:
        df = pd.concat([pd.read_csv(f) for f in args.summarise])
        print(summarise(df))
        print(paired(df, args.paired))
        return
    torch.set_num_threads(1)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    eval_seeds = list(range(100, 100 + args.eval_seeds))
    rows = []
    for seed in args.seeds:
        train, test = make_synthetic(args.n, 3000, seed=seed)
        valuation, holdout = split_test(test, 0.67, seed=seed)
        for noise in args.noise:
            tr = train
            if noise == "flip10":
                tr, _ = flip_labels(train, 0.1, seed=seed)
            k = subset_size(tr.n, args.fraction)
            rng = np.random.default_rng(seed)

            def record(method, idx, secs, tr=tr, noise=noise, seed=seed, holdout=holdout):
                acc = subset_acc(tr, holdout, idx, eval_seeds, args.eval_epochs)
                rows.append({"seed": seed, "noise": noise, "method": method, "accuracy": acc,
                             "seconds": secs})
                print(f"seed={seed} {noise:6s} {method:34s} acc={acc:.4f} ({secs:.1f}s)",
                      flush=True)

            if "full" in args.baselines:
                record("full", np.arange(tr.n), 0.0)
            if "random" in args.baselines:
                rand_accs = [subset_acc(tr, holdout, rng.choice(tr.n, k, replace=False),
                                        eval_seeds, args.eval_epochs) for _ in range(3)]
                rows.append({"seed": seed, "noise": noise, "method": "random",
                             "accuracy": float(np.mean(rand_accs)), "seconds": 0.0})
                print(f"seed={seed} {noise:6s} {'random':34s} acc={np.mean(rand_accs):.4f}")
            if "facility_location[raw]" in args.baselines:
                t = time.perf_counter()
                fl = RawFacilityLocation(args.fraction).fit(tr, valuation)
                record("facility_location[raw]", fl.selected, time.perf_counter() - t)
            for name in args.variants:
                t = time.perf_counter()
                res = make_variant(name, args.fraction, seed, overrides).fit(tr, valuation)
                record(name, res.selected, time.perf_counter() - t)
                # every finished run is on disk at once (a long run can be summarised early)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_csv(args.out, index=False)
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print()
    print(summarise(df))
    print(paired(df, args.paired))


def summarise(df: pd.DataFrame) -> str:
    lines = []
    for noise, g in df.groupby("noise", sort=False):
        piv = g.pivot(index="seed", columns="method", values="accuracy")
        lines.append(f"### {noise} (n seeds = {len(piv)})")
        refs = [r for r in (*BASELINES[1:], "hostcp") if r in piv]
        lines.append("| " + " | ".join(["method", "accuracy mean ± sd"]
                                       + [f"vs {r} (paired)" for r in refs]) + " |")
        lines.append("|---" * (len(refs) + 2) + "|")
        for m in piv.columns:
            a = piv[m]
            cells = [f"{a.mean():.4f} ± {a.std(ddof=1):.4f}"]
            for ref in refs:
                d = a - piv[ref]
                se = d.std(ddof=1) / np.sqrt(len(d))
                cells.append(f"{d.mean():+.4f} (se {se:.4f})")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def paired(df: pd.DataFrame, base: str) -> str:
    """Every variant minus ``base``, paired over the seeds both have (mean, standard error, n)."""
    lines = []
    for noise, g in df.groupby("noise", sort=False):
        piv = g.pivot(index="seed", columns="method", values="accuracy")
        if base not in piv:
            continue
        lines.append(f"{noise} seeds {sorted(int(s) for s in piv.index)}")
        for m in sorted(c for c in piv.columns if c.startswith("hostcp") and c != base):
            d = (piv[m] - piv[base]).dropna()
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            a, b = piv[m][d.index].mean(), piv[base][d.index].mean()
            lines.append(f"  {m:20s} vs {base}: {d.mean():+.4f} (se {se:.4f}, n={len(d)})  "
                         f"mean acc {a:.4f} vs {b:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

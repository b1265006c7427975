"""Run time of each valuer on 1000 synthetic training points (make_synthetic(1000, 1000, seed=0)).

Every valuer runs with its shipped defaults except the two whose defaults take long on a CPU:
TMC-Shapley runs ``--tmc-permutations`` permutations (default cap 1000, or until converged)
and DVRL ``--dvrl-iterations`` outer iterations (default 2000); for these the table also gives
the time extrapolated linearly to the defaults (both costs are linear in that count). 10% of
the training labels are flipped so the table can also show each valuer's flip-detection AUC
(clean vs flipped, from the values). Usage:

    OMP_NUM_THREADS=1 python benchmarks/valuer_times.py [--threads 1] [--out results.md]

With ``--sizes 1000,2000,4000`` each method runs at every size instead (same synthetic task,
1000 test points) and the table adds the growth exponent between the last two sizes
(log seconds / log n): the rough per-size costs behind ``hostcp_core.catalogue``'s limits.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from hostcp_core import flip_labels, get_valuer, make_synthetic


def _markdown(header: str, rows: list[list[str]]) -> str:
    return "\n".join([header] + ["| " + " | ".join(r) + " |" for r in rows])


def _emit(text: str, out: str | None) -> None:
    """Print the table, and write it to ``out`` when given."""
    print("\n" + text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tmc-permutations", type=int, default=10)
    ap.add_argument("--dvrl-iterations", type=int, default=20)
    ap.add_argument("--methods", default="hostcp,random,facility_location,knn_shapley,data_oob,"
                    "loo,influence,tracin,tmc_shapley,dvrl")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--sizes", default=None, help="comma-separated training sizes: growth table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.sizes:
        growth(args, [int(s) for s in args.sizes.split(",")])
        return

    train, test = make_synthetic(args.n, 1000, seed=0)
    noisy, flipped = flip_labels(train, 0.1, seed=0)
    is_clean = np.ones(noisy.n, dtype=bool)
    is_clean[flipped] = False

    runs = {
        "hostcp": ({}, None),
        "random": ({}, None),
        "facility_location": ({}, None),
        "knn_shapley": ({}, None),
        "data_oob": ({}, None),
        "loo": ({}, None),
        "influence": ({}, None),
        "tracin": ({}, None),
        "tmc_shapley": ({"max_permutations": args.tmc_permutations,
                         "check_every": args.tmc_permutations}, ("max_permutations", 1000)),
        "dvrl": ({"iterations": args.dvrl_iterations}, ("iterations", 2000)),
    }
    rows = []
    for method in args.methods.split(","):
        params, scaled = runs[method]
        if method != "facility_location":  # the only valuer with no device (numpy only)
            params = {"device": args.device, **params}
        valuer = get_valuer(method, **params)
        t0 = time.perf_counter()
        res = valuer.fit(noisy, test)
        secs = time.perf_counter() - t0
        auc = roc_auc_score(is_clean, res.values)
        setting = ", ".join(f"{k}={v}" for k, v in params.items()
                            if k not in ("check_every", "device"))
        if scaled:
            key, full = scaled
            done = res.extra.get("n_permutations", params[key])
            extrapolated = f"{secs * full / done:,.0f} s at {key}={full}"
        else:
            extrapolated = ""
        rows.append((method, setting or "defaults", f"{secs:.2f}", extrapolated, f"{auc:.3f}"))
        print(f"{method}: {secs:.2f} s, flip AUC {auc:.3f}", flush=True)

    header = ("| method | settings | time (s) | extrapolated to defaults | flip AUC |\n"
              "|---|---|---:|---|---:|")
    table = _markdown(header, rows)
    note = (f"\nn = {args.n} train, 1000 test, 50 features, 10% flipped labels; device "
            f"{args.device}, {args.threads} torch thread(s).")
    _emit(table + note, args.out)


def growth(args, sizes: list[int]) -> None:
    """Seconds per method and training size, and the exponent between the last two sizes."""
    fixed = {"tmc_shapley": {"max_permutations": args.tmc_permutations,
                             "check_every": args.tmc_permutations},
             "dvrl": {"iterations": args.dvrl_iterations}}
    rows = []
    for method in args.methods.split(","):
        params = dict(fixed.get(method, {}))
        if method != "facility_location":
            params["device"] = args.device
        secs = []
        for n in sizes:
            train, test = make_synthetic(n, 1000, seed=0)
            noisy, _ = flip_labels(train, 0.1, seed=0)
            t0 = time.perf_counter()
            get_valuer(method, **params).fit(noisy, test)
            secs.append(time.perf_counter() - t0)
            print(f"{method} n={n}: {secs[-1]:.2f} s", flush=True)
        slope = (np.log(secs[-1] / secs[-2]) / np.log(sizes[-1] / sizes[-2])
                 if len(sizes) > 1 and min(secs[-2:]) > 0 else float("nan"))
        setting = ", ".join(f"{k}={v}" for k, v in params.items()
                            if k not in ("check_every", "device")) or "defaults"
        rows.append((method, setting, *[f"{s:.2f}" for s in secs], f"{slope:.2f}"))
    header = ("| method | settings | " + " | ".join(f"n={n} (s)" for n in sizes)
              + " | exponent |\n|---|---|" + "---:|" * (len(sizes) + 1))
    table = _markdown(header, rows)
    note = (f"\n1000 test points, 50 features, 10% flipped labels; device {args.device}, "
            f"{args.threads} torch thread(s); exponent = log(t_last/t_prev)/log(n_last/n_prev).")
    _emit(table + note, args.out)


if __name__ == "__main__":
    main()

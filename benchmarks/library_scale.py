"""Library at scale (issue 13): seconds and peak memory of KNN-Shapley, Data-OOB and the quick
evaluation on 100k and 1M synthetic rows, called directly (no service).

Task: ``make_scale_task`` (sklearn's make_classification: 20 features, 10 informative, 3
classes; 10% of training labels flipped to another class) with 2,000 test points, split like a
job does (``split_test``: 70% drive valuation, 30% held out for evaluation). Each stage runs in
its own process, so its peak RSS (ru_maxrss) is its own; the table gives the RSS after the data
were built, the peak, the longest gap between two progress callbacks, the flip ROC-AUC of the
values, and, when ``--cancel-after`` is set, how long a cancel (raised from the progress
callback that many seconds in) took to end the stage. ``uptime``'s load averages are printed
beside the figures: on a shared machine they matter.

    python benchmarks/library_scale.py --sizes 100000,1000000 --threads 2 \
        --out results/scale/library_scale.md

``--depth-check N`` instead compares the quick and full evaluations on an N-row task (KNN-Shapley
ranking, seeds given by ``--seeds``): both curves, the subset checks and the seconds, side by
side, so one can see whether the quick depth tells the same story at a fraction of the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = ("knn_shapley", "data_oob", "evaluation")


def make_scale_task(n_train: int, n_test: int = 2000, *, seed: int = 0, flip: float = 0.1):
    """(train with flipped labels, test, flipped row indices): 20 numeric features, 3 classes.
    Also what benchmarks/scale_job.py can write to Parquet/CSV for the service."""
    from sklearn.datasets import make_classification

    from hostcp_core import flip_labels, make_dataset

    X, y = make_classification(n_train + n_test, 20, n_informative=10, n_redundant=5,
                               n_classes=3, n_clusters_per_class=2, flip_y=0.0,
                               random_state=seed)
    names = np.array(["alpha", "beta", "gamma"])
    train = make_dataset(X[:n_train], names[y[:n_train]], name=f"scale-{n_train}")
    test = make_dataset(X[n_train:], names[y[n_train:]], classes=train.classes, name="scale-test")
    noisy, flipped = flip_labels(train, flip, seed=seed)
    return noisy, test, flipped


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_stage(stage: str, n: int, threads: int, workdir: Path, cancel_after: float | None
              ) -> dict:
    """One stage in this process; returns its figures."""
    import torch
    from sklearn.metrics import roc_auc_score

    from hostcp_core import Cancelled, split_test
    from hostcp_core.evaluation.depth import evaluate_subset
    from hostcp_core.result import subset_size

    torch.set_num_threads(threads)
    train, test, flipped = make_scale_task(n)
    valuation, holdout = split_test(test, 0.3, seed=0)
    base = _rss_mb()
    gaps, last = [], [time.perf_counter()]
    asked = [None]

    def progress(p) -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now
        if cancel_after is not None and now - t0 >= cancel_after:
            if asked[0] is None:
                asked[0] = now
            raise Cancelled("benchmark cancel")

    out: dict = {"stage": stage, "n_train": n, "n_test": test.n, "n_valuation": valuation.n,
                 "n_holdout": holdout.n, "threads": threads, "rss_data_mb": round(base)}
    t0 = time.perf_counter()
    try:
        if stage in ("knn_shapley", "data_oob"):
            from hostcp_core import get_valuer

            params = {"device": "cpu"} if stage == "knn_shapley" else {"n_jobs": threads}
            res = get_valuer(stage, **params).fit(train, valuation, progress=progress)
            out["seconds"] = time.perf_counter() - t0
            clean = np.ones(n, dtype=bool)
            clean[flipped] = False
            out["flip_auc"] = float(roc_auc_score(clean, res.values))
            out["params"] = {k: v for k, v in res.params.items() if k not in ("fraction",)}
            out["extra"] = res.extra
            np.save(workdir / f"{stage}-{n}.npy", res.values)
        else:
            values_file = workdir / f"knn_shapley-{n}.npy"
            values = (np.load(values_file) if values_file.exists()
                      else np.random.default_rng(0).random(n))
            out["ranking_from"] = "knn_shapley" if values_file.exists() else "random values"
            ranking = np.argsort(-values, kind="stable")
            selected = np.sort(ranking[:subset_size(n, 0.2)])
            ev = evaluate_subset(train, holdout, ranking, selected, depth="quick", seed=0,
                                 progress=progress)
            out["seconds"] = time.perf_counter() - t0
            out["subset_accuracy"] = ev.subset["accuracy"]
            out["random_subset_accuracy"] = ev.random_subset["accuracy"]
            out["curves"] = ev.curves
            out["sampling"] = ev.sampling
    except Cancelled:
        out["cancel_s"] = time.perf_counter() - asked[0]
        out["seconds"] = time.perf_counter() - t0
    out["max_progress_gap_s"] = max(gaps) if gaps else None
    out["n_progress"] = len(gaps)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def depth_check(n: int, seeds: list[int], out: str | None) -> None:
    """Quick vs full evaluation of the same KNN-Shapley ranking, per seed."""
    import torch

    from hostcp_core import get_valuer, split_test
    from hostcp_core.evaluation.depth import evaluate_subset

    torch.set_num_threads(1)
    lines = ["| seed | depth | seconds | " + " | ".join(
        f"{c} {f:g}" for c in ("add", "rand") for f in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0))
        + " | subset | random subset |", "|---|---|---:|" + "---:|" * 14]
    for seed in seeds:
        train, test, _ = make_scale_task(n, seed=seed)
        valuation, holdout = split_test(test, 0.3, seed=seed)
        res = get_valuer("knn_shapley", device="cpu", seed=seed).fit(train, valuation)
        for depth in ("quick", "full"):
            ev = evaluate_subset(train, holdout, res.ranking(), res.selected, depth=depth,
                                 seed=seed, epochs=30 if depth == "full" else None)
            accs = [r["accuracy"] for r in ev.curves]
            lines.append(f"| {seed} | {depth} | {ev.timings['total_s']:.1f} | "
                         + " | ".join(f"{a:.3f}" for a in accs)
                         + f" | {ev.subset['accuracy']:.3f} | {ev.random_subset['accuracy']:.3f} |")
            print(lines[-1], flush=True)
    note = (f"\n{n:,} training rows (make_scale_task, 10% flipped), 600 held-out test rows, "
            "KNN-Shapley ranking, γ = 0.2; full = 30 epochs on every point (the service's "
            "setting), quick = the defaults; 1 torch thread; load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end.")
    text = "\n".join(lines) + note
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def cli_check(seed: int, out: str | None) -> None:
    """``hostcp value``'s subset-vs-random check as it is today (3 repeats of the subset and of
    random subsets, 60 epochs each) against evaluate_subset's quick depth, 1000 points."""
    import torch

    from hostcp_core import get_valuer, make_synthetic, split_test
    from hostcp_core.evaluation.depth import evaluate_subset
    from hostcp_core.models import accuracy, train_classifier
    from hostcp_core.result import subset_size

    torch.set_num_threads(1)
    train, test = make_synthetic(1000, 1000, seed=seed)
    valuation, holdout = split_test(test, 0.3, seed=seed)
    t0 = time.perf_counter()
    res = get_valuer("knn_shapley", device="cpu", seed=seed).fit(train, valuation)
    t_val = time.perf_counter() - t0
    # verbatim the CLI's block (hostcp_core/cli.py, cmd_value), eval_repeats = 3
    t0 = time.perf_counter()
    k, rng, seeds = subset_size(train.n, 0.2), np.random.default_rng(seed), range(seed, seed + 3)

    def holdout_acc(idx):
        return float(np.mean([accuracy(train_classifier(train.X[idx], train.y[idx],
                                                        train.n_classes, seed=s),
                                       holdout.X, holdout.y) for s in seeds]))

    today = (holdout_acc(res.selected),
             float(np.mean([holdout_acc(rng.choice(train.n, k, replace=False))
                            for _ in range(3)])))
    t_today = time.perf_counter() - t0
    quick = evaluate_subset(train, holdout, res.ranking(), res.selected, fractions=(),
                            seed=seed)
    curves = evaluate_subset(train, holdout, res.ranking(), res.selected, seed=seed)
    rows = [("today (3 repeats, 60 epochs)", t_today, *today),
            ("quick, subset check only", quick.timings["total_s"], quick.subset["accuracy"],
             quick.random_subset["accuracy"]),
            ("quick, with both curves (6 fractions)", curves.timings["total_s"],
             curves.subset["accuracy"], curves.random_subset["accuracy"])]
    text = "\n".join(
        [f"KNN-Shapley valuation: {t_val:.2f} s (make_synthetic(1000, 1000, seed={seed}), "
         "300 held-out test rows, γ = 0.2, 1 torch thread)",
         "| evaluation | seconds | subset accuracy | random subset accuracy |",
         "|---|---:|---:|---:|"]
        + [f"| {r[0]} | {r[1]:.2f} | {r[2]:.3f} | {r[3]:.3f} |" for r in rows]
        + [f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end."])
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def oob_check(n: int, settings: list[tuple[int, float]], threads: int, out: str | None) -> None:
    """Data-OOB's flip ROC-AUC and seconds for several (n_estimators, max_samples) on one task:
    what the bag size and tree count above 10k rows cost in detection quality."""
    from sklearn.metrics import roc_auc_score

    from hostcp_core import get_valuer, split_test

    train, test, flipped = make_scale_task(n)
    valuation, _ = split_test(test, 0.3, seed=0)
    clean = np.ones(n, dtype=bool)
    clean[flipped] = False
    lines = ["| n_estimators | max_samples | bag rows | seconds | flip AUC |",
             "|---:|---:|---:|---:|---:|"]
    for B, frac in settings:
        t0 = time.perf_counter()
        res = get_valuer("data_oob", n_estimators=B, max_samples=frac,
                         n_jobs=threads).fit(train, valuation)
        secs = time.perf_counter() - t0
        lines.append(f"| {B} | {frac:g} | {res.extra['bag_size']:,} | {secs:.1f} | "
                     f"{roc_auc_score(clean, res.values):.4f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + (f"\n{n:,} rows (make_scale_task, 10% flipped), {threads} "
                               f"threads, seed 0; load average "
                               f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end.")
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cancel-after", type=float, default=None,
                    help="also run each stage again, cancelling it this many seconds in")
    ap.add_argument("--out", default=None, help="write the table (markdown) here")
    ap.add_argument("--json", default=None, help="write every figure (JSON) here")
    ap.add_argument("--depth-check", type=int, default=None, metavar="N",
                    help="compare quick and full evaluation on N rows instead")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--oob-check", default=None, metavar="N:B/FRAC,B/FRAC",
                    help="Data-OOB flip AUC for several settings on N rows instead")
    ap.add_argument("--cli-check", action="store_true",
                    help="time hostcp value's subset check today vs the quick depth instead")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: stage:n:workdir
    args = ap.parse_args()
    if args.oob_check:
        n, spec = args.oob_check.split(":")
        settings = [(int(b), float(f)) for b, f in (x.split("/") for x in spec.split(","))]
        oob_check(int(n), settings, args.threads, args.out)
        return
    if args.cli_check:
        cli_check(int(args.seeds.split(",")[0]), args.out)
        return
    if args.depth_check:
        depth_check(args.depth_check, [int(x) for x in args.seeds.split(",")], args.out)
        return
    if args.one:
        stage, n, workdir = args.one.split(":", 2)
        print("RESULT " + json.dumps(run_stage(stage, int(n), args.threads, Path(workdir),
                                               args.cancel_after), default=str))
        return

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            for stage in args.stages.split(","):
                for cancel in ([None] if args.cancel_after is None else [None,
                                                                          args.cancel_after]):
                    cmd = [sys.executable, __file__, "--one", f"{stage}:{n}:{tmp}",
                           "--threads", str(args.threads)]
                    if cancel is not None:
                        cmd += ["--cancel-after", str(cancel)]
                    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
                           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                          check=False)
                    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
                    if proc.returncode or not line:
                        sys.stderr.write(proc.stderr)
                        raise SystemExit(f"{stage} at n={n} failed (rc {proc.returncode})")
                    r = json.loads(line[0][7:])
                    r["load_avg"] = [round(x, 2) for x in os.getloadavg()]
                    rows.append(r)
                    print(json.dumps({k: v for k, v in r.items() if k != "curves"}), flush=True)

    def fmt(r: dict) -> str:
        if "cancel_s" in r:
            what = f"cancel after {args.cancel_after:g} s: ended in {r['cancel_s']:.2f} s"
        elif r["stage"] == "evaluation":
            what = (f"subset {r['subset_accuracy']:.3f} vs random {r['random_subset_accuracy']:.3f}"
                    f" (cap {r['sampling']['cap']}, ranking: {r['ranking_from']})")
        else:
            what = f"flip AUC {r['flip_auc']:.3f}"
            if r["stage"] == "data_oob":
                what += (f"; B={r['extra']['n_estimators']}, bag {r['extra']['bag_size']:,}, "
                         f"{r['extra']['n_jobs']} threads")
            else:
                what += f"; {r['extra']['test_points_per_chunk']} test points per chunk"
        gap = r["max_progress_gap_s"]
        return (f"| {r['n_train']:,} | {r['stage']} | {r['seconds']:.1f} | {r['rss_data_mb']:,} | "
                f"{r['peak_rss_mb']:,} | {'' if gap is None else f'{gap:.2f}'} | {what} | "
                f"{' '.join(f'{x:.2f}' for x in r['load_avg'])} |")

    header = ("| n train | stage | seconds | RSS after data (MB) | peak RSS (MB) | "
              "longest progress gap (s) | notes | load avg (1/5/15 min) after |\n"
              "|---:|---|---:|---:|---:|---:|---|---|")
    table = "\n".join([header] + [fmt(r) for r in rows])
    note = (f"\n2,000 test points (1,400 drive valuation, 600 held out), 20 features, 3 classes, "
            f"10% flipped labels; {args.threads} threads; CPU; load average before "
            f"{' '.join(f'{x:.2f}' for x in load_before)}.")
    print("\n" + table + note)
    if args.out:
        Path(args.out).write_text(table + note + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()

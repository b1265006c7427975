"""Time of one HOST-CP selection epoch (layer solve, θ step, look-ahead φ step per minibatch)
on synthetic data of several sizes, for one or more wave sizes W (minibatches whose selection
problems are solved in one call), with the library's default thread settings; prints wall
and process-CPU seconds per epoch and per point, side by side, with the load average.

    python benchmarks/epoch_speed.py [--sizes 10000 100000] [--wave 1 8] [--device cpu]
        [--threads 1] [--layer-solver auto] [--epochs 1] [--rounds 1] [--json out.jsonl]
    python benchmarks/epoch_speed.py --full-fit --sizes 1000000 --wave auto --device cuda

Above 200k points the data are a draw of the synthetic model without make_synthetic's slow
calibration (see ``synthetic``).

Waves alternate within a round (W=1, W=8, W=1, W=8, ... with --rounds 2), so machine noise
falls on both; the median over rounds is reported, and the ratio to the first --wave given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from hostcp_core import make_synthetic, split_test
from hostcp_core.hostcp import HostCP

# make_synthetic calibrates its label sharpness by refitting a logistic regression on all
# points, which takes very long at a million; above this size a draw of the same model
# (Gaussian features, a third-order polynomial of 5 of them through a sigmoid) with a fixed
# sharpness stands in: the speed of an epoch depends on the sizes, not on the rule.
_CALIBRATED_MAX = 200_000


def synthetic(n: int, n_test: int, seed: int = 0):
    """Training and test sets of the synthetic benchmark at any size."""
    from hostcp_core.data import make_dataset
    from hostcp_core.synthetic import _poly_features

    if n <= _CALIBRATED_MAX:
        return make_synthetic(n, n_test, seed=seed)
    rng = np.random.default_rng(seed)
    S = rng.choice(50, 5, replace=False)
    beta = rng.standard_normal(5 + 25 + 125)
    X = rng.standard_normal((n + n_test, 50)).astype(np.float32)
    f = np.concatenate([_poly_features(X[i:i + 100_000, S].astype(np.float64), 3) @ beta
                        for i in range(0, len(X), 100_000)])
    f = (f - f.mean()) / f.std()
    y = (rng.random(len(f)) < 1 / (1 + np.exp(-3.0 * f))).astype(np.int64)
    return (make_dataset(X[:n], y[:n], classes=("0", "1"), name=f"synthetic-large-{seed}"),
            make_dataset(X[n:], y[n:], classes=("0", "1"), name=f"synthetic-large-{seed}-t"))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def one_epoch(train, valuation, wave, args) -> dict:
    """Fit with 1 warm-up epoch and ``args.epochs`` selection epochs; median epoch times."""
    _sync(args.device)
    t = time.perf_counter()
    res = HostCP(epochs=1 + args.epochs, warmup_epochs=1, device=args.device,
                 solver=args.solver, wave=wave, layer_solver=args.layer_solver,
                 num_threads=args.threads, cuda_graphs=not args.no_cuda_graphs
                 ).fit(train, valuation)
    _sync(args.device)
    return {"epoch": statistics.median(res.timings["selection_epoch_s"]),
            "cpu": statistics.median(res.timings["selection_epoch_cpu_s"]),
            "layer": res.timings["layer_s"] / sum(res.timings["selection_epoch_s"]),
            "fit": time.perf_counter() - t, "wave": res.extra["wave"],
            "graphs": res.extra["cuda_graphs"], "epochs": res.timings["selection_epoch_s"]}


def full_fit(n: int, args) -> None:
    """One full fit with the defaults (the given W), timed; each epoch's time is printed as
    it ends, so a run cut short still tells the epoch time."""
    train, test = synthetic(n, args.test_size, seed=0)
    valuation, _ = split_test(test, 0.3, seed=0)
    wave = args.wave[0] if args.wave[0] == "auto" else int(args.wave[0])
    t0 = time.perf_counter()
    state = {"epoch": 0, "t": t0}

    def progress(p):
        if p.epoch != state["epoch"]:
            now = time.perf_counter()
            print(f"  epoch {state['epoch']} took {now - state['t']:.1f} s "
                  f"(step {p.step}/{p.total}, {now - t0:.0f} s in all)", flush=True)
            state.update(epoch=p.epoch, t=now)

    h = HostCP(device=args.device, wave=wave, num_threads=args.threads,
               cuda_graphs=not args.no_cuda_graphs)
    res = h.fit(train, valuation, progress=progress)
    total = time.perf_counter() - t0
    print(f"full fit: n={n} W={res.extra['wave']} device={args.device} epochs={h.epochs} "
          f"total {total:.1f} s ({total / 60:.2f} min), selection epochs "
          f"{statistics.median(res.timings['selection_epoch_s']):.2f} s (median), CUDA graphs "
          f"{res.extra['cuda_graphs']}", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"full_fit": True, "n": n, "wave": res.extra["wave"],
                                "device": args.device, "total_s": total,
                                "cuda_graphs": res.extra["cuda_graphs"],
                                "epoch_s": statistics.median(
                                    res.timings["selection_epoch_s"])}) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 50000])
    ap.add_argument("--wave", nargs="+", default=["1"],
                    help="wave sizes W to compare (integers or 'auto'); the first is the base")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads during the fit "
                    "(1 is HostCP's default)")
    ap.add_argument("--epochs", type=int, default=1, help="selection epochs timed per fit "
                    "(after 1 warm-up epoch); the median is taken")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per size")
    ap.add_argument("--solver", default="native")
    ap.add_argument("--layer-solver", default="auto")
    ap.add_argument("--test-size", type=int, default=2000)
    ap.add_argument("--json", help="append one JSON line per (n, W) to this file")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="HostCP(cuda_graphs=False): "
                    "launch the wave's kernels one by one on CUDA")
    ap.add_argument("--full-fit", action="store_true", help="one full fit with HostCP's "
                    "defaults at each size (the first --wave) instead of epoch timings")
    args = ap.parse_args(argv)
    if args.full_fit:
        for n in args.sizes:
            full_fit(n, args)
        return
    waves = [w if w == "auto" else int(w) for w in args.wave]
    print(f"torch {torch.__version__}, device {args.device}, threads during fit: "
          f"{args.threads}, solver {args.solver}, layer_solver {args.layer_solver}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'n':>8} {'W':>5} {'epoch s':>8} {'ms/point':>9} {'cpu s':>7} {'cpu ms/pt':>9} "
          f"{'x vs W0':>8} {'layer':>6} {'fit s':>7} {'load':>5} graphs")
    for n in args.sizes:
        train, test = synthetic(n, args.test_size, seed=0)
        valuation, _ = split_test(test, 0.3, seed=0)
        runs: dict = {w: [] for w in waves}
        for _ in range(args.rounds):
            for w in waves:
                runs[w].append(one_epoch(train, valuation, w, args))
        base = statistics.median(r["epoch"] for r in runs[waves[0]])
        for w in waves:
            ep = statistics.median(r["epoch"] for r in runs[w])
            cpu = statistics.median(r["cpu"] for r in runs[w])
            lay = statistics.median(r["layer"] for r in runs[w])
            fit = statistics.median(r["fit"] for r in runs[w])
            label = f"{w}" if w != "auto" else f"a={runs[w][0]['wave']}"
            if args.json:
                rec = {"n": n, "wave": runs[w][0]["wave"], "wave_arg": w, "device": args.device,
                       "threads": args.threads, "epoch_s": ep, "cpu_s": cpu,
                       "ms_per_point": 1e3 * ep / n, "speedup_vs_first": base / ep,
                       "cuda_graphs": runs[w][0]["graphs"],
                       "epochs_s": [e for r in runs[w] for e in r["epochs"]],
                       "load": os.getloadavg()[0]}
                with open(args.json, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            print(f"{n:>8} {label:>5} {ep:>8.2f} {1e3 * ep / n:>9.3f} {cpu:>7.2f} "
                  f"{1e3 * cpu / n:>9.3f} {base / ep:>7.2f}x {lay:>6.0%} {fit:>7.1f} "
                  f"{os.getloadavg()[0]:>5.2f} {runs[w][0]['graphs']}", flush=True)


if __name__ == "__main__":
    main()

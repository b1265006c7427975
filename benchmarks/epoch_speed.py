"""Time of one HOST-CP selection epoch (layer solve, θ step, look-ahead φ step per minibatch)
on synthetic data of several sizes, for one or more wave sizes W (minibatches whose selection
problems are solved in one call), with the library's default thread settings; prints wall
and process-CPU seconds per epoch and per point, side by side, with the load average.

    python benchmarks/epoch_speed.py [--sizes 10000 100000] [--wave 1 8] [--device cpu]
        [--threads 1] [--layer-solver auto] [--epochs 1] [--rounds 1]

Waves alternate within a round (W=1, W=8, W=1, W=8, ... with --rounds 2), so machine noise
falls on both; the median over rounds is reported, and the ratio to the first --wave given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from hostcp_core import make_synthetic, split_test
from hostcp_core.hostcp import HostCP


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def one_epoch(train, valuation, wave, args) -> dict:
    """Fit with 1 warm-up epoch and ``args.epochs`` selection epochs; median epoch times."""
    _sync(args.device)
    t = time.perf_counter()
    res = HostCP(epochs=1 + args.epochs, warmup_epochs=1, device=args.device,
                 solver=args.solver, wave=wave, layer_solver=args.layer_solver,
                 num_threads=args.threads).fit(train, valuation)
    _sync(args.device)
    return {"epoch": statistics.median(res.timings["selection_epoch_s"]),
            "cpu": statistics.median(res.timings["selection_epoch_cpu_s"]),
            "layer": res.timings["layer_s"] / sum(res.timings["selection_epoch_s"]),
            "fit": time.perf_counter() - t, "wave": res.extra["wave"]}


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
    args = ap.parse_args(argv)
    waves = [w if w == "auto" else int(w) for w in args.wave]
    print(f"torch {torch.__version__}, device {args.device}, threads during fit: "
          f"{args.threads}, solver {args.solver}, layer_solver {args.layer_solver}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'n':>8} {'W':>5} {'epoch s':>8} {'ms/point':>9} {'cpu s':>7} {'cpu ms/pt':>9} "
          f"{'x vs W0':>8} {'layer':>6} {'fit s':>7} {'load':>5}")
    for n in args.sizes:
        train, test = make_synthetic(n, args.test_size, seed=0)
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
            print(f"{n:>8} {label:>5} {ep:>8.2f} {1e3 * ep / n:>9.3f} {cpu:>7.2f} "
                  f"{1e3 * cpu / n:>9.3f} {base / ep:>7.2f}x {lay:>6.0%} {fit:>7.1f} "
                  f"{os.getloadavg()[0]:>5.2f}", flush=True)


if __name__ == "__main__":
    main()

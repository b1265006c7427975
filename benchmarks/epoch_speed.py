"""Time of one HOST-CP selection epoch (layer solve, θ step, look-ahead φ step per minibatch)
on synthetic data of several sizes, with the default (native) solver; prints time per point.

    python benchmarks/epoch_speed.py [--sizes 2000 10000 50000] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from hostcp_core import make_synthetic, split_test
from hostcp_core.hostcp import HostCP


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 50000])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=2, help="selection epochs timed (after 1 "
                    "warm-up epoch); the median is reported")
    ap.add_argument("--solver", default="native")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, device {args.device}, threads during fit: 1 "
          f"(HostCP default), solver {args.solver}")
    print(f"{'n':>7} {'epoch s (median)':>17} {'ms/point':>9} {'layer share':>12} {'fit s':>7}")
    for n in args.sizes:
        train, test = make_synthetic(n, 2000, seed=0)
        valuation, _ = split_test(test, 0.3, seed=0)
        t = time.perf_counter()
        res = HostCP(epochs=1 + args.epochs, warmup_epochs=1, device=args.device,
                     solver=args.solver).fit(train, valuation)
        fit_s = time.perf_counter() - t
        epochs = sorted(res.timings["selection_epoch_s"])
        med = epochs[len(epochs) // 2]
        share = res.timings["layer_s"] / sum(epochs)
        print(f"{n:>7} {med:>17.2f} {1e3 * med / n:>9.3f} {share:>12.0%} {fit_s:>7.1f}",
              flush=True)


if __name__ == "__main__":
    main()

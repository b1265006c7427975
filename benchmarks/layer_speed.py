"""Speed of the selection layer: native batched Newton solver vs the cvxpylayers reference.

Forward+backward (gradient of a random linear loss on (u, Zn) w.r.t. Dn, Do) medians over a few
repeats after a warm-up, on clustered instances with exact distances, eps relative (normalised).

    python benchmarks/layer_speed.py [--device cpu|cuda|auto] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from hostcp_core.device import resolve_device
from hostcp_core.selection import normalize_distances, solve_selection
from hostcp_core.selection._reference import MAX_VARIABLES, n_variables
from hostcp_core.selection._static import implicit_vjp, solve_batch
from hostcp_core.selection.instances import clustered_distances


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    n: int,
    m: int,
    solver: str,
    device: torch.device,
    eps: float,
    fraction: float,
    batch: int | None,
    repeats: int,
    slow_s: float = 5.0,
) -> tuple[float, int]:
    """Median seconds of one forward+backward call (after one warm-up); and the repeats run."""
    times = []
    runs = repeats + 1
    i = 0
    while i < runs:
        Dn, Do = normalize_distances(
            *clustered_distances(n, m, batch=batch, seed=1000 * i + n + m, device=device)
        )
        Dn.requires_grad_(True)
        Do.requires_grad_(True)
        g = torch.Generator().manual_seed(i)
        wn = torch.randn(Dn.shape, generator=g, dtype=torch.float64).to(device)
        wu = torch.randn(Dn.shape[:-1], generator=g, dtype=torch.float64).to(device)
        _sync(device)
        t0 = time.perf_counter()
        out = solve_selection(Dn, Do, fraction * n, eps=eps, solver=solver)
        ((out.Zn * wn).sum() + (out.u * wu).sum()).backward()
        _sync(device)
        dt = time.perf_counter() - t0
        if i > 0:
            times.append(dt)
        elif dt > slow_s:  # a very slow configuration: one timed repeat is enough
            runs = 2
        i += 1
    return statistics.median(times), len(times)


def time_wave(
    n: int, m: int, mode: str, device: torch.device, eps: float, fraction: float, batch: int,
    repeats: int, dtype: torch.dtype,
) -> float:
    """Median seconds of one wave solve (selection._static.solve_batch, no autograd) plus its
    implicit backward for a batch of problems, as HostCP(wave=batch) runs it."""
    times = []
    for i in range(repeats + 1):
        Dn, Do = normalize_distances(
            *clustered_distances(n, m, batch=batch, seed=1000 * i + n + m, device=device)
        )
        Dn, Do = Dn.to(dtype), Do.to(dtype)
        K = torch.full((batch,), fraction * n, dtype=dtype, device=device)
        gu = torch.randn(batch, n, generator=torch.Generator().manual_seed(i),
                         dtype=torch.float64).to(device=device, dtype=dtype)
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        _sync(device)
        t0 = time.perf_counter()
        sol = solve_batch(Dn, Do, K, eps, tol=tol, mode=mode)
        implicit_vjp(sol.saved, eps, torch.zeros_like(sol.Zn), torch.zeros_like(sol.Zo), gu)
        _sync(device)
        if i > 0:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (native solver only)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave)")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", default="32,64,100", help="comma-separated n values")
    ap.add_argument("--olds", default="0,64,128,256", help="comma-separated m values")
    ap.add_argument("--max-cvx-vars", type=int, default=MAX_VARIABLES)
    ap.add_argument("--no-cvx", action="store_true", help="skip the cvxpylayers reference")
    ap.add_argument("--wave", type=int, default=16, help="problems per wave-solver call")
    ap.add_argument("--wave-mode", default="auto", help="static, adaptive or auto (static on "
                    "CUDA, adaptive on CPU)")
    args = ap.parse_args(argv)
    # cvxpylayers/diffcp trip NumPy 2's __array__ copy deprecation on every call
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ns = [int(x) for x in args.sizes.split(",")]
    ms = [int(x) for x in args.olds.split(",")]
    print(
        f"torch {torch.__version__}, device {device}, intra-op threads {torch.get_num_threads()}, "
        f"eps={args.eps}, fraction={args.fraction}, repeats={args.repeats} after 1 warm-up"
    )
    mode = args.wave_mode
    if mode == "auto":
        mode = "static" if device.type == "cuda" else "adaptive"
    header = (
        f"{'n':>4} {'m':>4} {'N vars':>7} | {'native ms':>9} {'iters':>5} | "
        f"{'B=' + str(args.batch) + ' ms/prob':>13} | "
        f"{'W=' + str(args.wave) + ' ' + mode + ' f64':>18} {'f32':>6} | "
        f"{'cvxpylayers ms':>14} | {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    notes = []
    for n in ns:
        for m in ms:
            N = n_variables(n, m)
            nat, _ = time_call(n, m, "native", device, args.eps, args.fraction, None, args.repeats)
            Dn, Do = normalize_distances(*clustered_distances(n, m, seed=n + m, device=device))
            iters = solve_selection(Dn, Do, args.fraction * n, eps=args.eps).iterations
            bat, _ = time_call(
                n, m, "native", device, args.eps, args.fraction, args.batch, args.repeats
            )
            w64, w32 = (
                time_wave(n, m, mode, device, args.eps, args.fraction, args.wave, args.repeats, dt)
                for dt in (torch.float64, torch.float32)
            )
            cvx_txt, ratio_txt = "skipped", "-"
            if args.no_cvx:
                notes.append(f"({n},{m}) cvxpylayers skipped: --no-cvx")
            elif N > args.max_cvx_vars:
                notes.append(
                    f"({n},{m}) cvxpylayers skipped: {N} variables > cap {args.max_cvx_vars} "
                    "(cvxpy canonicalisation of the quadratic needs O(N^2) memory)"
                )
            else:
                t0 = time.perf_counter()
                cvx, reps = time_call(
                    n, m, "cvxpylayers", torch.device("cpu"), args.eps, args.fraction, None,
                    args.repeats,
                )
                notes.append(
                    f"({n},{m}) cvxpylayers: {reps} timed repeat(s); build + all calls took "
                    f"{time.perf_counter() - t0:.1f} s"
                )
                cvx_txt, ratio_txt = f"{cvx * 1e3:.1f}", f"{cvx / nat:.0f}x"
            print(
                f"{n:>4} {m:>4} {N:>7} | {nat * 1e3:>9.2f} {iters:>5} | "
                f"{bat / args.batch * 1e3:>13.2f} | {w64 / args.wave * 1e3:>18.2f} "
                f"{w32 / args.wave * 1e3:>6.2f} | {cvx_txt:>14} | {ratio_txt:>7}",
                flush=True,
            )
    print("\nratio = cvxpylayers / native single-problem forward+backward (medians); W= columns: "
          "the wave solver (solve_batch + implicit backward) per problem, float64 and float32")
    for line in notes:
        print(line)


if __name__ == "__main__":
    main()

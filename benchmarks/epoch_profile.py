"""Where one HOST-CP selection epoch spends its time: a torch profile of the epoch after one
warm-up epoch, on synthetic data, printing the operators with the most host time, the number
of device kernels launched per minibatch and the device's busy time against the wall time.
On a GPU, host time far above device time means the step is bound by launching kernels.

    python benchmarks/epoch_profile.py [--size 10000] [--wave auto] [--device cuda] [--top 25]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from epoch_speed import synthetic  # benchmarks/, the script's directory, is on sys.path
from torch.profiler import ProfilerActivity, profile

from hostcp_core import split_test
from hostcp_core.hostcp import HostCP


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--wave", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    wave = args.wave if args.wave == "auto" else int(args.wave)
    train, test = synthetic(args.size, 2000, seed=0)
    valuation, _ = split_test(test, 0.3, seed=0)
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities)
    state = {"on": False, "t": 0.0}

    def progress(p):   # start profiling when the selection epoch (epoch 1) begins
        if p.epoch == 1 and not state["on"]:
            if cuda:
                torch.cuda.synchronize()
            prof.start()
            state.update(on=True, t=time.perf_counter())

    h = HostCP(epochs=2, warmup_epochs=1, device=args.device, wave=wave,
               num_threads=args.threads)
    res = h.fit(train, valuation, progress=progress)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - state["t"]
    prof.stop()
    minibatches = math.ceil(args.size / h.batch_size)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / 1e6
        print(f"n={args.size} W={res.extra['wave']}: {len(kernels)} device kernels and copies, "
              f"{len(kernels) / minibatches:.0f} per minibatch; device busy {busy:.3f} s of "
              f"{wall:.3f} s profiled wall ({busy / wall:.0%})")
    ops = sum(e.count for e in events if not e.key.startswith(("cuda", "Profiler")))
    print(f"n={args.size} W={res.extra['wave']}: {ops} host operator calls, "
          f"{ops / minibatches:.0f} per minibatch; profiled epoch {wall:.3f} s "
          f"(unprofiled epoch times: {res.timings['selection_epoch_s']})")


if __name__ == "__main__":
    main()

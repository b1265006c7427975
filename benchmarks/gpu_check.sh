#!/usr/bin/env bash
# Issue 12's GPU check, in one run (target: under 8 minutes on the H200 machine), with only the
# machine's own Python: torch, numpy, scipy, scikit-learn, pandas, pytest (no cvxpy, FastAPI,
# SQLAlchemy, Celery; nothing from the network). Steps, each under its own time limit:
#   1. the CUDA tests (pytest -m gpu) of the selection solver and of HOST-CP;
#   2. benchmarks/layer_speed.py --device cuda (the layer alone, per-problem and in waves);
#   3. benchmarks/epoch_speed.py --device cuda at 10k (W = 1 and larger W) and 100k points;
#   4. the same 10k epoch on one CPU thread of this machine (the GPU / CPU ratio);
#   5. one full default HOST-CP fit (wave "auto") on 1M synthetic points (its epochs are
#      printed as they end, so a fit cut by its limit still gives the epoch time);
# then prints one table. Logs and a JSON-lines file of the figures go to $GPU_CHECK_OUT
# (default /tmp/gpu_check).
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu    # CPU mode: the same steps at small sizes (a dry run
#                                         # of this script, ~5 minutes on 2 cores)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
OUT="${GPU_CHECK_OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT/figures.jsonl" "$OUT/steps.txt"
START=$(date +%s)

if [ "${1:-}" = "--cpu" ]; then
  DEV=cpu; SMALL=2000; BIG=6000; FULL=20000; WAVES="1 auto 16"; BIGWAVES="auto"
  TESTS=(tests/test_selection_native.py tests/test_hostcp.py -k "static or compact or padded or fixed_budget or wave")
  L_TEST=300; L_LAYER=120; L_EPOCH=240; L_CPU=120; L_FULL=300
else
  DEV=cuda; SMALL=10000; BIG=100000; FULL=1000000; WAVES="1 auto 16 64"; BIGWAVES="auto 64"
  TESTS=(tests/test_selection_native.py tests/test_hostcp.py -m gpu)
  L_TEST=90; L_LAYER=45; L_EPOCH=150; L_CPU=45; L_FULL=""   # the fit gets what is left of 8 min
fi

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUT/steps.txt"
}

$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/env.log"
step tests "$L_TEST" $PY -m pytest -q -x -p no:cacheprovider "${TESTS[@]}"
step layer "$L_LAYER" $PY benchmarks/layer_speed.py --device "$DEV" --sizes 64 --olds 40,128 \
  --no-cvx --repeats 3 --wave 16
# shellcheck disable=SC2086
step epoch_small "$L_EPOCH" $PY benchmarks/epoch_speed.py --device "$DEV" --sizes "$SMALL" \
  --wave $WAVES --json "$OUT/figures.jsonl"
# shellcheck disable=SC2086
step epoch_big "$L_EPOCH" $PY benchmarks/epoch_speed.py --device "$DEV" --sizes "$BIG" \
  --wave $BIGWAVES --json "$OUT/figures.jsonl"
step epoch_cpu1 "$L_CPU" $PY benchmarks/epoch_speed.py --device cpu --threads 1 \
  --sizes "$SMALL" --wave 1 auto --json "$OUT/figures.jsonl"
if [ -z "$L_FULL" ]; then L_FULL=$(( 470 - ($(date +%s) - START) )); fi
if [ "$L_FULL" -lt 30 ]; then L_FULL=30; fi
step full_fit "$L_FULL" $PY benchmarks/epoch_speed.py --full-fit --device "$DEV" \
  --sizes "$FULL" --wave auto --json "$OUT/figures.jsonl"

$PY - "$OUT" "$DEV" "$SMALL" "$BIG" "$FULL" "$START" <<'EOF'
import json, pathlib, re, sys, time
out, dev, small, big, full, start = sys.argv[1:7]
small, big, full = int(small), int(big), int(full)
out = pathlib.Path(out)
steps = dict(l.split(" ", 1) for l in (out / "steps.txt").read_text().splitlines())
figs = [json.loads(l) for l in (out / "figures.jsonl").read_text().splitlines()] \
    if (out / "figures.jsonl").exists() else []
def epoch(n, device, threads=None, wave=None):
    rows = [f for f in figs if not f.get("full_fit") and f["n"] == n and f["device"] == device
            and (threads is None or f["threads"] == threads)
            and (wave is None or str(f["wave_arg"]) == str(wave))]
    return rows
def cell(rows):
    return ", ".join(f"W={r['wave']}: {r['epoch_s']:.2f} s ({r['ms_per_point']:.3f} ms/pt)"
                     for r in rows) or "–"
tests = (out / "tests.log").read_text().strip().splitlines()
print()
print(f"| check ({dev}) | result |")
print("|---|---|")
print(f"| tests | {tests[-1] if tests else '–'} ({steps.get('tests', '?')}) |")
layer = [l for l in (out / "layer.log").read_text().splitlines() if re.match(r"\s+\d+\s+\d+", l)]
for l in layer:
    print(f"| layer n,m = {' '.join(l.split()[:2])} | {' '.join(l.split())} |")
print(f"| epoch {small} {dev} | {cell(epoch(small, dev, threads=None if dev == 'cuda' else 1))} |")
print(f"| epoch {big} {dev} | {cell(epoch(big, dev))} |")
cpu1 = epoch(small, "cpu", threads=1)
print(f"| epoch {small} cpu 1 thread | {cell(cpu1)} |")
gpu_auto = [r for r in epoch(small, dev) if str(r["wave_arg"]) == "auto"]
cpu_base = [r for r in cpu1 if str(r["wave_arg"]) == "1"]
cpu_auto = [r for r in cpu1 if str(r["wave_arg"]) == "auto"]
if gpu_auto and cpu_base:
    g = gpu_auto[-1]["epoch_s"]
    print(f"| {dev} (auto) vs 1 CPU thread at {small} | {cpu_base[-1]['epoch_s'] / g:.1f}x vs W=1, "
          + (f"{cpu_auto[-1]['epoch_s'] / g:.1f}x vs CPU W=auto |" if cpu_auto else "– |"))
small_auto = [r for r in epoch(small, dev) if str(r["wave_arg"]) == "auto"]
big_auto = [r for r in epoch(big, dev) if str(r["wave_arg"]) == "auto"]
if small_auto and big_auto:
    print(f"| ms/point {big} / {small} (auto) | "
          f"{big_auto[-1]['ms_per_point'] / small_auto[-1]['ms_per_point']:.2f} |")
ff = [f for f in figs if f.get("full_fit")]
if ff:
    f = ff[-1]
    print(f"| full default fit {full} (W={f['wave']}) | {f['total_s']:.1f} s = "
          f"{f['total_s'] / 60:.2f} min; epoch {f['epoch_s']:.2f} s |")
else:
    log = (out / "full_fit.log").read_text().splitlines()
    print(f"| full default fit {full} | not finished ({steps.get('full_fit', '?')}); last: "
          f"{log[-1] if log else '–'} |")
print(f"| whole check | {time.time() - float(start):.0f} s |")
EOF

#!/usr/bin/env bash
# Issue 12's GPU check, in one run (target: under 8.5 minutes on the H200 machine), with only
# the machine's own Python: torch, numpy, scipy, scikit-learn, pandas, pytest (no cvxpy,
# FastAPI, SQLAlchemy, Celery; nothing from the network). Steps, each under its own time limit:
#   0. in the background, on one CPU thread of the same machine: one epoch at 10k and at 100k
#      points, today's algorithm (W = 1) and the default (W = auto): the GPU / CPU ratios;
#   1. the CUDA tests (pytest -m gpu) of the selection solver, HOST-CP and its graphed waves;
#   2. benchmarks/epoch_speed.py --device cuda at 100k points (the default) and at 10k (the
#      default, W = 64, and W = 64 without CUDA graphs), the median of 3 selection epochs (the
#      first pays for capturing the graphs; every epoch's time is in the JSON);
#   3. one full default HOST-CP fit (wave "auto") on 1M synthetic points, with what is left of
#      the time (its epochs are printed as they end, so a fit cut by its limit still gives the
#      epoch time);
#   4. if time is left, a torch profile of one epoch at 10k (benchmarks/epoch_profile.py) and
#      benchmarks/layer_speed.py --device cuda (the layer alone);
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
  DEV=cpu; SMALL=2000; BIG=6000; FULL=20000; BUDGET=330; EPOCHS="--epochs 1"
  TESTS=(tests/test_selection_native.py tests/test_hostcp.py tests/test_theta_wave.py
         -k "static or compact or padded or fixed_budget or wave or range")
  L_TEST=300; L_EPOCH=150; L_CPU=150; L_CPU_BIG=150
else
  # 3 selection epochs, the median reported: the first one pays for capturing the CUDA graphs
  DEV=cuda; SMALL=10000; BIG=100000; FULL=1000000; BUDGET=500; EPOCHS="--epochs 3"
  TESTS=(tests/test_selection_native.py tests/test_hostcp.py tests/test_theta_wave.py -m gpu)
  L_TEST=120; L_EPOCH=100; L_CPU=120; L_CPU_BIG=330
fi

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUT/steps.txt"
}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/env.log"
# 0. one CPU thread, in the background (its own core; the GPU steps use one host thread)
( step epoch_cpu1_small "$L_CPU" $PY benchmarks/epoch_speed.py --device cpu --threads 1 \
    --sizes "$SMALL" --wave 1 auto --json "$OUT/cpu.jsonl"
  step epoch_cpu1_big "$L_CPU_BIG" $PY benchmarks/epoch_speed.py --device cpu --threads 1 \
    --sizes "$BIG" --wave 1 auto --json "$OUT/cpu.jsonl" ) &
CPU_JOB=$!
step tests "$L_TEST" $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}"
step epoch_big "$L_EPOCH" $PY benchmarks/epoch_speed.py --device "$DEV" --sizes "$BIG" $EPOCHS \
  --wave auto --json "$OUT/figures.jsonl"
step epoch_small "$L_EPOCH" $PY benchmarks/epoch_speed.py --device "$DEV" --sizes "$SMALL" $EPOCHS \
  --wave auto 64 --json "$OUT/figures.jsonl"
step epoch_small_nographs "$L_EPOCH" $PY benchmarks/epoch_speed.py --device "$DEV" $EPOCHS \
  --sizes "$SMALL" --wave 64 --no-cuda-graphs --json "$OUT/nographs.jsonl"
L_FULL=$(( $(left) - 45 )); if [ "$L_FULL" -lt 30 ]; then L_FULL=30; fi
step full_fit "$L_FULL" $PY benchmarks/epoch_speed.py --full-fit --device "$DEV" \
  --sizes "$FULL" --wave auto --json "$OUT/figures.jsonl"
if [ "$(left)" -ge 60 ]; then   # where a wave's time goes (for the next optimisation)
  step profile 40 $PY benchmarks/epoch_profile.py --device "$DEV" --size "$SMALL" --wave 64
fi
L_LAYER=$(( $(left) - 15 ))
if [ "$L_LAYER" -ge 20 ]; then
  step layer "$L_LAYER" $PY benchmarks/layer_speed.py --device "$DEV" --sizes 64 --olds 40,128 \
    --no-cvx --repeats 3 --wave 16
fi
wait "$CPU_JOB"
cat "$OUT/cpu.jsonl" >> "$OUT/figures.jsonl" 2>/dev/null
sed 's/^{/{"no_graphs": true, /' "$OUT/nographs.jsonl" >> "$OUT/figures.jsonl" 2>/dev/null

$PY - "$OUT" "$DEV" "$SMALL" "$BIG" "$FULL" "$START" <<'EOF'
import json, pathlib, re, sys, time
out, dev, small, big, full, start = sys.argv[1:7]
small, big, full = int(small), int(big), int(full)
out = pathlib.Path(out)
steps = dict(l.split(" ", 1) for l in (out / "steps.txt").read_text().splitlines())
figs = [json.loads(l) for l in (out / "figures.jsonl").read_text().splitlines()] \
    if (out / "figures.jsonl").exists() else []
def epoch(n, device, wave=None, graphs=True):
    return [f for f in figs if not f.get("full_fit") and f["n"] == n and f["device"] == device
            and (wave is None or str(f["wave_arg"]) == str(wave))
            and (device == "cpu" or graphs != bool(f.get("no_graphs")))]
def cell(rows):
    return ", ".join(f"W={r['wave']}: {r['epoch_s']:.2f} s ({r['ms_per_point']:.4f} ms/pt"
                     + (f", graphs {r['cuda_graphs']}" if r["device"] != "cpu" else "") + ")"
                     for r in rows) or "–"
def read(name):
    f = out / f"{name}.log"
    return f.read_text().strip().splitlines() if f.exists() else []
tests = read("tests")
print()
print(f"| check ({dev}) | result |")
print("|---|---|")
print(f"| tests | {tests[-1] if tests else '–'} ({steps.get('tests', '?')}) |")
for n in (small, big):
    print(f"| epoch {n} {dev} | {cell(epoch(n, dev))} |")
    if dev != "cpu" and epoch(n, dev, graphs=False):
        print(f"| epoch {n} {dev} without CUDA graphs | {cell(epoch(n, dev, graphs=False))} |")
    if dev != "cpu":
        print(f"| epoch {n} cpu, 1 thread | {cell(epoch(n, 'cpu'))} |")
        auto = epoch(n, dev, wave="auto")
        for w in ("1", "auto"):
            c = epoch(n, "cpu", wave=w)
            if auto and c:
                print(f"| {dev} (auto) vs 1 CPU thread (W={c[-1]['wave']}) at {n} | "
                      f"{c[-1]['epoch_s'] / auto[-1]['epoch_s']:.1f}x |")
small_auto, big_auto = epoch(small, dev, wave="auto"), epoch(big, dev, wave="auto")
if small_auto and big_auto:
    print(f"| ms/point {big} / {small} (auto) | "
          f"{big_auto[-1]['ms_per_point'] / small_auto[-1]['ms_per_point']:.2f} |")
ff = [f for f in figs if f.get("full_fit")]
if ff:
    f = ff[-1]
    print(f"| full default fit {full} (W={f['wave']}, graphs {f.get('cuda_graphs')}) | "
          f"{f['total_s']:.1f} s = {f['total_s'] / 60:.2f} min; epoch {f['epoch_s']:.2f} s |")
else:
    log = read("full_fit")
    print(f"| full default fit {full} | not finished ({steps.get('full_fit', '?')}); last: "
          f"{log[-1] if log else '–'} |")
for l in read("layer"):
    if re.match(r"\s+\d+\s+\d+", l):
        print(f"| layer n,m = {' '.join(l.split()[:2])} | {' '.join(l.split())} |")
print(f"| whole check | {time.time() - float(start):.0f} s |")
EOF

#!/usr/bin/env bash
# Every GPU figure in one run of at most 8 minutes on one H100 or H200, written to $OUT (a
# new temporary folder when unset; at most 8 files come back from a GPU machine without Ray, so there are 6):
#   nvidia-smi.txt     nvidia-smi before and after, clocks and power
#   env.json           device, torch, CUDA, cuDNN, datasheet peak, measured matmul and copy ceilings
#   train_gpu.jsonl    benchmarks/train_gpu.py, eye and hand models, eager then compiled variants
#   refine_gpu.jsonl   benchmarks/refine.py --gpu, eye refiner inference
#   summary.md         one table of all rows with % of peak, printed last
#   gpu-check.log      everything printed, with timestamps
# Each stage runs under `timeout`, capped by what is left of the budget (--budget, 450 s by default);
# the benchmarks also stop themselves before their stage's cap, cap each variant, and write every
# row as soon as it is measured: a stage cut short keeps what it measured, the next stage still runs.
# Pure torch: runs on a python that has torch and numpy but no Ray or pydantic.
#
#     scripts/gpu-check.sh [--peak-tflops N] [--budget S]                    # on the GPU machine, repo root
#     PYTHON=.venv/bin/python scripts/gpu-check.sh --quick --device cpu      # tiny sizes: checks the script
set -uo pipefail  # no -e: a failed stage is logged and the next one runs
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
DEVICE=cuda BUDGET=450 QUICK=() PEAK=()
while (($#)); do
  case $1 in
    --quick) QUICK=(--quick) ;;
    --device) DEVICE=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --peak-tflops) PEAK=(--peak-tflops "$2"); shift ;;
    *) echo "usage: $0 [--quick] [--device cuda|cpu] [--budget SECONDS] [--peak-tflops N]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log
START=$(date +%s)
FAILED=0
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

smi() {  # nvidia-smi's view of the card, appended to nvidia-smi.txt (read only: no setting is changed)
  { echo "== $1 $(date +%H:%M:%S)"
    if command -v nvidia-smi >/dev/null; then
      timeout 10 nvidia-smi
      timeout 10 nvidia-smi --format=csv --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,utilization.gpu
    else
      echo "nvidia-smi: not found"
    fi; } >>"$OUT/nvidia-smi.txt" 2>&1
}

# stage NAME CAP% RESERVE% COMMAND...: COMMAND --budget-s (its cap less 15 s) under `timeout`, for at most
# CAP% of the budget and at most what is left of it less RESERVE% (kept for the stages after it).
stage() {
  local name=$1 cap=$((BUDGET * $2 / 100)) reserve=$((BUDGET * $3 / 100)) rc
  shift 3
  local left=$((BUDGET - ($(date +%s) - START) - 15 - reserve))  # 15 s kept for the summary
  ((cap > left)) && cap=$left
  if ((cap < 30)); then
    log "$name: skipped, ${left}s of the budget left"
    return
  fi
  log "$name: start, cap ${cap}s: $* --budget-s $((cap - 15))"
  timeout -k 10 "$cap" "$@" --budget-s $((cap - 15)) 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  ((rc == 124 || rc == 137)) && log "$name: killed at its ${cap}s cap (rows measured before are kept)"
  ((rc)) && FAILED=$((FAILED + 1))
  log "$name: exit $rc, $(($(date +%s) - START))s since start"
}

log "gpu-check: OUT=$OUT, device $DEVICE, budget ${BUDGET}s, python $(command -v "$PYTHON")"
smi before
timeout 60 "$PYTHON" benchmarks/gpu_common.py env --out "$OUT" --device "$DEVICE" "${PEAK[@]}" 2>&1 | tee -a "$LOG"
((PIPESTATUS[0])) && FAILED=$((FAILED + 1))
# Training first (the step measured least), eager variants before compiled ones (the
# compilations are the risk); what a stage leaves unused goes to the next ones. Of 450 s: at most
# 130 s, then 238 s keeping 121 s, then all that is left.
stage train-eager 29 64 "$PYTHON" benchmarks/train_gpu.py --device "$DEVICE" --only eager \
  --json "$OUT/train_gpu.jsonl" --seconds 1.5 --variant-cap 60 "${QUICK[@]}" "${PEAK[@]}"
stage train-compiled 53 27 "$PYTHON" benchmarks/train_gpu.py --device "$DEVICE" --only compiled \
  --json "$OUT/train_gpu.jsonl" --seconds 1.5 --variant-cap 90 "${QUICK[@]}" "${PEAK[@]}"
stage refine 53 0 "$PYTHON" benchmarks/refine.py --gpu --device "$DEVICE" \
  --json "$OUT/refine_gpu.jsonl" --seconds 1.5 --variant-cap 45 "${QUICK[@]}" "${PEAK[@]}"
smi after
timeout 30 "$PYTHON" benchmarks/gpu_common.py summary --out "$OUT" 2>&1 | tee -a "$LOG"
((PIPESTATUS[0])) && FAILED=$((FAILED + 1))
log "gpu-check: done in $(($(date +%s) - START))s, $FAILED step(s) failed; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $((FAILED > 0))

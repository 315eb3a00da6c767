#!/usr/bin/env bash
# The digits benchmark end to end on a local Ray and local storage (CPU, ~10 minutes on 2 cores):
# simulate 20k font digits, fetch MNIST, make the real-data probe, train the refiner of
# jobs/digits-demo.yaml (samples.png / curves.png in its run), then a quick evaluation on MNIST val
# (1 classifier seed): the error of a classifier trained on raw vs refined synthetic digits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
[ -f data/digits/synthetic/manifest.json ] || simgan-ray simulate --count 20000 --shard-size 2500 --out data/digits/synthetic
[ -f data/digits/mnist/val/manifest.json ] || simgan-ray data fetch-mnist --out data/digits/mnist
[ -f runs/digits-probe/probe.json ] || simgan-ray probe --real-train data/digits/mnist/dev \
  --reference data/digits/mnist/real --out runs/digits-probe
name="digits-$(date +%Y%m%d-%H%M%S)"
precision=fp32  # bf16 autocast where the CPU computes bf16 natively (AVX512-BF16 / AMX): ~2x faster
grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null && precision=bf16
simgan-ray train --config jobs/digits-demo.yaml --name "$name" --set run.precision=$precision
simgan-ray evaluate --synthetic data/digits/synthetic --refiner "runs/$name" --real-train data/digits/mnist/dev \
  --real-test data/digits/mnist/val --real-pool data/digits/mnist/real --out "runs/$name/eval-val" \
  --seeds 1 --train-images 10000 --epochs 2

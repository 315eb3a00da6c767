#!/usr/bin/env bash
# The digits benchmark end to end on a local Ray and local storage (CPU, ~8 minutes on 2 cores):
# simulate 20k font digits, fetch MNIST, train the refiner, write samples.png / curves.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
[ -f data/digits/synthetic/manifest.json ] || simgan-ray simulate --count 20000 --shard-size 2500 --out data/digits/synthetic
[ -f data/digits/mnist/val/manifest.json ] || simgan-ray data fetch-mnist --out data/digits/mnist
simgan-ray train --config jobs/digits.yaml --name "digits-$(date +%Y%m%d-%H%M%S)"

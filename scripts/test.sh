#!/usr/bin/env bash
# Lint and the whole test suite (CPU only; starts its own local Ray and moto S3 servers). ~5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"

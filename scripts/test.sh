#!/usr/bin/env bash
# Lint and the whole test suite (CPU only; starts its own local Ray, moto S3 servers and, as root,
# SSH "machines" on loopback) in one pytest worker per core (pytest-xdist): README says how long on
# 2 cores, docs/install.md where the time goes.
# --quick: lint and the tests that start no Ray, server or process and fetch nothing
# (-m "not slow and not network"), in a few minutes. Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
xdist=(-n auto --dist worksteal)  # one pytest worker per core
if [ "${1:-}" = "--quick" ]; then
  shift
  exec .venv/bin/python -m pytest "${xdist[@]}" -m "not slow and not network" "$@"
fi
exec .venv/bin/python -m pytest "${xdist[@]}" "$@"

#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs simgan-ray with its extras from requirements.lock: every
# package at the version and hashes the lock names (scripts/lock.sh makes it), so every machine gets
# the same install; then torch (pinned in pyproject.toml, the one package whose build differs by
# machine: pip takes the CPU wheel on disk where there is one) and simgan-ray itself, editable.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet pip==26.3
.venv/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
# Resolves only what the lock leaves out (torch); all else is already there at the lock's versions.
.venv/bin/python -m pip install -qq --no-build-isolation -e .  # -qq: setuptools' editable-install notice
.venv/bin/python -m pip check >/dev/null

#!/usr/bin/env bash
# Rewrites requirements.lock from pyproject.toml: every package simgan-ray and its extras (test, aws,
# mlflow) install, each pinned to one version with the sha256 of its files, for CPython 3.11 on Linux
# x86_64; pip-tools' pip-compile resolves it through the package index and local wheels that pip on
# this machine is configured with. torch stays out: pyproject pins it exactly (==) and its build
# differs by machine (the CPU wheel here, a CUDA one in cluster/Dockerfile). The lock's last line
# stamps the dependency lists it was made from; tests/test_install.py fails when they changed since.
# Packages already in the lock keep their pins; `UPGRADE=name bash scripts/lock.sh` moves one (an upgrade
# is a change to test). Run it after any change to the dependencies in pyproject.toml, then run the
# tests and commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet pip==26.3 pip-tools==7.7.0
cp -r pyproject.toml README.md simgan_ray "$work/"
cp requirements.lock "$work/"  # pip-compile keeps the pins it finds there: only what changed moves
(cd "$work" && venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
  --no-emit-find-links --extra test --extra aws --extra mlflow --unsafe-package torch \
  ${UPGRADE:+--upgrade-package "$UPGRADE"} \
  --output-file requirements.lock pyproject.toml)
"$PYTHON" scripts/lockstamp.py "$work/requirements.lock" > requirements.lock
echo "requirements.lock: $(grep -c '^[a-z0-9]' requirements.lock) packages"

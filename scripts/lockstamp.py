"""requirements.lock's last step (scripts/lock.sh): pip-compile's output -> the committed lock.

Drops torch (pip-compile lists it among the "unsafe" packages: pyproject pins it exactly and its
build differs by machine), replaces pip-compile's header with where the lock comes from, and appends
the stamp of the dependency lists it was made from, which tests/test_install.py compares with
pyproject.toml's.

    python scripts/lockstamp.py COMPILED > requirements.lock
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = "# dependencies-sha256: "


def stamp(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """sha256 of pyproject's requires-python, dependencies and optional dependencies."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lists = {k: project.get(k) for k in ("requires-python", "dependencies", "optional-dependencies")}
    return hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()


def main(compiled: str) -> None:
    lines = Path(compiled).read_text().splitlines()
    body = lines[next(i for i, line in enumerate(lines) if line and not line.startswith("#")):]
    unsafe = next((i for i, line in enumerate(body) if line.startswith("# The following packages are considered")),
                  len(body))
    print("# Every package simgan-ray installs (extras test, aws, mlflow; torch apart, pinned in pyproject.toml),")
    print("# pinned with hashes, for CPython 3.11 on Linux x86_64. Made by scripts/lock.sh; do not edit.")
    print("#")
    print("\n".join(body[:unsafe]).rstrip())
    print()
    print(f"{STAMP}{stamp()}")


if __name__ == "__main__":
    main(sys.argv[1])

"""The documentation as a newcomer meets it: a README read in minutes, links that lead somewhere,
and words about the product only (not about how it was made)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# How the project was made is no part of it: issue numbers, machines lent for a while, "today".
FORBIDDEN = re.compile(r"\bissues? ?#?\d+|\blent\b|\btoday('s)?\b|\bend of a session\b|\ba session (later|after)\b",
                       re.IGNORECASE)


def project_files(*suffixes: str) -> list[Path]:
    """The project's own files: its folders and its top-level files (not the venv, data or runs)."""
    folders = ("simgan_ray", "tests", "docs", "benchmarks", "jobs", "cluster", "scripts", ".ci")
    files = [p for folder in folders for p in (ROOT / folder).rglob("*") if p.is_file()]
    files += [p for p in ROOT.iterdir() if p.is_file() and p.name != "requirements.lock"]
    return [p for p in files if p.name.endswith(suffixes) or p.parent.name == ".ci"]


def test_readme_is_short_and_points_to_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15_000, f"README.md is {len(readme.encode())} bytes: move depth to docs/"
    for page in ("results", "algorithm", "reliability", "storage", "config", "security"):
        assert f"docs/{page}.md" in readme


def test_every_relative_link_of_the_docs_leads_to_a_file():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: link to {target} leads nowhere"


def test_the_repository_speaks_of_the_product_only():
    for path in project_files(".md", ".py", ".yaml", ".yml", ".sh", ".toml", ".txt"):
        if path == Path(__file__):
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            assert not FORBIDDEN.search(line), f"{path.relative_to(ROOT)}:{n}: {line.strip()}"


def test_the_config_reference_is_the_configs_own_descriptions():
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)  # every field must have a description: rows() reads each
    assert reference.table() in (ROOT / "docs" / "config.md").read_text(), \
        "docs/config.md differs from the config's field descriptions: run scripts/config_reference.py"

"""The package's layout as docs/architecture.md draws it: folders in data-flow order, imports only
downward, every module in the module map, imports at the top but for the documented exceptions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "simgan_ray"
# The layers, lowest first: a module imports its own folder and the ones before it, never a later one.
LAYERS = ["common", "storage", "runtime", "sets", "model", "measures", "training", "apply", "sweeps", "cli"]


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def own_imports(tree: ast.AST) -> list[tuple[ast.ImportFrom | ast.Import, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("simgan_ray"):
            out.append((node, node.module))
        elif isinstance(node, ast.Import):
            out += [(node, a.name) for a in node.names if a.name.startswith("simgan_ray")]
    return out


def test_every_module_sits_in_a_layer_and_imports_only_downward():
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} == set(LAYERS)
    upward = []
    for path in modules():
        layer = LAYERS.index(path.relative_to(PACKAGE).parts[0])
        for node, name in own_imports(ast.parse(path.read_text())):
            parts = name.split(".")
            if len(parts) > 1 and parts[1] in LAYERS and LAYERS.index(parts[1]) > layer:
                upward.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not upward, "\n".join(upward)


def test_the_tests_mirror_the_layers():
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders and folders <= set(LAYERS)
    assert not [p.name for p in (ROOT / "tests").glob("test_*.py") if p.stem[5:] in LAYERS]


def test_the_module_map_lists_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    listed, folder = set(), None
    for row in re.findall(r"^\|\s*(`[a-z]+/`)?\s*\| ([^|]+) \|", page, re.M):
        folder = row[0].strip("`") or folder
        listed |= {folder + name for name in re.findall(r"`([a-z_]+\.py)`", row[1])}
    present = {str(p.relative_to(PACKAGE)) for p in modules() if p.name != "__init__.py"}
    assert listed == present


def test_own_modules_are_imported_at_the_top():
    # The exceptions, each said where it is: the CLI's commands import what they run in their bodies
    # (help without torch or Ray), and rayinternals imports Ray, so it is imported where used.
    inside = []
    for path in modules():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node, name in own_imports(fn):
                if path.parent.name == "cli" or "rayinternals" in ast.unparse(node):
                    continue
                inside.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name} inside {fn.name}")
    assert not inside, "\n".join(inside)

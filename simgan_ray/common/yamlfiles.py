"""YAML as users write it: config files, tune specs, refine jobs, cluster configs and `--set` values.

Strict where PyYAML is lenient: a key given twice in one mapping is refused (PyYAML keeps the last),
nesting beyond Python's stack is an error, and every error names the file and the place in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from simgan_ray.common.errors import SimganError, first_line


def parse_override(text: str) -> tuple[str, Any]:
    """'schedule.steps=20' -> ('schedule.steps', 20); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SimganError(f"override {text!r}: expected KEY=VALUE, e.g. schedule.steps=20")
    try:
        return key.strip(), load_yaml(value)
    except yaml.YAMLError as e:
        shown = text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"
        raise SimganError(f"override {shown!r}: the value is not YAML ({_yaml_problem(e)})") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message in one line: what went wrong and where (its own spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    what = getattr(error, "problem", None) or first_line(error)
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else what


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """YAML text -> its value, duplicate keys refused; nesting beyond Python's stack is a YAMLError."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deep") from None


def read_yaml(path: str | Path, what: str) -> dict:
    """The mapping in the YAML file at `path` ({} if empty); errors name the file and say what it
    should have been (`what`: "config file", "tune spec", ...)."""
    try:
        loaded = load_yaml(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SimganError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise SimganError(f"{path}: a directory, not a {what}") from None
    except OSError as e:
        raise SimganError(f"{path}: cannot read the {what} ({e.strerror or first_line(e)})") from None
    except UnicodeDecodeError as e:
        raise SimganError(f"{path}: not UTF-8 text (byte {e.start}), so not a {what}") from None
    except yaml.YAMLError as e:
        raise SimganError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise SimganError(f"{path}: expected a mapping at the top level ({what})")
    return loaded or {}

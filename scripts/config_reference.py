"""docs/config.md's table, made from the train config's own field descriptions (each field's
docstring in simgan_ray/training/config.py, networks.py and storage/locations.py): one row per field, in the
config's order, with its default. tests/test_docs.py fails when the page and the code differ.

    .venv/bin/python scripts/config_reference.py    # rewrites the table in docs/config.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simgan_ray.training.config import TrainConfig  # noqa: E402

PAGE = ROOT / "docs" / "config.md"
BEGIN = "<!-- the table below is made by scripts/config_reference.py from the fields' descriptions -->"
END = "<!-- end of the made table -->"


def rows() -> list[str]:
    schema = TrainConfig.model_json_schema()
    defs = schema["$defs"]
    out = []

    def walk(node: dict, prefix: str) -> None:
        for name, prop in node["properties"].items():
            ref = prop.get("$ref") or next((p["$ref"] for p in prop.get("allOf", []) if "$ref" in p), None)
            if ref:
                walk(defs[ref.rsplit("/", 1)[1]], f"{prefix}{name}.")
                continue
            default = json.dumps(prop.get("default")).strip('"')
            meaning = " ".join(prop["description"].split()).replace("|", "\\|")
            out.append(f"| `{prefix}{name}` | {default} | {meaning} |")

    walk(schema, "")
    return out


def table() -> str:
    return "\n".join([BEGIN, "", "| field | default | meaning |", "| --- | --- | --- |", *rows(), "", END])


def main() -> None:
    text = PAGE.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    PAGE.write_text(text[:start] + table() + text[end:])


if __name__ == "__main__":
    main()

"""docs/architecture.png: the data flow through the packages, from image sets on storage through Ray
Data and the training workers to the export, refine and evaluate.

    .venv/bin/python scripts/architecture_picture.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "architecture.png"

# (x, y) of each box's centre in axes units, its package and what it shows
BOXES = {
    "sim": (1.3, 5.0, "sets/", "simulate / ingest / MNIST\n-> Parquet shards + manifest"),
    "store": (4.6, 5.0, "storage/", "local, s3://, any fsspec\nclaims and records of outputs"),
    "stream": (4.6, 3.3, "sets/data", "Ray Data: one read task\nper shard, split per worker"),
    "workers": (8.1, 3.3, "training/worker", "N Ray Train workers (DDP):\nR, D, history shard, probe"),
    "driver": (8.1, 5.0, "training/train", "driver: preflight, TorchTrainer,\nreports, resume, export"),
    "ckpt": (11.4, 3.3, "training/checkpoints", "checkpoints (resume)\nmodel/export: refiner.pt/.onnx"),
    "refine": (11.4, 1.5, "apply/refine", "Ray Data job: every shard\nrefined, resumable"),
    "evaluate": (8.1, 1.5, "apply/evaluate", "classifiers on raw / refined /\nreal: report.md, errors.png"),
    "tune": (11.4, 5.0, "sweeps/tune", "Ray Tune: trials = train runs\nranked by the probe"),
}
ARROWS = [("sim", "store"), ("store", "stream"), ("stream", "workers"), ("driver", "workers"),
          ("workers", "ckpt"), ("ckpt", "refine"), ("ckpt", "evaluate"), ("tune", "driver"),
          ("refine", "evaluate")]


def main() -> None:
    fig, ax = plt.subplots(figsize=(12.5, 6))
    ax.set_xlim(-0.3, 13)
    ax.set_ylim(0.4, 6.1)
    ax.axis("off")
    w, h = 2.9, 1.15
    for x, y, package, text in BOXES.values():
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05", fc="#eef3fa",
                                    ec="#4c72b0", lw=1.4))
        ax.text(x, y + 0.3, package, ha="center", va="center", fontsize=10, weight="bold", family="monospace")
        ax.text(x, y - 0.15, text, ha="center", va="center", fontsize=8.5)
    for a, b in ARROWS:
        (xa, ya, *_), (xb, yb, *_) = BOXES[a], BOXES[b]
        # leave each box at the side facing the other
        dx, dy = xb - xa, yb - ya
        if abs(dx) > abs(dy):
            start, end = (xa + w / 2 * (1 if dx > 0 else -1), ya), (xb - w / 2 * (1 if dx > 0 else -1), yb)
        else:
            start, end = (xa, ya + h / 2 * (1 if dy > 0 else -1)), (xb, yb - h / 2 * (1 if dy > 0 else -1))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, lw=1.3, color="#333333"))
    ax.text(0.1, 0.55, "Below every package: common/ (errors, YAML, config base) and runtime/ (the Ray this process "
            "uses, cluster submission, rayinternals). cli/ is a thin shell over all of it.", fontsize=8.5,
            color="#444444")
    fig.tight_layout()
    fig.savefig(OUT, dpi=80)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

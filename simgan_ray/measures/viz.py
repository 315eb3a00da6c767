"""Pictures a person would rather look at than read: image grids and training curves."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from simgan_ray.sets import data, shards

LABEL_W = 90  # px column for row titles


def image_grid(rows: list[tuple[str, np.ndarray]], scale: int = 3) -> bytes:
    """rows: (title, uint8 (n, C, H, W)) each; -> PNG bytes, one titled row of tiles per entry."""
    n = max(len(images) for _, images in rows)
    h, w = rows[0][1].shape[2:4]
    th, tw, pad = h * scale, w * scale, 2
    canvas = Image.new("RGB", (LABEL_W + n * (tw + pad), len(rows) * (th + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (title, images) in enumerate(rows):
        y = r * (th + pad)
        draw.text((4, y + th // 2 - 6), title, fill="black")
        for i, img in enumerate(images):
            tile = shards.to_pil(img).convert("RGB")
            canvas.paste(tile.resize((tw, th), Image.NEAREST), (LABEL_W + i * (tw + pad), y))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def refinement_rows(synthetic: np.ndarray, refined: np.ndarray, real: np.ndarray | None = None) -> bytes:
    """The samples picture: synthetic, refined, |R(x) - x| (white = unchanged) and, when given, real
    images, each uint8 (n, C, H, W). -> PNG bytes."""
    change = np.abs(synthetic.astype(np.float32) - refined.astype(np.float32)) / 127.5  # in [0, 2]
    rows = [("synthetic", synthetic), ("refined", refined), ("|R(x) - x|", data.to_uint8(change - 1.0))]
    return image_grid(rows + ([("real", real)] if real is not None else []))


def plot_curves(metrics: list[dict]) -> bytes:
    """Training curves from the metric reports, phase boundaries marked. -> PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("losses", ["loss_r_reg", "loss_r_adv", "loss_d"]),
        ("discriminator accuracy", ["d_acc_real", "d_acc_refined"]),
        ("mean |R(x) - x| ([-1, 1] units)", ["mean_abs_change"]),
        ("throughput (images/s, all workers)", ["images_per_s"]),
        ("probe: label accuracy on refined", ["probe_label_acc", "probe_r_label_acc"]),
        ("probe: Frechet distance to real (lower = more real)", ["probe_fd", "probe_r_fd"]),
    ]
    # With a weight average kept, probe_* score the exported average and probe_r_* R itself.
    averaged = any("probe_r_fd" in m for m in metrics)
    names = {"probe_label_acc": "exported (R's weight average)", "probe_fd": "exported (R's weight average)",
             "probe_r_label_acc": "R (last iterate)", "probe_r_fd": "R (last iterate)"} if averaged else {}
    fig, axes = plt.subplots(2, 3, figsize=(16, 7))
    pairs = list(zip(metrics, metrics[1:], strict=False))
    # Last reported step of each phase (exact when phase lengths are multiples of report_every).
    boundaries = [a["step"] for a, m in pairs if a["phase"] != m["phase"]]
    # Steps the collapse guard rolled back to (the report before a rise in the rollback count).
    rollbacks = [a["step"] for a, m in pairs if m.get("rollbacks", 0) > a.get("rollbacks", 0)]
    for ax, (title, keys) in zip(axes.flat, panels, strict=True):
        for key in keys:
            pts = [(m["step"], m[key]) for m in metrics if key in m]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=names.get(key, key))
        for b in boundaries:
            ax.axvline(b, color="grey", linestyle=":", linewidth=1)
        for i, b in enumerate(rollbacks):
            ax.axvline(b, color="red", linestyle="--", linewidth=1, label="guard rollback" if i == 0 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def plot_errors(errors: dict, unit: str = "%", scale: float = 100.0) -> bytes:
    """Bar chart of real-test error per training source: mean with sd bars, one dot per seed; each
    value times `scale`, in `unit` (a fraction as %, or a regression error as it is)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(errors)
    fig, ax = plt.subplots(figsize=(6, 4))
    means = [scale * errors[n].mean for n in names]
    sds = [scale * errors[n].sd for n in names]
    ax.bar(names, means, yerr=sds, capsize=6, color=["#999999", "#4c72b0", "#55a868"][: len(names)])
    for i, n in enumerate(names):
        ax.scatter([i] * len(errors[n].runs), [scale * v for v in errors[n].runs], color="black", s=12,
                   zorder=3)
    ax.set_ylabel(f"error on the real test set ({unit})")
    ax.set_title("model trained on ...")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()

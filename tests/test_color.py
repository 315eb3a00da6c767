"""Colour, non-square images end to end (3 x 32 x 40, the simulator's "color" style): probe, train
with a probe and a history buffer, the export in every format, refine with PNG files, evaluate."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import simgan_ray as sg
from simgan_ray.sets import shards
from simgan_ray.sets.data import load_set
from simgan_ray.sets.simulate import STYLES, default_font_dirs, discover_fonts, render_range
from simgan_ray.training.tracking import read_events
from tests.conftest import write_set


def _real_look(images: np.ndarray) -> np.ndarray:
    """The 'real' domain of this test: paler colours and a brighter cast than the renders."""
    gray = images.astype(np.float32).mean(axis=1, keepdims=True)
    return np.clip(0.5 * images + 0.5 * gray + 25, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def color_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("color")
    fonts = discover_fonts(tuple(str(d) for d in default_font_dirs()))
    out = {}
    for name, seed, kind, labelled in (("synthetic", 0, "synthetic", True), ("real", 1, "real", False),
                                       ("dev", 2, "dev", True), ("val", 3, "val", True)):
        _, images, labels = render_range(0, 256, seed, fonts, "color")
        if name != "synthetic":
            images = _real_look(images)
        write_set(root / name, kind, images, labels if labelled else [None] * len(images), 64)
        out[name] = str(root / name)
    return out


def test_color_non_square_sets_train_refine_and_evaluate(ray_session, color_sets, tmp_path):
    assert shards.read_manifest(color_sets["synthetic"]).shape == [3, 32, 40] == list(STYLES["color"])
    probe = str(tmp_path / "probe")
    meta = sg.build_probe(sg.ProbeSpec(real_train=color_sets["dev"], reference=color_sets["real"], out=probe,
                                       train_images=256, epochs=1, reference_images=128))
    assert meta.channels == 3
    cfg = sg.load_config(None, {
        "refiner.channels": 3, "refiner.features": 8, "refiner.blocks": 1,
        "discriminator.channels": 3, "discriminator.widths": [8, 8, 8, 8],
        "data.synthetic": color_sets["synthetic"], "data.real": color_sets["real"],
        "run.storage": str(tmp_path / "runs"), "run.name": "rgb", "run.num_workers": 1, "batch_size": 8,
        "history_size": 32, "schedule.pretrain_refiner_steps": 2, "schedule.pretrain_discriminator_steps": 2,
        "schedule.steps": 4, "run.report_every": 2, "run.checkpoint_every": 4, "probe.uri": probe,
        "probe.images": 64, "schedule.ema_half_life": 2,
    })
    run = sg.fit(cfg)
    assert run.step == 8 and all(np.isfinite(m["probe_fd"]) for m in run.metrics)
    refiner, meta = sg.load_export(run.export_uri)
    assert meta["image_shape"] == [3, 32, 40]
    x = torch.rand(2, 3, 32, 40) * 2 - 1
    program = torch.export.load(f"{run.export_uri}/refiner.pt2").module()
    with torch.no_grad():
        assert (program(x) - refiner(x)).abs().max() <= 1e-5
    grid = Image.open(f"{run.run_uri}/samples/step-000008.png")
    assert grid.mode == "RGB" and sorted(read_events(run.run_uri)["samples"]) == [4, 8]

    out = tmp_path / "refined"
    summary = sg.run_refine(sg.RefineJob(model=run.run_uri, input=color_sets["synthetic"], output=str(out),
                                         format="png"))
    assert summary.rows_out == 256 and shards.read_manifest(str(out)).shape == [3, 32, 40]
    pngs = sorted(p for p in out.rglob("*.png"))
    assert len(pngs) == 256 and Image.open(pngs[0]).size == (40, 32) and Image.open(pngs[0]).mode == "RGB"
    written, _ = load_set(str(out), 8, cfg.data.s3, None)
    synthetic, _ = load_set(color_sets["synthetic"], 8, cfg.data.s3, None)
    assert np.array_equal(written, sg.refine_images(refiner, synthetic))

    report = sg.run_evaluation(sg.EvalConfig(
        synthetic=color_sets["synthetic"], real_train=color_sets["dev"], real_test=color_sets["val"],
        real_pool=color_sets["real"], out=str(tmp_path / "eval"), refiner=run.run_uri,
        seeds=1, train_images=256, test_images=128, epochs=1, batch_size=64))
    assert report.counts == {"synthetic": 256, "real_train": 256, "real_test": 128, "real_pool": 256}
    assert all(0 <= report.test_error[s].mean <= 1 for s in ("synthetic", "refined", "real"))
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["task"] == "classification"

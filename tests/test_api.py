"""The Python API (`import simgan_ray as sg`) as a notebook user calls it: config objects in,
result objects out, no CLI; on colour, non-square images (3 x 32 x 40, the simulator's "color" style)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import simgan_ray as sg
from simgan_ray.model.export import load_export
from simgan_ray.sets import data, shards
from simgan_ray.sets.simulate import STYLES, default_font_dirs, discover_fonts, render_range
from simgan_ray.training.tracking import read_events
from tests.conftest import small_run, write_set


def test_every_public_name_resolves_to_its_documented_object():
    from simgan_ray.apply import evaluate, refine
    from simgan_ray.training import config, train

    assert set(sg.__all__) == set(sg._API) and set(sg.__all__) <= set(dir(sg))
    assert (sg.fit, sg.run_refine, sg.run_evaluation) == (train.fit, refine.refine, evaluate.evaluate)
    assert (sg.TrainConfig, sg.load_export) == (config.TrainConfig, load_export)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        sg.nonsense  # noqa: B018


@pytest.mark.slow
def test_importing_the_package_imports_neither_torch_nor_ray():
    code = "import sys, simgan_ray; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


PORTABLE = """
import json, sys, torch
export, out = sys.argv[1], sys.argv[2]
x = torch.load(out + "/x.pt", weights_only=True)
extra = {"simgan_ray.json": ""}
scripted = torch.jit.load(export + "/refiner.torchscript.pt", _extra_files=extra)
program = torch.export.load(export + "/refiner.pt2").module()
with torch.no_grad():
    torch.save(scripted(x), out + "/y-torchscript.pt")
    torch.save(program(x), out + "/y-pt2.pt")
open(out + "/meta.json", "w").write(extra["simgan_ray.json"].decode())
import onnx
from onnx.reference import ReferenceEvaluator
model = onnx.load(export + "/refiner.onnx")
(y,) = ReferenceEvaluator(model).run(None, {"image": x.numpy()})
torch.save(torch.from_numpy(y), out + "/y-onnx.pt")
assert {p.key for p in model.metadata_props} == {"simgan_ray.json"}
assert not any(m.startswith("simgan_ray") for m in sys.modules), "imported simgan_ray"
"""


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


def test_probe_train_refine_evaluate_from_python(ray_session, color_sets, tmp_path):
    """Probe, train with the probe, a history buffer and an average of R, the export in every
    portable format, refine to PNG files, evaluate: one small run through every public call."""
    assert shards.read_manifest(color_sets["synthetic"]).shape == [3, 32, 40] == list(STYLES["color"])
    probe = str(tmp_path / "probe")
    built = sg.build_probe(sg.ProbeSpec(real_train=color_sets["dev"], reference=color_sets["real"], out=probe,
                                        train_images=256, epochs=1, reference_images=128))
    assert built.channels == 3
    cfg = sg.load_config(None, small_run(color_sets, tmp_path / "runs", "nb", **{
        "refiner.channels": 3, "discriminator.channels": 3, "history_size": 32, "schedule.steps": 4,
        "run.report_every": 2, "run.checkpoint_every": 4, "probe.uri": probe, "probe.images": 64,
        "schedule.ema_half_life": 2, "run.portable_export": True,
        "refiner.dilation": 2,  # dilated convs in every portable format too
    }))
    assert isinstance(cfg, sg.TrainConfig)
    run = sg.fit(cfg)
    assert isinstance(run, sg.FitResult) and run.step == 8 and run.metrics[-1]["step"] == 8
    assert all(np.isfinite(m["probe_fd"]) for m in run.metrics)
    grid = Image.open(f"{run.run_uri}/samples/step-000008.png")
    assert grid.mode == "RGB" and sorted(read_events(run.run_uri)["samples"]) == [4, 8]

    refiner, meta = sg.load_export(run.export_uri)
    images, _ = data.load_set(color_sets["synthetic"], 16, cfg.data.s3, None)
    refined = sg.refine_images(refiner, images)
    assert refined.shape == images.shape and refined.dtype == np.uint8
    assert meta["step"] == 8 and meta["image_shape"] == [3, 32, 40]
    assert meta["refiner"]["dilation"] == 2 and refiner.blocks[0].body[0].dilation == (2, 2)

    # The same refiner as TorchScript, torch.export and ONNX, in a process that never imports simgan_ray.
    x = torch.rand(5, 3, 32, 40) * 2 - 1
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", PORTABLE, run.export_uri, str(tmp_path)], check=True, cwd=tmp_path)
    with torch.no_grad():
        want = refiner(x)
    for name in ("torchscript", "pt2", "onnx"):
        out = torch.load(tmp_path / f"y-{name}.pt", weights_only=True)
        # float32 rounding only: another process may sum a convolution's terms in another order (seen: 2.5e-5)
        assert (out - want).abs().max().item() <= 1e-4, name
    assert json.loads((tmp_path / "meta.json").read_text())["pixels"]["input"].startswith("float32 (N, C, H, W) in [-1")

    out = tmp_path / "refined"
    job = sg.RefineJob(model=run.run_uri, input=color_sets["synthetic"], output=str(out), format="png")
    summary = sg.run_refine(job)
    assert isinstance(summary, sg.RefineSummary) and summary.rows_out == 256
    assert shards.read_manifest(str(out)).shape == [3, 32, 40]
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 256 and Image.open(pngs[0]).size == (40, 32) and Image.open(pngs[0]).mode == "RGB"
    written, _ = data.load_set(str(out), 16, cfg.data.s3, None)
    assert np.array_equal(written, refined)  # the job and the in-memory call agree

    report = sg.run_evaluation(sg.EvalConfig(
        synthetic=color_sets["synthetic"], real_train=color_sets["dev"], real_test=color_sets["val"],
        real_pool=color_sets["real"], out=str(tmp_path / "eval"), refiner=run.run_uri,
        seeds=1, train_images=256, test_images=128, epochs=1, batch_size=64))
    assert isinstance(report, sg.EvalReport) and report.reported_on == sg.ReportedOn(kind="val", final=False)
    assert report.counts == {"synthetic": 256, "real_train": 256, "real_test": 128, "real_pool": 256}
    assert (tmp_path / "eval" / "curves.png").read_bytes()[:4] == b"\x89PNG"  # the run's curves, beside the report
    with pytest.raises(sg.SimganError, match="already holds a simgan-ray training run"):
        sg.fit(cfg)

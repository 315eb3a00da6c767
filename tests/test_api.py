"""The Python API (`import simgan_ray as sg`) as a notebook user calls it: config objects in,
result objects out, no CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import simgan_ray as sg
from simgan_ray.model.export import load_export
from simgan_ray.sets import data
from tests.conftest import small_run


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


def test_train_refine_evaluate_from_python(ray_session, digit_sets, labelled_real_sets, tmp_path):
    cfg = sg.load_config(None, small_run(digit_sets, tmp_path, "nb", **{
        "schedule.steps": 4, "run.portable_export": True,
        "refiner.dilation": 2,  # dilated convs in every portable format too
    }))
    assert isinstance(cfg, sg.TrainConfig)
    run = sg.fit(cfg)
    assert isinstance(run, sg.FitResult) and run.step == 8 and run.metrics[-1]["step"] == 8

    refiner, meta = sg.load_export(run.export_uri)
    images, _ = data.load_set(digit_sets["synthetic"], 16, cfg.data.s3, None)
    refined = sg.refine_images(refiner, images)
    assert refined.shape == images.shape and refined.dtype == np.uint8 and meta["step"] == 8
    assert meta["refiner"]["dilation"] == 2 and refiner.blocks[0].body[0].dilation == (2, 2)

    # The same refiner as TorchScript, torch.export and ONNX, in a process that never imports simgan_ray.
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", PORTABLE, run.export_uri, str(tmp_path)], check=True, cwd=tmp_path)
    with torch.no_grad():
        want = refiner(x)
    for name in ("torchscript", "pt2", "onnx"):
        out = torch.load(tmp_path / f"y-{name}.pt", weights_only=True)
        assert (out - want).abs().max().item() <= 1e-5, name
    assert json.loads((tmp_path / "meta.json").read_text())["pixels"]["input"].startswith("float32 (N, C, H, W) in [-1")

    job = sg.RefineJob(model=run.run_uri, input=digit_sets["synthetic"], output=str(tmp_path / "out"))
    summary = sg.run_refine(job)
    assert isinstance(summary, sg.RefineSummary) and summary.rows_out == 256
    written, _ = data.load_set(str(tmp_path / "out"), 16, cfg.data.s3, None)
    assert np.array_equal(written, refined)  # the job and the in-memory call agree

    report = sg.run_evaluation(sg.EvalConfig(
        synthetic=digit_sets["synthetic"], real_train=labelled_real_sets["dev"], real_test=labelled_real_sets["val"],
        real_pool=digit_sets["real"], out=str(tmp_path / "eval"), refiner=run.run_uri,
        seeds=1, train_images=64, test_images=50, epochs=1, batch_size=32))
    assert isinstance(report, sg.EvalReport) and report.reported_on == sg.ReportedOn(kind="val", final=False)
    assert (tmp_path / "eval" / "curves.png").read_bytes()[:4] == b"\x89PNG"  # the run's curves, beside the report
    with pytest.raises(sg.SimganError, match="already holds a simgan-ray training run"):
        sg.fit(cfg)

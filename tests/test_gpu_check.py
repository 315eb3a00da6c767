"""scripts/gpu-check.sh on this CPU with --quick, as a GPU machine without Ray would run it: no
Ray, no pydantic. Plus the pieces of benchmarks/gpu_common.py that the quick run cannot show."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_common import OverTime, PaddedRefiner, time_cap  # noqa: E402

from simgan_ray.model.networks import Refiner, RefinerConfig  # noqa: E402

# The project's dependencies that a GPU machine's own python lacks (it has torch, numpy, pyarrow,
# PyYAML, Pillow, matplotlib): importing any of them there fails, so it fails here too.
ABSENT_THERE = ("ray", "pydantic", "pydantic_core", "s3fs", "jsonschema", "moto")


@pytest.mark.slow  # the benchmark scripts, in subprocesses
def test_gpu_check_quick_runs_every_variant_without_ray_or_pydantic(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({ABSENT_THERE!r}))\n")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    run = subprocess.run(["bash", "scripts/gpu-check.sh", "--quick", "--device", "cpu"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # What comes back from a GPU machine: at most 8 plain files, 16 MiB each, plain names.
    files = sorted(p.name for p in out.iterdir())
    assert files == ["env.json", "gpu-check.log", "nvidia-smi.txt", "refine_gpu.jsonl", "summary.md", "train_gpu.jsonl"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) and (out / f).stat().st_size < 16 << 20 for f in files)

    import refine
    import train_gpu

    train = [json.loads(line) for line in (out / "train_gpu.jsonl").read_text().splitlines()]
    assert [r["error"] for r in train if r["error"]] == []
    measured = {(r["model"], r["variant"], r["loop"]) for r in train if r["images_per_s"] > 0}
    expected = {(m, v.name, loop) for v in train_gpu.VARIANTS for m in ("eye", "hand")
                for loop in ("refiner f+b",) + (() if v.trunk else ("SimGAN step",))}
    assert measured == expected
    infer = [json.loads(line) for line in (out / "refine_gpu.jsonl").read_text().splitlines()]
    assert {r["error"] for r in infer if r["error"]} == {"skipped: CUDA graphs need CUDA"}
    assert {(r["variant"], r["batch"]) for r in infer if not r["error"]} == {
        (v.name, b) for v in refine.INFERENCE for b in (4, 2) if not v.graph}
    summary = (out / "summary.md").read_text()
    assert summary.count("| train_gpu |") == len(train) and summary.count("| refine_gpu |") == len(infer)
    assert "0 step(s) failed" in (out / "gpu-check.log").read_text()
    assert json.loads((out / "env.json").read_text())["h2d_eye_images_per_s"] is None
    assert "host to device, eye uint8 chunks of 512, images/s on one thread: not measured (no GPU)" in summary
    print(f"gpu-check --quick: {time.monotonic() - t0:.0f} s")


def test_padded_refiner_is_the_same_function_and_keeps_its_padding_zero():
    torch.manual_seed(0)
    refiner = Refiner(RefinerConfig(features=8, blocks=1))
    padded = PaddedRefiner(refiner, 8)
    x = torch.rand(3, 1, 12, 10) * 2 - 1
    y, y_padded = refiner(x), padded(x)
    torch.testing.assert_close(y_padded, y)
    y.square().sum().backward()
    y_padded.square().sum().backward()
    stem, head = padded.inner.stem[0], padded.inner.head
    torch.testing.assert_close(stem.weight.grad[:, :1], refiner.stem[0].weight.grad)
    torch.testing.assert_close(head.weight.grad[:1], refiner.head.weight.grad)
    # Zero gradients on the padding: Adam leaves those weights at zero, so training stays equivalent.
    assert not stem.weight.grad[:, 1:].any() and not head.weight.grad[1:].any() and not head.bias.grad[1:].any()


def test_time_cap_stops_a_long_python_loop():
    t0 = time.monotonic()
    with pytest.raises(OverTime), time_cap(0.2):
        while True:
            pass
    assert time.monotonic() - t0 < 2
    with time_cap(5):  # a block that ends in time leaves no alarm behind
        pass
    time.sleep(0.1)

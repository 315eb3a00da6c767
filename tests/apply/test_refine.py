"""Batch refinement against a moto S3 server: rows, ids, labels, provenance, resumption."""

import hashlib
import io
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from simgan_ray import storage
from simgan_ray.apply.refine import RefineJob, load_refine_job, refine
from simgan_ray.common.errors import SimganError
from simgan_ray.model.export import EXPORT_FORMAT, write_export
from simgan_ray.model.networks import Refiner, RefinerConfig
from simgan_ray.sets import data, shards
from simgan_ray.sets.simulate import simulate
from simgan_ray.storage import S3Options, ownership
from tests.conftest import BIN, kill_session


@pytest.fixture(scope="module")
def setup(ray_session, s3_server, tmp_path_factory):
    """300 synthetic digits in 30 shards on S3, and a refiner export (random weights: not identity)."""
    s3 = S3Options(endpoint_url=s3_server.endpoint)
    bucket = s3_server.make_bucket("simgan-refine")
    simulate(f"{bucket}/synthetic", count=300, shard_size=10, seed=11, s3=s3)
    torch.manual_seed(0)
    export = tmp_path_factory.mktemp("export")
    write_export(export, Refiner(RefinerConfig(features=8, blocks=1)),
                             {"step": 0, "image_shape": [1, 28, 28]})
    storage.copy_dir_to(str(export), f"{bucket}/model/export", s3)
    return {"s3": s3, "bucket": bucket, "model": f"{bucket}/model", "endpoint": s3_server.endpoint,
            "tmp": tmp_path_factory.mktemp("jobs")}


def read_set(prefix: str, s3: S3Options, extra=("label", "source_shard", "model")) -> dict:
    """id -> (sha256 of the PNG, *extra columns) over a whole image set."""
    manifest = shards.read_manifest(prefix, s3)
    rows = {}
    for uri in shards.shard_uris(prefix, manifest):
        fs, path = storage.resolve(uri, s3)
        t = pq.read_table(path, filesystem=fs)
        for image_id, image, *rest in zip(*(t[c].to_pylist() for c in ("id", "image", *extra)), strict=True):
            rows[image_id] = (hashlib.sha256(image).hexdigest(), *rest)
    return rows


def test_refine_keeps_rows_ids_labels_and_changes_images(setup):
    s3, bucket = setup["s3"], setup["bucket"]
    summary = refine(RefineJob(model=setup["model"], input=f"{bucket}/synthetic", output=f"{bucket}/refined",
                               batch_size=32, format="png", s3=s3))
    assert (summary.rows_in, summary.rows_out, summary.shards_done) == (300, 300, 30)
    assert summary.skipped_images == [] and summary.images_per_s > 0
    out = read_set(f"{bucket}/refined", s3)
    src = read_set(f"{bucket}/synthetic", s3, extra=("label",))
    assert set(out) == set(src)
    for image_id, (digest, label, source_shard, model) in out.items():
        assert label == src[image_id][1]  # annotation unchanged
        assert digest != src[image_id][0]  # the refiner changed the image
        assert source_shard.startswith("shard-") and len(model) == 16
    manifest = shards.read_manifest(f"{bucket}/refined", s3)
    assert manifest.kind == "refined" and manifest.source["rows_in"] == manifest.count == 300
    labels = [json.loads(x) for x in storage.read_bytes(f"{bucket}/refined/labels.jsonl", s3).splitlines()]
    assert len(labels) == 300 and {"id", "file", "label"} <= set(labels[0])
    png = storage.read_bytes(f"{bucket}/refined/{labels[0]['file']}", s3)
    assert png[:4] == b"\x89PNG"

    again = refine(RefineJob(model=setup["model"], input=f"{bucket}/synthetic", output=f"{bucket}/refined",
                             batch_size=32, format="png", s3=s3))
    assert again.shards_done == 0 and again.shards_skipped == 30 and again.rows_out == 300


def test_refine_writes_raw_shards_and_a_raw_input_stays_raw(setup):
    s3, bucket = setup["s3"], setup["bucket"]
    refine(RefineJob(model=setup["model"], input=f"{bucket}/synthetic", output=f"{bucket}/refined-raw",
                     batch_size=32, format="png", encoding="raw", s3=s3))
    manifest = shards.read_manifest(f"{bucket}/refined-raw", s3)
    assert manifest.encoding == "raw" and manifest.count == 300
    ids, images, _ = data.head_images(f"{bucket}/refined-raw", manifest, 300, s3)
    # The PNG files of --format png hold the same pixels as the raw shards.
    for line in storage.read_bytes(f"{bucket}/refined-raw/labels.jsonl", s3).splitlines()[:5]:
        row = json.loads(line)
        png = shards.decode_png(storage.read_bytes(f"{bucket}/refined-raw/{row['file']}", s3))
        assert np.array_equal(png, images[ids.index(row["id"])])
    again = refine(RefineJob(model=setup["model"], input=f"{bucket}/refined-raw", output=f"{bucket}/twice",
                             batch_size=32, s3=s3))
    assert again.rows_out == 300 and shards.read_manifest(f"{bucket}/twice", s3).encoding == "raw"


def test_interrupted_job_resumes_to_the_same_output(setup, joined_ray):
    """Kill the CLI job (and its local Ray) after some shards are committed; rerun (on the session's
    Ray); compare with an uninterrupted run, row by row and image hash by image hash."""
    s3, bucket = setup["s3"], setup["bucket"]
    reference = refine(RefineJob(model=setup["model"], input=f"{bucket}/synthetic", output=f"{bucket}/ref2",
                                 batch_size=32, s3=s3))
    assert reference.rows_out == 300
    spec = setup["tmp"] / "job.yaml"  # a job file (jobs/refine-1m.yaml style) plus CLI options
    spec.write_text(yaml.safe_dump({"model": setup["model"], "input": f"{bucket}/synthetic", "batch_size": 32,
                                    "output": "overridden below"}))
    args = [str(BIN), "refine", "--config", str(spec), "--output", f"{bucket}/interrupted",
            "--s3-endpoint", setup["endpoint"]]
    # A session of its own, so that the kill takes every process of the local Ray it starts.
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fs, _ = storage.resolve(bucket, s3)
    deadline = time.monotonic() + 180
    done = 0
    while time.monotonic() < deadline:
        info = fs.get_file_info(pafs_selector("simgan-refine/interrupted/_done"))
        done = len(info)
        if done >= 2 or proc.poll() is not None:
            break
        time.sleep(0.1)
    kill_session(proc)
    assert 2 <= done < 30, done  # killed part-way
    assert not storage.exists(f"{bucket}/interrupted/manifest.json", s3)

    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, **joined_ray})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "already done" in out.stdout  # the result, on stdout
    assert read_set(f"{bucket}/interrupted", s3) == read_set(f"{bucket}/ref2", s3)


def pafs_selector(path):
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, allow_not_found=True)


def test_bad_inputs_are_refused_before_anything_is_written(setup, tmp_path):
    s3, bucket = setup["s3"], setup["bucket"]
    base = {"input": f"{bucket}/synthetic", "s3": s3}
    with pytest.raises(SimganError, match="not a training run or a refiner export"):
        refine(RefineJob(model=f"{bucket}/nothing", output=f"{bucket}/o1", **base))
    assert not storage.exists(f"{bucket}/o1", s3)
    # A pickle posing as weights is refused by torch.load(weights_only=True).
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "refiner.json").write_text(json.dumps({"format": EXPORT_FORMAT,
                                                   "refiner": RefinerConfig(features=8, blocks=1).to_dict()}))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    (fake / "refiner.pt").write_bytes(buf.getvalue())
    with pytest.raises(SimganError, match="not a simgan-ray tensor file"):
        refine(RefineJob(model=str(fake), output=str(tmp_path / "o2"), **base))
    # Channels that do not match the refiner.
    rgb = tmp_path / "rgb"
    write_export(rgb, Refiner(RefinerConfig(channels=3, features=4, blocks=1)),
                             {"image_shape": [3, 28, 28]})
    with pytest.raises(SimganError, match="images are 1x28x28 .* trained on 3x28x28"):
        refine(RefineJob(model=str(rgb), output=str(tmp_path / "o3"), **base))
    # Output inside the input, and an output that holds another job's result.
    with pytest.raises(SimganError, match="overlaps --input"):
        refine(RefineJob(model=setup["model"], output=f"{bucket}/synthetic/refined", **base))
    with ownership.claimed(f"{bucket}/other", "refine", s3, identity={"input": "s3://x/y", "model": "0" * 16}) as other:
        other.write({"manifest.json": b"{}"})
    with pytest.raises(SimganError, match=r"other already holds the output of an earlier `simgan-ray refine`: it is "
                                          r"another refinement job's output \(input, model, png differ\); pass "
                                          "--overwrite"):
        refine(RefineJob(model=setup["model"], output=f"{bucket}/other", **base))


def test_refine_job_file_resolves_defaults_file_then_options(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model: runs/x\ninput: s3://b/in\noutput: s3://b/out\nbatch_size: 64\n")
    job = load_refine_job(path, {"batch_size": 16, "format": "png"})
    assert (job.batch_size, job.format, job.concurrency) == (16, "png", 1)  # option > file > default
    assert job.model == str(Path("runs/x").resolve()) and job.input == "s3://b/in"
    path.write_text("model: runs/x\ninput: s3://b/in\noutput: s3://b/out\nbatch_sise: 64\n")
    with pytest.raises(SimganError, match=r"job.yaml: batch_sise: Extra inputs are not permitted"):
        load_refine_job(path, {})
    with pytest.raises(SimganError, match=r"refine options: model: .*required"):
        load_refine_job(None, {"input": "a", "output": "b"})

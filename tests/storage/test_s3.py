"""Object storage for real: a moto S3 server on loopback, simulate -> ingest -> 2-worker training
with data and checkpoints in the bucket, everything read back from the bucket."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.model.export import load_export
from simgan_ray.sets import shards
from simgan_ray.sets.data import check_training_sets, head_images
from simgan_ray.sets.ingest import Target, ingest
from simgan_ray.sets.simulate import simulate
from simgan_ray.storage import S3Options
from simgan_ray.training.config import load_config
from simgan_ray.training.tracking import read_events
from simgan_ray.training.train import fit
from tests.conftest import TINY, UserFiles, image_bytes
from tests.s3server import FAKE_CREDENTIALS, MotoServer


def test_simulate_ingest_train_on_s3(ray_session, s3_server, tmp_path):
    s3 = S3Options(endpoint_url=s3_server.endpoint)
    bucket = s3_server.make_bucket("simgan-e2e")

    syn = simulate(f"{bucket}/synthetic", count=256, shard_size=64, seed=3, s3=s3)
    assert syn.count == 256 and len(syn.shards) == 4

    # Real images: 40 files of assorted sizes uploaded to the bucket, plus one corrupt object.
    rng = np.random.default_rng(0)
    for i in range(40):
        w, h = (int(v) for v in rng.integers(20, 80, 2))
        storage.write_bytes(f"{bucket}/photos/img{i:03d}.png", image_bytes(w, h, value=int(rng.integers(50, 250))), s3)
    storage.write_bytes(f"{bucket}/photos/corrupt.png", b"\x89PNG\r\n\x1a\n garbage", s3)
    real = ingest(f"{bucket}/photos", f"{bucket}/real", Target(28, 28, 1, "crop"), shard_size=16, s3=s3)
    assert real.count == 40 and real.source["skipped"] == 1
    assert real.source["skipped_files"][0].startswith(f"{bucket}/photos/corrupt.png")

    cfg = load_config(None, {
        **TINY,
        "data.synthetic": f"{bucket}/synthetic", "data.real": f"{bucket}/real",
        "data.s3.endpoint_url": s3_server.endpoint, "data.local_shuffle_buffer": 16,
        "run.storage": f"{bucket}/runs", "run.name": "s3run", "run.num_workers": 2,
        "run.report_every": 4, "run.checkpoint_every": 4, "run.keep_checkpoints": 2,
        "batch_size": 8, "history_size": 32,
        "schedule.pretrain_refiner_steps": 4, "schedule.pretrain_discriminator_steps": 2, "schedule.steps": 6,
    })
    result = fit(cfg)
    assert result.step == 12 and result.skipped == []
    assert result.run_uri == f"{bucket}/runs/s3run"

    # Everything is in the bucket: checkpoints (the last 2 kept), export, pictures, metrics.
    fs, _ = storage.resolve(bucket, s3)
    names = [i.path for i in fs.get_file_info(pafs.FileSelector("simgan-e2e/runs/s3run", recursive=True))]
    ckpt_dirs = sorted({n.split("/")[3] for n in names if n.split("/")[3].startswith("checkpoint_2")})
    assert len(ckpt_dirs) == 2
    latest = f"{bucket}/runs/s3run/{ckpt_dirs[-1]}"
    state = torch.load(io.BytesIO(storage.read_bytes(f"{latest}/state.pt", s3)), weights_only=True)
    assert state["step"] == 12
    for rank in (0, 1):
        shard = torch.load(io.BytesIO(storage.read_bytes(f"{latest}/history-rank{rank:05d}.pt", s3)),
                           weights_only=True)
        assert shard["history"]["capacity"] == 16 and len(shard["history"]["images"]) > 0
    refiner, meta = load_export(f"{bucket}/runs/s3run/export", s3)
    assert meta["step"] == 12
    metrics = [json.loads(x) for x in storage.read_bytes(f"{bucket}/runs/s3run/metrics.jsonl", s3).splitlines()]
    assert [m["step"] for m in metrics] == [4, 8, 12]
    assert all(m["worker_peak_rss_mb"] > 0 for m in metrics)
    for picture in ("samples.png", "curves.png"):
        assert storage.read_bytes(f"{bucket}/runs/s3run/{picture}", s3)[:4] == b"\x89PNG"
    # The live record, in the bucket too: TensorBoard events and a sample grid per checkpoint.
    events = read_events(f"{bucket}/runs/s3run", s3)
    assert sorted(events["images_per_s"]) == [4, 8, 12] and sorted(events["samples"]) == [4, 8, 12]
    for step in (4, 8, 12):
        assert storage.read_bytes(f"{bucket}/runs/s3run/samples/step-{step:06d}.png", s3)[:4] == b"\x89PNG"
    _, images, _ = head_images(f"{bucket}/synthetic", shards.read_manifest(f"{bucket}/synthetic", s3), 4, s3)
    with torch.no_grad():
        out = refiner(torch.from_numpy(images).float() / 127.5 - 1)
    assert out.shape == (4, 1, 28, 28)

    # The AWS keys were in every process's environment: they are in no artifact, no log, no config.
    session_dir = Path(ray_session._private.worker._global_node.get_session_dir_path())
    assert_no_credentials_in(fs, "simgan-e2e", [tmp_path, session_dir])


def assert_no_credentials_in(fs, bucket: str, local_dirs: list[Path]) -> None:
    secrets = [FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"].encode(), FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"].encode()]
    infos = fs.get_file_info(pafs.FileSelector(bucket, recursive=True))
    objects = [i.path for i in infos if i.type == pafs.FileType.File]
    files = [p for d in local_dirs for p in d.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(objects) > 10 and len(files) > 10
    for name, read in [(o, lambda o=o: fs.open_input_stream(o).read()) for o in objects] + \
                      [(str(f), f.read_bytes) for f in files]:
        try:
            blob = read()
        except OSError:  # a socket or a file a Ray process removed meanwhile
            continue
        assert not any(s in blob for s in secrets), f"credentials in {name}"


def test_missing_bucket_and_shard_problems_are_named(s3_server):
    s3 = S3Options(endpoint_url=s3_server.endpoint)
    with pytest.raises(SimganError, match="s3://no-such-bucket/synthetic: bucket 'no-such-bucket' does not exist"):
        shards.read_manifest("s3://no-such-bucket/synthetic", s3)
    bucket = s3_server.make_bucket("simgan-bad")
    # A manifest whose shard has the wrong schema, and one whose shard is truncated.
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, payload in (("wrong", None), ("truncated", b"PAR1\x00\x01")):
        if payload is None:
            buf = io.BytesIO()
            pq.write_table(pa.table({"id": ["a"], "pixels": [b"x"]}), buf)
            payload = buf.getvalue()
        storage.write_bytes(f"{bucket}/{name}/shard-00000.parquet", payload, s3)
        shards.write_manifest(UserFiles(f"{bucket}/{name}", s3), shards.Manifest(
            kind="real", count=1, shape=[1, 28, 28], shards=[{"name": "shard-00000.parquet", "rows": 1}]))
    good = f"{bucket}/good"
    storage.write_bytes(f"{good}/shard-00000.parquet", b"", s3)  # placeholder, replaced below
    table = shards.make_table(["g"], np.zeros((1, 1, 28, 28), np.uint8), [None])
    shards.write_manifest(UserFiles(good, s3), shards.Manifest(kind="real", count=1, shape=[1, 28, 28],
                                                shards=[shards.write_shard(UserFiles(good, s3), 0, table)]))
    with pytest.raises(SimganError, match=r"wrong/shard-00000.parquet: wrong schema: no column 'image' \(binary\); "
                       r"no column 'label' \(string\) \(columns simgan-ray does not write: pixels\)$"):
        check_training_sets(good, f"{bucket}/wrong", 1, 1, s3)
    with pytest.raises(SimganError, match=r"truncated/shard-00000.parquet: not a readable Parquet shard"):
        check_training_sets(good, f"{bucket}/truncated", 1, 1, s3)


@pytest.mark.slow
def test_wrong_credentials_are_reported_not_dumped():
    server = MotoServer(require_auth=True)  # knows no keys at all: every request is refused
    try:
        s3 = S3Options(endpoint_url=server.endpoint, retries=1)
        with pytest.raises(SimganError) as e:
            shards.read_manifest("s3://any-bucket/real", s3)
        assert "s3://any-bucket/real: access denied: check the AWS credentials" in str(e.value)
        assert "simgan-test-secret" not in str(e.value)
    finally:
        server.stop()
    assert server.proc.poll() is not None

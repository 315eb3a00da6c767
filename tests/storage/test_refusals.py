"""Hostile inputs end in one line (exit 2, no traceback) with nothing written first: a corrupt
Parquet data page behind an intact footer, an output under a regular file, YAML with duplicate keys
or nested thousands deep, NaN in labels, a bad RAY_ADDRESS, ftp:// and memory://, a refiner.pt far
larger than its refiner.json implies, and a tune spec whose base is a system file."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from simgan_ray.apply.refine import RefineJob, refine
from simgan_ray.common.errors import user_error
from simgan_ray.model.export import write_export
from simgan_ray.model.networks import Refiner, RefinerConfig
from simgan_ray.sets import shards
from tests.conftest import console, one_line_refusal, small_run, snapshot, write_set


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def corrupt_set(prefix: Path) -> str:
    """Two shards of 32; the second's data pages overwritten, its footer intact (row counts read fine)."""
    images = np.random.default_rng(0).integers(0, 255, (64, 1, 28, 28), np.uint8)
    write_set(prefix, "synthetic", images, [None] * 64, 32)
    shard = prefix / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[200:3000] = b"\xff" * 2800
    shard.write_bytes(bytes(data))
    return str(prefix)


def test_a_corrupt_shard_is_named_with_strict_and_counted_without(tmp_path, ray_session):
    source = corrupt_set(tmp_path / "set")
    write_export(tmp_path / "export", Refiner(RefinerConfig(features=4, blocks=1)),
                             {"step": 0, "image_shape": [1, 28, 28]})
    job = {"model": str(tmp_path / "export"), "input": source, "batch_size": 32}
    with pytest.raises(Exception) as failed:  # noqa: PT011 (raised in a Ray actor, wrapped by Ray Data)
        refine(RefineJob(**job, output=str(tmp_path / "strict"), strict=True))
    assert "shard-00001.parquet: a corrupt Parquet shard" in str(user_error(failed.value))
    summary = refine(RefineJob(**job, output=str(tmp_path / "lenient")))
    assert summary.rows_out == 32 and len(summary.corrupt_shards) == 1
    manifest = shards.read_manifest(str(tmp_path / "lenient"))
    assert manifest.count == 32 and manifest.source["skipped"] == 32
    assert "shard-00001.parquet: a corrupt Parquet shard" in manifest.source["corrupt_shards"][0]


def test_training_reads_a_corrupt_shard_as_refine_does(ray_session, digit_sets, tmp_path):
    """Without data.strict the run finishes on the intact shard and lists the corrupt one once
    (however many epochs met it); with it, the read names the shard."""
    from simgan_ray.sets import data
    from simgan_ray.training.config import load_config
    from simgan_ray.training.train import fit


    source = corrupt_set(tmp_path / "set")
    cfg = load_config(None, small_run({"synthetic": source, "real": digit_sets["real"]}, tmp_path, "r",
                                      **{"run.report_every": 12, "run.checkpoint_every": 12}))
    result = fit(cfg)  # 12 steps of 8 from 32 readable images: 3 passes over the synthetic set
    assert result.step == 12
    assert len(result.skipped) == 1 and "shard-00001.parquet: a corrupt Parquet shard" in result.skipped[0]
    assert (tmp_path / "r" / "skipped.txt").read_text() == result.skipped[0] + "\n"
    manifest = shards.read_manifest(source)
    with pytest.raises(Exception, match=r"shard-00001.parquet: a corrupt Parquet shard"):  # noqa: PT011 (Ray wraps it)
        data.image_dataset(source, manifest, strict=True).count()


@pytest.mark.slow
def test_bad_files_and_places_are_one_line_and_write_nothing(tmp_path, digit_sets):
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "dup.yaml").write_text("seed: 1\nbatch_size: 8\nseed: 2\n")
    (tmp_path / "deep.yaml").write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "pngs").mkdir()
    png = shards.encode_png(np.zeros((1, 28, 28), np.uint8))
    for name in ("a", "b"):
        (tmp_path / "pngs" / f"{name}.png").write_bytes(png)
    (tmp_path / "labels.csv").write_text("file,digit\na.png,3\nb.png,NaN\n")
    (tmp_path / "pngs" / "a.json").write_text("[" * 20000 + "]" * 20000)
    (tmp_path / "pngs" / "b.json").write_text('{"digit": Infinity}')
    write_export(tmp_path / "export", Refiner(RefinerConfig(features=4, blocks=1)),
                             {"step": 0, "image_shape": [1, 28, 28]})
    with open(tmp_path / "export" / "refiner.pt", "r+b") as f:
        f.truncate(20 * 2**30)  # sparse: 20 GB that take no disk
    (tmp_path / "tune.yaml").write_text(json.dumps({"base": "/etc/debconf.conf", "search": {"loss.lam": {
        "choice": [0.1]}}, "probe": {"uri": str(tmp_path / "p"), "real_train": "a", "reference": "b"}}))
    train = ["train", f"--set=data.synthetic={digit_sets['synthetic']}", f"--set=data.real={digit_sets['real']}"]
    cases = [
        (["simulate", "--count", "4", "--out", str(tmp_path / "a-file" / "out")], "a-file is a file, not a folder"),
        (["simulate", "--count", "4", "--out", str(tmp_path / "a-file" / "out"), "--dry-run"], "is a file"),
        (["train", "--config", str(tmp_path / "dup.yaml"), "--dry-run"], "key 'seed' is given twice at line 3"),
        (["train", "--config", str(tmp_path / "deep.yaml"), "--dry-run"], "deep.yaml: not valid YAML: nested too deep"),
        ([*train, "--set", "seed=" + "[" * 5000, "--dry-run"], "not YAML"),
        (["ingest", "--src", str(tmp_path / "pngs"), "--out", str(tmp_path / "o1"), "--labels",
          str(tmp_path / "labels.csv")], "labels.csv: line 3: a label value is not usable (NaN is not a JSON number)"),
        (["ingest", "--src", str(tmp_path / "pngs"), "--out", str(tmp_path / "o2"), "--labels", "sidecar",
          "--strict"], "a.png: a.json: not JSON (nested too deep)"),
        (["simulate", "--count", "4", "--out", "ftp://example.org/x"], "ftp:// is a file server"),
        (["simulate", "--count", "4", "--out", "memory://x"], "memory:// keeps files in one process's memory"),
        (["simulate", "--count", "4", "--out", "s3://b/x", "--s3-endpoint", f"http://127.0.0.1:{closed_port()}"],
         "s3://b/x/.simgan-ray/owner.json: cannot connect to the S3 endpoint http://127.0.0.1:"),
        (["refine", "--model", str(tmp_path / "export"), "--input", digit_sets["synthetic"], "--output",
          str(tmp_path / "o3"), "--dry-run"], "refiner.pt: 21474836480 bytes, far more than the"),
        (["tune", "--config", str(tmp_path / "tune.yaml"), "--dry-run"], "/etc/debconf.conf: not valid YAML"),
    ]
    before = snapshot(str(tmp_path))
    for args, needle in cases:
        line = one_line_refusal(console(*args, cwd=tmp_path), needle)
        assert len(line) < 400, line  # never a file's lines
    assert snapshot(str(tmp_path)) == before


@pytest.mark.slow
@pytest.mark.parametrize("address", ["garbage", "127.0.0.1:{port}"])
def test_a_bad_ray_address_is_one_line_within_seconds_and_claims_nothing(tmp_path, address):
    port = closed_port()
    start = time.monotonic()
    done = console("simulate", "--count", "4", "--out", str(tmp_path / "out"),
                   env={"RAY_ADDRESS": address.format(port=port)})
    line = one_line_refusal(done, "RAY_ADDRESS=")
    assert "for 5 s" in line or "is not HOST:PORT" in line
    assert time.monotonic() - start < 30  # the console's own start-up included
    assert not (tmp_path / "out").exists()


def test_a_ray_of_another_token_is_one_line_and_claims_nothing(ray_session, tmp_path):
    (tmp_path / "token").write_text("0" * 64)
    done = console("simulate", "--count", "4", "--out", str(tmp_path / "out"),
                   env={"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
                        "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")})
    one_line_refusal(done, "RAY_ADDRESS=", "could not join the Ray there", "auth token")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root only, where mounting is allowed), unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_same_command_continues_after(small_disk, joined_ray):
    out = small_disk / "out"
    line = one_line_refusal(console("simulate", "--count", "2000", "--out", str(out), env=joined_ray),
                            "No space left on device")
    assert "shard-00000.parquet: cannot write" in line
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no partial file left
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    # Its claim stopped before its first file: the same command continues there, no --overwrite needed.
    done = console("simulate", "--count", "2000", "--out", str(out), env=joined_ray)
    assert done.returncode == 0, done.stderr
    assert shards.read_manifest(str(out)).count == 2000

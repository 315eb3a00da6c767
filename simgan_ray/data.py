"""Image sets as Ray Datasets: Parquet shards named by the manifest -> decoded float tensors.

Decoded batches hold "image": float32 (n, C, H, W) in [-1, 1]; pixel p in [0, 255] maps to
p / 127.5 - 1. Decoding runs in Ray Data `map_batches` tasks, streamed to the training workers.
"""

from __future__ import annotations

import numpy as np

from simgan_ray import shards, storage
from simgan_ray.errors import SimganError
from simgan_ray.shards import Manifest
from simgan_ray.storage import S3Options


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W, C) -> float32 (n, C, H, W) in [-1, 1]."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float (n, C, H, W) in [-1, 1] -> uint8 (n, H, W, C)."""
    return np.clip((images.transpose(0, 2, 3, 1) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def decode_images(ids, blobs, shape: list[int]) -> np.ndarray:
    """PNG blobs -> uint8 (n, H, W, C); every image must have the manifest's [C, H, W]."""
    c, h, w = shape
    out = np.empty((len(blobs), h, w, c), np.uint8)
    for i, blob in enumerate(blobs):
        try:
            img = shards.decode_png(blob)
        except Exception as e:  # PIL raises several types for corrupt data
            raise SimganError(f"image {ids[i]}: cannot decode ({e})") from None
        if img.shape != (h, w, c):
            raise SimganError(
                f"image {ids[i]}: shape {img.shape[2]}x{img.shape[0]}x{img.shape[1]} (CxHxW) "
                f"!= the set's {c}x{h}x{w}"
            )
        out[i] = img
    return out


def _decode_batch(batch: dict, shape: list[int]) -> dict:
    return {"image": to_unit_range(decode_images(batch["id"], batch["image"], shape))}


def image_dataset(prefix: str, manifest: Manifest, s3: S3Options = S3Options()):
    """Lazy Ray Dataset of decoded images of the set at `prefix` (no object listing)."""
    import ray.data

    fs, _ = storage.resolve(prefix, s3)
    paths = [storage.resolve(uri, s3)[1] for uri in shards.shard_uris(prefix, manifest)]
    ds = ray.data.read_parquet(paths, filesystem=fs).select_columns(["id", "image"])
    return ds.map_batches(_decode_batch, batch_format="numpy", fn_kwargs={"shape": manifest.shape})


def check_training_sets(synthetic: str, real: str, channels: int, min_count: int,
                        s3: S3Options = S3Options()) -> tuple[Manifest, Manifest]:
    """Validate the two sets before any Ray work starts; errors name the set and the cause."""
    syn, rl = shards.read_manifest(synthetic, s3), shards.read_manifest(real, s3)
    if syn.shape != rl.shape:
        raise SimganError(
            f"synthetic images ({synthetic}) are {'x'.join(map(str, syn.shape))} (CxHxW) but "
            f"real images ({real}) are {'x'.join(map(str, rl.shape))}"
        )
    if syn.shape[0] != channels:
        raise SimganError(f"images have {syn.shape[0]} channels but refiner.channels is {channels}")
    for name, m, uri in (("synthetic", syn, synthetic), ("real", rl, real)):
        if m.count < min_count:
            raise SimganError(
                f"{name} set {uri} has {m.count} images, fewer than one batch on every worker "
                f"(batch_size x num_workers = {min_count})"
            )
    return syn, rl


def head_images(prefix: str, manifest: Manifest, n: int, s3: S3Options = S3Options()):
    """The first n images of a set, read directly from its first shards (driver-side, small n).
    -> (ids, uint8 (n, H, W, C), labels as JSON strings or None)."""
    import pyarrow.parquet as pq

    fs, _ = storage.resolve(prefix, s3)
    ids, blobs, labels = [], [], []
    for uri in shards.shard_uris(prefix, manifest):
        table = pq.read_table(storage.resolve(uri, s3)[1], filesystem=fs, columns=["id", "image", "label"])
        ids += table["id"].to_pylist()[: n - len(ids)]
        blobs += table["image"].to_pylist()[: n - len(blobs)]
        labels += table["label"].to_pylist()[: n - len(labels)]
        if len(ids) >= n:
            break
    return ids, decode_images(ids, blobs, manifest.shape), labels

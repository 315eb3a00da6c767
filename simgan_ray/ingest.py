"""Pack a folder / prefix of real image files (PNG, JPEG; any size) into an image set.

Files are listed once (this is where image files come in; sets are never listed afterwards),
split into shards, and each shard is built by one Ray task: read, decode, convert to the target
channels, fit to the target H x W, re-encode as PNG. Unreadable files are counted and skipped
(listed in the manifest) unless `strict`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from simgan_ray import shards, storage
from simgan_ray.errors import BadItems, SimganError
from simgan_ray.runtime import run_tasks
from simgan_ray.storage import S3Options

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
Fit = Literal["resize", "crop", "pad"]


@dataclass(frozen=True)
class Target:
    height: int
    width: int
    channels: Literal[1, 3]
    fit: Fit = "crop"  # resize: stretch; crop: scale the short side, centre crop; pad: fit inside, black borders


def fit_image(data: bytes, target: Target) -> np.ndarray:
    """Image file bytes -> uint8 (C, H, W) of the target size and channels."""
    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im).convert("L" if target.channels == 1 else "RGB")
        size = (target.width, target.height)
        if target.fit == "resize":
            im = im.resize(size, Image.LANCZOS)
        elif target.fit == "crop":
            im = ImageOps.fit(im, size, Image.LANCZOS)
        else:
            im = ImageOps.pad(im, size, Image.LANCZOS, color=0)
        return shards.from_pil(im)


def _ingest_shard(src: str, out: str, index: int, files: list[str], target: Target, strict: bool,
                  s3: S3Options) -> tuple[dict | None, list[str]]:
    """files: paths relative to `src`, which become the images' ids."""
    ids, images, bad = [], [], BadItems(strict)
    for rel in files:
        # An S3 key may hold '..' segments or control characters: such a name is no image id.
        if why := storage.bad_segment(rel) or shards.id_problem(rel):
            bad.skip(f"{src}/{rel}: unusable as an image id: it {why}")
            continue
        try:
            images.append(fit_image(storage.read_bytes(storage.join(src, rel), s3), target))
        except SimganError:
            raise  # storage errors (access denied, ...) fail the job
        except Exception as e:  # PIL: UnidentifiedImageError, OSError (truncated), ValueError, ...
            bad.skip(f"{src}/{rel}: not a readable image ({shards.image_error(e)})")
            continue
        ids.append(rel)
    if not ids:
        return None, bad.reasons
    table = shards.make_table(ids, images, [None] * len(ids))
    return shards.write_shard(out, index, table, s3), bad.reasons


def ingest(src: str, out: str, target: Target, shard_size: int = 5000, strict: bool = False,
           s3: S3Options = S3Options()) -> shards.Manifest:
    if target.height < 1 or target.width < 1 or shard_size < 1:
        raise SimganError("height, width and shard size must be >= 1")
    src, out = storage.normalize(src), storage.normalize(out)
    storage.refuse_overlap(("--out", out), {"--src": src}, "an image set is a prefix of its own, apart from its source")
    if not storage.exists(src, s3):
        raise SimganError(f"{src}: not found")
    files = storage.list_files(src, IMAGE_SUFFIXES, s3)
    if not files:
        raise SimganError(f"{src}: no {'/'.join(IMAGE_SUFFIXES)} files")
    storage.make_dirs(out, s3)
    calls = [(src, out, i, files[s : s + shard_size], target, strict, s3)
             for i, s in enumerate(range(0, len(files), shard_size))]
    results = run_tasks(_ingest_shard, calls, "ingest shards")
    written = [entry for entry, _ in results if entry is not None]
    skipped = [x for _, bad in results for x in bad]
    count = sum(e["rows"] for e in written)
    if count == 0:
        raise SimganError(f"{src}: none of {len(files)} files could be read; first: {skipped[0]}")
    manifest = shards.Manifest(
        kind="real",
        count=count,
        shape=[target.channels, target.height, target.width],
        shards=written,
        source={"src": src, "files": len(files), "fit": target.fit, "skipped": len(skipped),
                "skipped_files": skipped[:100], "label": "none"},
    )
    shards.write_manifest(out, manifest, s3)
    return manifest

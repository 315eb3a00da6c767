"""The on-storage image set format: Parquet shards plus a manifest (see README, "Data format").

    <prefix>/manifest.json           {"format", "kind", "count", "shape": [C, H, W], "shards": [...], ...}
    <prefix>/shard-00000.parquet     columns: id (string), image (binary, PNG), height, width,
                                      channels (int32), label (string, JSON annotation; null if none)

Readers take the shard list from the manifest, so nothing ever lists millions of objects.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from simgan_ray import storage
from simgan_ray.errors import SimganError
from simgan_ray.storage import S3Options

FORMAT = "simgan-ray-shards/1"
MANIFEST = "manifest.json"

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("channels", pa.int32()),
        ("label", pa.string()),
    ]
)


@dataclass
class Manifest:
    kind: str  # "synthetic" | "real" | "refined" ...
    count: int
    shape: list[int]  # [C, H, W]
    shards: list[dict]  # [{"name": "shard-00000.parquet", "rows": n}, ...]
    source: dict = field(default_factory=dict)  # generator / origin details, free form
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def encode_png(image: np.ndarray) -> bytes:
    """(H, W) or (H, W, C) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_error(error: Exception) -> str:
    """A short reason for a PIL decode failure (PIL's own names an in-memory buffer object)."""
    if isinstance(error, UnidentifiedImageError):
        return "not a recognised image format"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def decode_png(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> (H, W, C) uint8."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im)
    return arr[:, :, None] if arr.ndim == 2 else arr


def make_table(ids: list[str], images: np.ndarray | list[np.ndarray], labels: list[str | None]) -> pa.Table:
    """images: (N, H, W) or (N, H, W, C) uint8; labels: JSON strings or None."""
    encoded, hs, ws, cs = [], [], [], []
    for img in images:
        encoded.append(encode_png(img))
        hs.append(img.shape[0])
        ws.append(img.shape[1])
        cs.append(1 if img.ndim == 2 else img.shape[2])
    return pa.table(
        {"id": ids, "image": encoded, "height": hs, "width": ws, "channels": cs, "label": labels},
        schema=SCHEMA,
    )


def write_shard(prefix: str, index: int, table: pa.Table, s3: S3Options = S3Options()) -> dict:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none")  # PNG bytes do not compress further
    storage.write_bytes(storage.join(prefix, shard_name(index)), buf.getvalue(), s3)
    return {"name": shard_name(index), "rows": table.num_rows}


def write_manifest(prefix: str, manifest: Manifest, s3: S3Options = S3Options()) -> None:
    """Written last: a set without a manifest is incomplete."""
    storage.write_bytes(storage.join(prefix, MANIFEST), manifest.to_json().encode(), s3)


def read_manifest(prefix: str, s3: S3Options = S3Options()) -> Manifest:
    uri = storage.join(prefix, MANIFEST)
    if not storage.exists(prefix, s3):
        bucket = storage.missing_bucket(prefix, s3)
        what = f"bucket '{bucket}' does not exist" if bucket else "dataset not found"
        raise SimganError(f"{prefix}: {what} (create it with `simgan-ray simulate`, `ingest` or `data`)")
    if not storage.exists(uri, s3):
        raise SimganError(f"{uri}: missing; {prefix} is not a complete simgan-ray image set")
    try:
        raw = json.loads(storage.read_bytes(uri, s3))
        manifest = Manifest(**raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise SimganError(f"{uri}: not a valid manifest ({e})") from None
    if manifest.format != FORMAT:
        raise SimganError(f"{uri}: format {manifest.format!r}, expected {FORMAT!r}")
    return manifest


def shard_uris(prefix: str, manifest: Manifest) -> list[str]:
    return [storage.join(prefix, s["name"]) for s in manifest.shards]

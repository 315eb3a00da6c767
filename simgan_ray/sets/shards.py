"""The on-storage image set format: Parquet shards plus a manifest (see docs/storage.md, "Data format").

    <prefix>/manifest.json           {"format", "kind", "count", "shape": [C, H, W], "shards": [...], ...}
    <prefix>/shard-00000.parquet     columns: id (string), image (binary), height, width,
                                      channels (int32), label (string, JSON annotation; null if none)

The manifest's "encoding" says what an image's bytes are: "png" (the default, and what sets
written before the field existed hold; a PNG or JPEG file) or "raw" (the set's C*H*W uint8 pixels
in NCHW order, in zstd-compressed Parquet pages: decoding is a reshape).

Readers take the shard list from the manifest, so nothing ever lists millions of objects.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Literal
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simgan_ray import storage
from simgan_ray.common.errors import SimganError, first_line, format_errors
from simgan_ray.storage import S3Options
from simgan_ray.storage.ownership import Output

FORMAT = "simgan-ray-shards/1"
MANIFEST = "manifest.json"
ENCODINGS = ("png", "raw")
Encoding = Literal["png", "raw"]

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
    encoding: str = "png"  # what each image's bytes are: "png" or "raw" (the module's docstring)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _ShardEntry(_Strict):
    model_config = ConfigDict(extra="allow")  # writers may add fields; readers use these two
    name: str
    rows: int = Field(ge=0)


class _ManifestDoc(_Strict):
    """What a manifest.json must hold (strict: `"rows": "200"` is not a number)."""

    format: str
    kind: str
    count: int = Field(ge=0)
    shape: list[int] = Field(min_length=3, max_length=3)
    shards: list[_ShardEntry]
    source: dict = {}
    encoding: Encoding = "png"


# A shard is one file beside the manifest: a plain name (no folders, nothing hidden), ending .parquet.
_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}\.parquet")
MAX_ID_LENGTH = 1024


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def id_problem(image_id: object) -> str | None:
    """Why `image_id` cannot be an image id, or None. Ids are data (ingest uses relative paths,
    'a/b.png'), never paths: writers turn them into file names with `png_file_name`."""
    if not isinstance(image_id, str) or not image_id:
        return "empty or not a string"
    if len(image_id) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    if any(ord(c) < 32 or c == "\x7f" for c in image_id):
        return "holds a control character"
    return None


def png_file_name(image_id: str) -> str:
    """The file name an image's PNG gets: the id less a .png suffix, percent-encoded so that no
    '/', '\\', '%' or leading '.' is left (one plain, visible path segment), plus .png. An id too
    long for a file name keeps a prefix and a hash of the whole id."""
    stem = quote(image_id.removesuffix(".png") or image_id, safe="-_.,+=@()[]~")
    if stem[:1] in ("", "."):  # no hidden file ('.png' from an empty id too)
        stem = "%2E" + stem[1:]
    if len(stem) > 200:
        stem = f"{stem[:180]}~{hashlib.sha256(image_id.encode()).hexdigest()[:16]}"
    return stem + ".png"


def to_pil(image: np.ndarray) -> Image.Image:
    """uint8 (C, H, W), C 1 or 3 -> a PIL image. With `from_pil`, the one place the package's
    layout (NCHW everywhere) meets PIL's (H, W[, C])."""
    return Image.fromarray(image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0)))


def from_pil(im: Image.Image) -> np.ndarray:
    """A PIL image -> uint8 (C, H, W)."""
    arr = np.asarray(im)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (C, H, W) -> PNG bytes."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_error(error: Exception) -> str:
    """A short reason for a PIL decode failure (PIL's own names an in-memory buffer object)."""
    if isinstance(error, UnidentifiedImageError):
        return "not a recognised image format"
    return first_line(error)


def decode_png(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (C, H, W)."""
    with Image.open(io.BytesIO(data)) as im:
        return from_pil(im)


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """uint8 (C, H, W) -> the bytes a shard of `encoding` holds for it."""
    return encode_png(image) if encoding == "png" else np.ascontiguousarray(image, np.uint8).tobytes()


def decode_image(blob: bytes, encoding: str, shape: list[int]) -> np.ndarray:
    """An image's bytes in a shard of `encoding` -> uint8 (C, H, W) (raw: a read-only view of `blob`).
    Raises ValueError or PIL's errors for bytes that are not an image of that encoding."""
    if encoding == "png":
        return decode_png(blob)
    if len(blob) != math.prod(shape):
        raise ValueError(f"{len(blob)} bytes, not the {math.prod(shape)} raw pixels of {'x'.join(map(str, shape))}")
    return np.frombuffer(blob, np.uint8).reshape(shape)


def raw_pixels(images: pa.ChunkedArray | pa.Array, shape: list[int]) -> np.ndarray | None:
    """A raw shard's image column -> uint8 (n, C, H, W) in one copy of its data buffer, or None when
    some image is null or not the set's C*H*W bytes (the caller then decodes image by image, which
    names the bad one)."""
    column = images.combine_chunks() if isinstance(images, pa.ChunkedArray) else images
    size, n = math.prod(shape), len(column)
    if not pa.types.is_binary(column.type) or column.null_count:
        return None
    if n == 0:
        return np.empty((0, *shape), np.uint8)
    offsets = np.frombuffer(column.buffers()[1], np.int32, count=n + 1, offset=4 * column.offset)
    if (np.diff(offsets) != size).any():
        return None
    pixels = np.frombuffer(column.buffers()[2], np.uint8, count=n * size, offset=int(offsets[0]))
    return pixels.reshape(n, *shape).copy()


def make_table(ids: list[str], images: np.ndarray | list[np.ndarray], labels: list[str | None],
               encoding: str = "png") -> pa.Table:
    """images: uint8 (N, C, H, W) (or a list of (C, H, W)); labels: JSON strings or None."""
    for image_id in ids:
        if why := id_problem(image_id):
            raise SimganError(f"image id {image_id!r}: {why}")
    encoded, hs, ws, cs = [], [], [], []
    for img in images:
        encoded.append(encode_image(img, encoding))
        cs.append(img.shape[0])
        hs.append(img.shape[1])
        ws.append(img.shape[2])
    return pa.table(
        {"id": ids, "image": encoded, "height": hs, "width": ws, "channels": cs, "label": labels},
        schema=SCHEMA,
    )


def read_shard(uri: str, s3: S3Options = S3Options(), columns: tuple[str, ...] = ("id", "image", "label")) -> pa.Table:
    """The rows of the shard at `uri`; a SimganError naming it when it cannot be read whole (a
    corrupt data page behind an intact footer included)."""
    fs, path = storage.resolve(uri, s3)
    try:
        return pq.read_table(path, filesystem=fs, columns=list(columns))
    except FileNotFoundError:
        raise SimganError(f"{uri}: shard listed in the manifest is missing") from None
    except (OSError, pa.ArrowException) as e:
        raise SimganError(f"{uri}: a corrupt Parquet shard ({first_line(e)})") from None


def write_shard(out: Output, index: int, table: pa.Table, encoding: str = "png") -> dict:
    return write_table(out, shard_name(index), table, encoding)


def encode_table(table: pa.Table, encoding: str = "png") -> bytes:
    buf = io.BytesIO()
    # PNG bytes do not compress further; raw pixels do (zstd decodes at GB/s)
    pq.write_table(table, buf, compression="none" if encoding == "png" else "zstd")
    return buf.getvalue()


def write_table(out: Output, name: str, table: pa.Table, encoding: str = "png") -> dict:
    """Write `table` as the shard `name` of the set `out` -> its manifest entry."""
    out.write({name: encode_table(table, encoding)})
    return {"name": name, "rows": table.num_rows}


def write_manifest(out: Output, manifest: Manifest) -> None:
    """Written last: a set without a manifest is incomplete."""
    out.write({MANIFEST: manifest.to_json().encode()})


def read_manifest(prefix: str, s3: S3Options = S3Options()) -> Manifest:
    uri = storage.join(prefix, MANIFEST)
    if not storage.exists(prefix, s3):
        bucket = storage.missing_bucket(prefix, s3)
        what = f"bucket '{bucket}' does not exist" if bucket else "dataset not found"
        raise SimganError(f"{prefix}: {what} (create it with `simgan-ray simulate`, `ingest` or `data`)")
    if not storage.exists(uri, s3):
        raise SimganError(f"{uri}: missing; {prefix} is not a complete simgan-ray image set")
    try:
        doc = _ManifestDoc.model_validate(storage.read_json(uri, s3, "an image set's manifest", FORMAT))
    except ValidationError as e:
        raise SimganError(format_errors(uri, e)) from None
    if any(n < 1 for n in doc.shape):
        raise SimganError(f"{uri}: shape: {doc.shape} is not [C, H, W] of positive sizes")
    names = set()
    for i, entry in enumerate(doc.shards):
        if not _SHARD_NAME.fullmatch(entry.name):
            raise SimganError(f"{uri}: shards.{i}.name: {entry.name!r} is not a shard file name beside the "
                              "manifest (letters, digits, '.', '_', '-', ending .parquet)")
        if entry.name in names:
            raise SimganError(f"{uri}: shards.{i}.name: {entry.name!r} is listed twice")
        names.add(entry.name)
    if (rows := sum(e.rows for e in doc.shards)) != doc.count:
        raise SimganError(f"{uri}: count is {doc.count} but the shards hold {rows} rows")
    return Manifest(**{**doc.model_dump(), "shards": [e.model_dump() for e in doc.shards]})


def shard_uris(prefix: str, manifest: Manifest) -> list[str]:
    return [storage.join(prefix, s["name"]) for s in manifest.shards]


def refuse_test_kind(option: str, prefix: str, kind: str, role: str) -> None:
    """A SimganError when a set's manifest kind is "test" (the MNIST test split, or any set its
    maker marked so): nothing is chosen by, trained on or tuned against the test set."""
    if kind == "test":
        raise SimganError(f"{option} {prefix}: a test set (manifest kind 'test') {role}")


def refuse_test_set(option: str, prefix: str, s3: S3Options, role: str) -> str:
    """`refuse_test_kind` on the set's manifest, read here; -> its kind."""
    kind = read_manifest(prefix, s3).kind
    refuse_test_kind(option, prefix, kind, role)
    return kind

"""Pack a folder / prefix of image files (PNG, JPEG; any size) into an image set, with labels when
they come beside the images.

Files are listed once (this is where image files come in; sets are never listed afterwards),
split into shards, and each shard is built by one Ray task: read, decode, convert to the target
channels, fit to the target H x W, re-encode as PNG. Unreadable files are counted and skipped
(listed in the manifest) unless `strict`.

Labels (optional), stored per image as a JSON object:
- "sidecar": a JSON object beside each image, same name with .json (UnityEyes writes 1.jpg +
  1.json); an image without one, or with one that is not a JSON object, is skipped (strict: fails);
- a CSV file (local or any location): a header row, a `file` column with the image's path relative
  to the source folder, and one column per label field; values that parse as JSON numbers or lists
  are stored as such, the rest as strings.
`label_fields` keeps only those fields (dotted paths into nested objects: eye_details.look_vec).
A string of numbers in brackets or parentheses, as "(0.1, -0.2, -0.97, 0.0)" in UnityEyes' JSON,
is stored as a list of numbers.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from simgan_ray import storage
from simgan_ray.common.errors import BadItems, SimganError
from simgan_ray.runtime.session import ensure_ray, run_tasks
from simgan_ray.sets import shards
from simgan_ray.storage import S3Options, ownership
from simgan_ray.storage.ownership import Output

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
Fit = Literal["resize", "crop", "pad"]


@dataclass(frozen=True)
class Target:
    height: int
    width: int
    channels: Literal[1, 3]
    fit: Fit = "crop"  # resize: stretch; crop: scale the short side, centre crop; pad: fit inside, black borders
    encoding: shards.Encoding = "png"  # how the shards hold each image (shards' docstring)


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


_NUMBERS = re.compile(r"[\[(]\s*-?[\d.eE+-]+(\s*,\s*-?[\d.eE+-]+)*\s*[\])]")
MAX_LABEL_BYTES = 65536  # a label is a few fields; a bigger "label" file is not one


def _value(value):
    """A label value as stored: "(0.1, -0.2)" -> [0.1, -0.2]; nested objects and lists likewise."""
    if isinstance(value, str) and _NUMBERS.fullmatch(value.strip()):
        return [float(x) for x in value.strip()[1:-1].split(",")]
    if isinstance(value, dict):
        return {k: _value(v) for k, v in value.items()}
    return value


def _pick(label: dict, fields: tuple[str, ...]) -> dict:
    """Only `fields` (dotted paths) of `label`, each stored under its full dotted name; KeyError names one missing."""
    if not fields:
        return label
    out = {}
    for field in fields:
        node = label
        for key in field.split("."):
            if not isinstance(node, dict) or key not in node:
                raise KeyError(field)
            node = node[key]
        out[field] = node
    return out


def _json(text: str | bytes):
    """Strict JSON: no NaN or Infinity (Python's json reads and writes them; nothing else does), and
    a ValueError, not a RecursionError, for values nested thousands deep."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not a JSON number")
    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise ValueError("nested too deep") from None


def _csv_value(text: str):
    try:
        value = _json(text)
        return value if isinstance(value, (int, float, list)) else text
    except json.JSONDecodeError:
        return text


def read_label_csv(uri: str, s3: S3Options) -> dict[str, dict]:
    """A labels CSV -> {file: {field: value}}; errors name the file and the row."""
    try:
        text = storage.read_bytes(uri, s3).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SimganError(f"{uri}: not UTF-8 text (byte {e.start}), so not a labels CSV") from None
    rows = csv.DictReader(io.StringIO(text))
    if not rows.fieldnames or "file" not in rows.fieldnames or len(rows.fieldnames) < 2:
        raise SimganError(f"{uri}: a labels CSV needs a header row with a 'file' column and at least one label column "
                          f"(found {rows.fieldnames})")
    labels: dict[str, dict] = {}
    for line, row in enumerate(rows, start=2):
        name = (row.pop("file") or "").strip()
        if not name or None in row or any(v is None for v in row.values()):
            raise SimganError(f"{uri}: line {line}: expected {len(rows.fieldnames)} values with a file name")
        if name in labels:
            raise SimganError(f"{uri}: line {line}: {name!r} is labelled twice")
        try:
            labels[name] = {k: _csv_value(v.strip()) for k, v in row.items()}
        except ValueError as e:
            raise SimganError(f"{uri}: line {line}: a label value is not usable ({e})") from None
    return labels


def _sidecar(src: str, rel: str, s3: S3Options) -> dict:
    """The JSON object beside image `rel`; ValueError saying why there is none."""
    name = rel.rsplit(".", 1)[0] + ".json"
    uri = storage.join(src, name)
    if not storage.exists(uri, s3):
        raise ValueError(f"no label file {name}")
    raw = storage.read_bytes(uri, s3)
    if len(raw) > MAX_LABEL_BYTES:
        raise ValueError(f"{name}: {len(raw)} bytes, more than a label ({MAX_LABEL_BYTES})")
    try:
        label = _json(raw)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, NaN, nesting
        raise ValueError(f"{name}: not JSON ({e})") from None
    if not isinstance(label, dict):
        raise ValueError(f"{name}: a JSON {type(label).__name__}, not an object")
    return label


def _ingest_shard(src: str, out: Output, index: int, files: list[str], target: Target, strict: bool,
                  s3: S3Options, labels: str | dict | None, fields: tuple[str, ...]) -> tuple[dict | None, list[str]]:
    """files: paths relative to `src`, which become the images' ids; labels: None, "sidecar", or
    {file: label} read from a CSV."""
    ids, images, stored, bad = [], [], [], BadItems(strict)
    for rel in files:
        # An S3 key may hold '..' segments or control characters: such a name is no image id.
        if why := storage.bad_segment(rel) or shards.id_problem(rel):
            bad.skip(f"{src}/{rel}: unusable as an image id: it {why}")
            continue
        label = None
        if labels is not None:
            try:
                raw = _sidecar(src, rel, s3) if labels == "sidecar" else labels.get(rel)
                if raw is None:
                    raise ValueError("no row for it in the labels CSV")
                label = json.dumps(_value(_pick(raw, fields)), separators=(",", ":"), allow_nan=False)
            except KeyError as e:
                bad.skip(f"{src}/{rel}: its label has no field {e.args[0]!r}")
                continue
            except ValueError as e:
                bad.skip(f"{src}/{rel}: {e}")
                continue
        try:
            images.append(fit_image(storage.read_bytes(storage.join(src, rel), s3), target))
        except SimganError:
            raise  # storage errors (access denied, ...) fail the job
        except Exception as e:  # PIL: UnidentifiedImageError, OSError (truncated), ValueError, ...
            bad.skip(f"{src}/{rel}: not a readable image ({shards.image_error(e)})")
            continue
        ids.append(rel)
        stored.append(label)
    if not ids:
        return None, bad.reasons
    table = shards.make_table(ids, images, stored, target.encoding)
    return shards.write_shard(out, index, table, target.encoding), bad.reasons


def ingest(src: str, out: str, target: Target, shard_size: int = 5000, strict: bool = False,
           s3: S3Options = S3Options(), *, labels: str | None = None, label_fields: tuple[str, ...] = (),
           kind: str = "real", overwrite: bool = False, dry_run: bool = False) -> shards.Manifest | ownership.Plan:
    """labels: None, "sidecar" or a labels CSV's location (module docstring); kind: the manifest's
    kind ("real", or "synthetic" for simulator renders packed this way)."""
    if target.height < 1 or target.width < 1 or shard_size < 1:
        raise SimganError("height, width and shard size must be >= 1")
    if label_fields and labels is None:
        raise SimganError("--label-fields picks fields of labels: give --labels sidecar or --labels FILE.csv")
    src, out = storage.normalize(src), storage.normalize(out)
    inputs = {"--src": src, "--labels": labels if labels != "sidecar" else None}
    output = ownership.plan(out, "ingest", s3, inputs=inputs, overwrite=overwrite)  # before the source is listed
    if not storage.exists(src, s3):
        raise SimganError(f"{src}: not found")
    files = storage.list_files(src, IMAGE_SUFFIXES, s3)
    if not files:
        raise SimganError(f"{src}: no {'/'.join(IMAGE_SUFFIXES)} files")
    table = None if labels in (None, "sidecar") else read_label_csv(storage.normalize(labels), s3)
    if dry_run:
        return output
    ensure_ray()  # before the claim: nothing is written where Ray cannot start
    with ownership.claimed(out, "ingest", s3, overwrite=overwrite, inputs=inputs) as claim:
        return _ingest_all(src, claim, files, target, shard_size, strict, s3, labels, table, label_fields, kind)


def _ingest_all(src: str, out: Output, files: list[str], target: Target, shard_size: int, strict: bool,
                s3: S3Options, labels: str | None, table: dict | None, label_fields: tuple[str, ...],
                kind: str) -> shards.Manifest:
    calls = [(src, out, i, files[s : s + shard_size], target, strict, s3,
              labels if table is None else {f: table[f] for f in files[s : s + shard_size] if f in table},
              tuple(label_fields)) for i, s in enumerate(range(0, len(files), shard_size))]
    results = run_tasks(_ingest_shard, calls, "ingest shards")
    written = [entry for entry, _ in results if entry is not None]
    skipped = [x for _, bad in results for x in bad]
    count = sum(e["rows"] for e in written)
    if count == 0:
        raise SimganError(f"{src}: none of {len(files)} files could be read; first: {skipped[0]}")
    manifest = shards.Manifest(
        kind=kind,
        count=count,
        shape=[target.channels, target.height, target.width],
        shards=written,
        encoding=target.encoding,
        source={"src": src, "files": len(files), "fit": target.fit, "skipped": len(skipped),
                "skipped_files": skipped[:100],
                "label": "none" if labels is None else "sidecar json" if labels == "sidecar" else f"csv {labels}",
                "label_fields": list(label_fields)},
    )
    shards.write_manifest(out, manifest)
    return manifest

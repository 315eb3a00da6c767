"""Image sets as Ray Datasets: Parquet shards named by the manifest -> decoded float tensors.

Decoded batches hold "image": uint8 (n, C, H, W). Decoding runs in Ray Data `map_batches` tasks,
streamed to the training workers, which scale to float in [-1, 1] themselves (pixel p -> p / 127.5 - 1,
`unit_range`): moving uint8 through the object store is 4x less traffic than float32.
"""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from simgan_ray import storage
from simgan_ray.common.errors import BadItems, SimganError, first_line
from simgan_ray.sets import shards
from simgan_ray.sets.shards import Manifest
from simgan_ray.storage import S3Options

logger = logging.getLogger(__name__)


def unit_range(images):
    """uint8 (n, C, H, W) array or tensor -> float32 in [-1, 1] (on the tensor's device)."""
    return images.float() / 127.5 - 1.0 if hasattr(images, "float") else images.astype(np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float (n, C, H, W) in [-1, 1] -> uint8 (n, C, H, W), rounded."""
    return np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def decode_image(image_id: str, blob: bytes, shape: list[int], encoding: str = "png") -> np.ndarray:
    """An image's bytes in a set of `encoding` -> uint8 (C, H, W), which must be the set's [C, H, W]."""
    c, h, w = shape
    try:
        img = shards.decode_image(blob, encoding, shape)
    except Exception as e:  # PIL raises several types for corrupt or truncated data
        raise SimganError(f"image {image_id}: cannot decode ({shards.image_error(e)})") from None
    if img.shape != (c, h, w):
        raise SimganError(f"image {image_id}: shape {'x'.join(map(str, img.shape))} (CxHxW) != the set's {c}x{h}x{w}")
    return img


class SkipLedger:
    """Ray actor collecting the images and shards skipped as corrupt by read tasks anywhere in the
    cluster; each once, however many passes (epochs) meet it."""

    def __init__(self) -> None:
        self.skipped: dict[str, None] = {}  # insertion-ordered set

    def record(self, reasons: list[str]) -> None:
        self.skipped.update(dict.fromkeys(reasons))

    def report(self) -> list[str]:
        return list(self.skipped)


def new_skip_ledger():
    import ray

    return ray.remote(num_cpus=0)(SkipLedger).remote()


def decode_shard(uri: str, table, shape: list[int], encoding: str, bad: BadItems) -> np.ndarray:
    """A shard's "id" and "image" columns -> uint8 (n, C, H, W), the images `bad` lets through (an
    image that cannot be decoded fails or is skipped, named). Raw pixels of the set's size are one
    copy (`shards.raw_pixels`); anything else is decoded image by image."""
    if encoding == "raw" and (pixels := shards.raw_pixels(table["image"], shape)) is not None:
        return pixels
    good = []
    for image_id, blob in zip(table["id"].to_pylist(), table["image"].to_pylist(), strict=True):
        if (image := bad.attempt(uri, decode_image, image_id, blob, shape, encoding)) is not None:
            good.append(image)
    return np.stack(good) if good else np.empty((0, *shape), np.uint8)


def _read_shards(batch: dict, s3: S3Options, shape: list[int], encoding: str, strict: bool, ledger):
    """Read task: batch {"uri": shard URIs} -> one {"image": uint8 (n, C, H, W)} per shard, each
    yielded as soon as it is read. A shard that cannot be read whole (a corrupt data page behind an
    intact footer) or an image that cannot be decoded fails the job when `strict`, else is dropped
    and recorded in the ledger."""
    for uri in batch["uri"]:
        bad, images = BadItems(strict), None
        try:
            table = shards.read_shard(uri, s3, ("id", "image"))
        except SimganError as e:
            bad.skip(str(e))
        else:
            images = decode_shard(uri, table, shape, encoding, bad)
        if bad.reasons:
            logger.warning("skipping %d corrupt item(s), first: %s", len(bad.reasons), bad.reasons[0])
            import ray

            # Waited for: once this shard's images are handed on, its skips are in the ledger (rare, one call).
            ray.get(ledger.record.remote(bad.reasons))
        if images is not None:
            yield {"image": images}


def read_order(uris: list[str], passes: int, shuffle: bool, seed: int | None) -> list[str]:
    """The shards `passes` passes read, one after another: each pass every shard once, in the
    manifest's order or (`shuffle`) in a new order each pass drawn from `seed`."""
    rng = np.random.default_rng(seed)
    return [uris[i] for _ in range(passes) for i in (rng.permutation(len(uris)) if shuffle else range(len(uris)))]


# Read tasks one execution may list: a set of a few small shards read for a long run would
# otherwise list tens of thousands; past it the workers start a new execution per pass, as at 1.
MAX_READS = 4096


# Shards one read task reads at most: a Ray Data task costs about as much scheduling as reading a
# raw shard takes (benchmarks/RESULTS.md), so a task reads several.
MAX_SHARDS_PER_TASK = 8


# Blocks the read tasks may hold in the object store ahead of the consumers, per CPU of the cluster
# and at least: enough to keep every CPU reading. Ray Data's own bound is half the object store,
# so a set smaller than that was read whole ahead of a training step, on the cores the step uses
# (benchmarks/RESULTS.md), and the store's memory grew with the set.
READ_AHEAD_BLOCKS_PER_CPU = 4
READ_AHEAD_MIN_BLOCKS = 16


def read_ahead_bytes(block_bytes: int, cpus: float) -> int:
    """Object-store bytes the read tasks may hold ahead of the consumers: a few blocks per CPU."""
    return int(max(READ_AHEAD_MIN_BLOCKS, READ_AHEAD_BLOCKS_PER_CPU * cpus) * block_bytes)


def shards_per_task(reads: int, cpus: float) -> int:
    """How many shards each read task reads, one after another (each handed on as it is read): as
    many as leave every CPU two tasks or more to take, up to MAX_SHARDS_PER_TASK."""
    return int(max(1, min(MAX_SHARDS_PER_TASK, reads // max(2 * cpus, 1))))


def image_dataset(prefix: str, manifest: Manifest, s3: S3Options = S3Options(), *, images: int = 0,
                  shuffle_files: bool = False, seed: int | None = None, strict: bool = True, ledger=None):
    """Lazy, streaming Ray Dataset of the decoded images of the set at `prefix`: read tasks of our
    own, each reading a few of the manifest's shards (no object listing) and handing on each as it
    is read (one block per shard), so that a shard that cannot be read meets the same skip-or-fail
    policy as an image that cannot be decoded.

    `images`: how many its consumers will take in all; one execution then reads as many passes over
    the set as that needs (at least one), so a training worker reads on from one pass into the next:
    a new execution per pass stalls every worker at its start, every pass (the streaming split's
    epochs begin together; benchmarks/RESULTS.md). With `shuffle_files` each pass reads the shards
    in a new order, reproducibly from `seed`: only the list of shard names is shuffled, the images
    stream. Reading runs ahead of the consumers by `read_ahead_bytes` at most, a limit the dataset's
    execution options carry (Ray Train replaces them: `train.ingest_options` keeps it)."""
    import ray.data

    from simgan_ray.runtime.rayinternals import streaming_reads  # imports Ray: at use

    uris = shards.shard_uris(prefix, manifest)
    passes = max(1, min(-(-images // max(manifest.count, 1)), MAX_READS // max(len(uris), 1)))
    reads = read_order(uris, passes, shuffle_files, seed)
    if not ray.is_initialized():
        ray.init()  # what Ray Data would do, before asking the cluster's size
    cpus = ray.cluster_resources().get("CPU", 1)
    per_task = shards_per_task(len(reads), cpus)
    block_bytes = max((e["rows"] for e in manifest.shards), default=1) * math.prod(manifest.shape)
    # A block per shard: each is handed on as soon as it is read, not merged with the task's next.
    with streaming_reads(block_bytes=block_bytes):
        ds = ray.data.from_items([{"uri": uri} for uri in reads], override_num_blocks=-(-len(reads) // per_task))
    ds = ds.map_batches(_read_shards, batch_size=per_task, batch_format="numpy",
                        fn_kwargs={"s3": s3, "shape": manifest.shape, "encoding": manifest.encoding,
                                   "strict": strict, "ledger": ledger})
    options = ds.context.execution_options
    ahead = read_ahead_bytes(block_bytes, cpus)
    options.resource_limits = options.resource_limits.copy(
        object_store_memory=min(ahead, options.resource_limits.object_store_memory or ahead))
    return ds


def check_shards(prefix: str, manifest: Manifest, s3: S3Options = S3Options()) -> None:
    """Read every shard's Parquet footer (one small request each, in parallel): the schema must
    have the image columns and the row count must match the manifest. Names the bad shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, _ = storage.resolve(prefix, s3)
    required = {"id": pa.string(), "image": pa.binary(), "label": pa.string()}

    def check(entry: dict) -> None:
        uri = storage.join(prefix, entry["name"])
        try:
            meta = pq.read_metadata(storage.resolve(uri, s3)[1], filesystem=fs)
        except FileNotFoundError:
            raise SimganError(f"{uri}: shard listed in the manifest is missing") from None
        except (OSError, pa.ArrowException) as e:
            raise SimganError(f"{uri}: not a readable Parquet shard ({first_line(e)})") from None
        schema = meta.schema.to_arrow_schema()
        wrong = [f"no column {name!r} ({typ})" if schema.get_field_index(name) < 0 else
                 f"column {name!r} is {schema.field(name).type}, not {typ}"
                 for name, typ in required.items()
                 if schema.get_field_index(name) < 0 or not schema.field(name).type.equals(typ)]
        if wrong:
            extra = [n for n in schema.names if n not in shards.SCHEMA.names]
            raise SimganError(f"{uri}: wrong schema: {'; '.join(wrong)}"
                              + (f" (columns simgan-ray does not write: {', '.join(extra)})" if extra else ""))
        if meta.num_rows != entry["rows"]:
            raise SimganError(f"{uri}: {meta.num_rows} rows, the manifest says {entry['rows']}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(check, manifest.shards))


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
        check_shards(uri, m, s3)
        if m.count < min_count:
            raise SimganError(
                f"{name} set {uri} has {m.count} images, fewer than one batch on every worker "
                f"(batch_size x num_workers = {min_count})"
            )
    return syn, rl


def head_images(prefix: str, manifest: Manifest, n: int, s3: S3Options = S3Options()):
    """The first n images of a set, read directly from its first shards (driver-side, small n),
    decoded as the read tasks decode them; an image that cannot be decoded fails, named with its
    shard. -> (ids, uint8 (n, C, H, W), labels as JSON strings or None)."""
    ids, images, labels = [], [np.empty((0, *manifest.shape), np.uint8)], []
    for uri in shards.shard_uris(prefix, manifest):
        table = shards.read_shard(uri, s3).slice(0, n - len(ids))
        ids += table["id"].to_pylist()
        labels += table["label"].to_pylist()
        images.append(decode_shard(uri, table, manifest.shape, manifest.encoding, BadItems(strict=True)))
        if len(ids) >= n:
            break
    return ids, np.concatenate(images), labels


def head_columns(prefix: str, n: int, s3: S3Options, columns: tuple[str, ...] = ("id", "label")) -> dict[str, list]:
    """The first n rows' `columns` (no image decoded) -> {column: values}, in the order load_set reads."""
    manifest = shards.read_manifest(prefix, s3)
    out: dict[str, list] = {c: [] for c in columns}
    for uri in shards.shard_uris(prefix, manifest):
        table = shards.read_shard(uri, s3, columns)
        for c in columns:
            out[c] += table[c].to_pylist()[: n - len(out[c])]
        if len(out[columns[0]]) >= n:
            break
    return out


def _labels(raw: list, key: str, where: str) -> np.ndarray:
    try:
        return np.array([int(json.loads(s)[key]) for s in raw], np.int64)
    except (TypeError, KeyError, ValueError, json.JSONDecodeError):
        raise SimganError(f"{where}: every image needs a JSON label with an integer {key!r}") from None


def _targets(raw: list, key: str, where: str) -> np.ndarray:
    """Regression targets: each label's `key`, a number or a list of d numbers -> float32 (n, d)."""
    try:
        values = [json.loads(s)[key] for s in raw]
        out = np.array([v if isinstance(v, list) else [v] for v in values], np.float32)
    except (TypeError, KeyError, ValueError, json.JSONDecodeError):
        raise SimganError(f"{where}: every image needs a JSON label with a number or a list of numbers {key!r}, "
                          "the same length for all") from None
    if out.ndim != 2 or not np.isfinite(out).all():
        raise SimganError(f"{where}: the {key!r} labels are not one finite number or list of numbers per image")
    return out


def load_set(prefix: str, n: int, s3: S3Options, key: str | None,
             regression: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The first n images of a set as uint8 (n, C, H, W), with labels when `key` is given: class
    indices int64 (n,), or with `regression` targets float32 (n, d)."""
    manifest = shards.read_manifest(prefix, s3)
    _, images, labels = head_images(prefix, manifest, min(n, manifest.count), s3)
    if not key:
        return images, None
    return images, (_targets if regression else _labels)(labels, key, prefix)

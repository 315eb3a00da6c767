"""Where the input path's time goes: each stage of feeding the training step, alone, in one run.

For the digits shape (1 x 28 x 28) and the eye shape (1 x 35 x 55), on a set of N rendered images
written as Parquet shards to local disk in both shard encodings (png; raw pixels, zstd; object
storage is measured in `stream.py`), each stage's throughput in images/s per core (one process,
one thread, so the figures add up as costs), and each encoding's bytes per image on disk:

  read png / raw     pyarrow reads the shards' id and image columns (Parquet pages into Arrow buffers)
  decode png / raw   a shard's image column -> uint8 (N, C, H, W), as the read tasks do it
                     (`data.decode_shard`: PNG image by image, raw pixels in one copy)
  batch              uint8 (N, C, H, W) -> float tensors in [-1, 1] of 32, as the worker makes them
  shuffle            the same through the training worker's 5,000-image shuffle window (`sets/window.py`),
                     in chunks of 512 as the worker takes them
  ray png / raw      the whole Ray Data pipeline (its read tasks, `iter_torch_batches` of 32)
                     on a local Ray with 1 CPU: per core, everything above plus Ray's own work
  ray raw, ...       the same from raw shards as a training worker draws its batches of 32 (chunks of
                     16 batches, sliced), rows shuffled over 5,000 images by Ray Data's local shuffle
                     (`iter_torch_batches(local_shuffle_buffer_size=...)`, the workers' path before) or
                     by the worker's own shuffle window (`training.worker.batches`)
  h2d ...            uint8 chunks of 512 (a worker's handout) copied to the GPU from pageable memory,
                     from pinned memory, and pinned first (only where torch sees a GPU;
                     `gpu_common.host_to_device`, which scripts/gpu-check.sh runs without Ray)

Last, for the eye shape: the cores needed to feed one H100 at 67,624 images/s (the eye SimGAN step
measured in benchmarks/RESULTS.md) at each encoding's `ray` rate.

    .venv/bin/python benchmarks/stages.py --count 20000
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_common import host_to_device  # noqa: E402 (benchmarks/, this script's folder)

from simgan_ray.common.errors import BadItems  # noqa: E402
from simgan_ray.runtime.session import start_local_ray  # noqa: E402
from simgan_ray.sets import data, shards  # noqa: E402
from simgan_ray.sets.window import ShuffleWindow  # noqa: E402
from simgan_ray.storage import ownership  # noqa: E402
from simgan_ray.training.worker import batches  # noqa: E402

H100_EYE_STEP = 67_624  # images/s of the eye SimGAN step on one H100 (benchmarks/RESULTS.md, GPU)
SHAPES = {"digits": (1, 28, 28), "eye": (1, 35, 55)}
WINDOW = 5_000  # images shuffled over: the reference recipe's data.local_shuffle_buffer


def make_set(prefix: Path, shape: tuple[int, int, int], count: int, encoding: str) -> None:
    """Smooth random images (a blurred noise field per image, so PNG compresses as on renders)."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (count, *shape), np.uint8).astype(np.float32)
    smooth = (noise + np.roll(noise, 1, 2) + np.roll(noise, 1, 3) + np.roll(noise, (1, 1), (2, 3))) / 4
    images, ids = smooth.astype(np.uint8), [f"bench-{i:06d}" for i in range(count)]
    with ownership.claimed(str(prefix), "simulate") as out:  # a set of the benchmark's own, in a temp folder
        written = [shards.write_shard(out, i, shards.make_table(ids[s:s + 5000], images[s:s + 5000],
                                                                [None] * len(ids[s:s + 5000]), encoding), encoding)
                   for i, s in enumerate(range(0, count, 5000))]
        shards.write_manifest(out, shards.Manifest(kind="synthetic", count=count, shape=list(shape), shards=written,
                                                   encoding=encoding))


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def codec(prefix: Path, shape: tuple[int, int, int], count: int, encoding: str) -> tuple[dict, np.ndarray]:
    """The read and decode stages of one encoding's set, its bytes per image -> (rows, the images)."""
    manifest = shards.read_manifest(str(prefix))
    paths = [str(prefix / s["name"]) for s in manifest.shards]
    out = {f"bytes/image {encoding}": sum(Path(p).stat().st_size for p in paths) / count}
    tables = []
    out[f"read {encoding}"] = rate(lambda: tables.extend(pq.read_table(p, columns=["id", "image"]) for p in paths),
                                   count)
    images = []

    def decode() -> None:
        images.append(np.concatenate([data.decode_shard(path, table, list(shape), encoding, BadItems(strict=True))
                                      for path, table in zip(paths, tables, strict=True)]))

    out[f"decode {encoding}"] = rate(decode, count)
    return out, images[0]


def pipeline(prefix: Path, count: int, shuffle: str = "") -> float:
    """images/s of the whole Ray Data pipeline over the set at `prefix`, its second pass, in batches
    of 32: as Ray Data batches them (`shuffle=""`), or as a training worker draws them, chunks of
    16 batches sliced, rows shuffled over 5,000 images by Ray Data's local shuffle (`"ray"`, the
    workers' path before their own window) or by the worker's shuffle window (`"window"`,
    `training.worker.batches`)."""
    manifest = shards.read_manifest(str(prefix))
    ds = data.image_dataset(str(prefix), manifest, shuffle_files=True, seed=0)
    if shuffle == "window":  # the worker's own endless stream: count images a pass
        stream = batches(ds.iterator(), 32, WINDOW, torch.device("cpu"), 0)

        def through_ray() -> None:
            for _ in itertools.islice(stream, count // 32):
                pass
    elif shuffle == "ray":
        def through_ray() -> None:
            for chunk in ds.iter_torch_batches(batch_size=512, local_shuffle_buffer_size=WINDOW, local_shuffle_seed=0):
                [data.unit_range(chunk["image"][i:i + 32]) for i in range(0, len(chunk["image"]) - 31, 32)]
    else:
        def through_ray() -> None:
            for _ in ds.iter_torch_batches(batch_size=32, drop_last=True):
                pass

    through_ray()  # a first pass starts Ray Data's workers (and fills a window)
    return rate(through_ray, count)


def stages(root: Path, shape: tuple[int, int, int], count: int) -> dict[str, float]:
    out = {}
    for encoding in ("png", "raw"):
        rows, images = codec(root / encoding, shape, count, encoding)
        out.update(rows)
    pixels = torch.from_numpy(images)
    out["batch"] = rate(lambda: [data.unit_range(pixels[i:i + 32]) for i in range(0, count - 31, 32)], count)

    def shuffled() -> None:  # chunks of 512 (the worker's: 16 batches of 32) through a 5,000-image window
        window = ShuffleWindow(WINDOW, 0)
        for start in range(0, count, 512):
            images = window.push(pixels[start:start + 512])
            [data.unit_range(images[i:i + 32]) for i in range(0, len(images) - 31, 32)]

    out["shuffle"] = rate(shuffled, count)
    for encoding in ("png", "raw"):
        out[f"ray {encoding}"] = pipeline(root / encoding, count)
    out["ray raw, Ray Data's local shuffle"] = pipeline(root / "raw", count, "ray")
    out["ray raw, shuffle window"] = pipeline(root / "raw", count, "window")
    if torch.cuda.is_available():
        out.update(host_to_device(shape))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    start_local_ray(1)  # one CPU: the `ray` row is per core, as the others
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in SHAPES.items():
            for encoding in ("png", "raw"):
                make_set(Path(tmp) / name / encoding, shape, args.count, encoding)
            results[name] = stages(Path(tmp) / name, shape, args.count)
    rows = list(results["digits"])
    print(f"images/s per core (bytes/image: on disk), {args.count} images per shape, local disk, torch threads 1")
    print("| stage | " + " | ".join(f"{n} {'x'.join(map(str, SHAPES[n]))}" for n in results) + " |")
    print("| --- | " + " | ".join("---" for _ in results) + " |")
    for row in rows:
        print(f"| {row} | " + " | ".join(f"{results[n].get(row, float('nan')):,.0f}" for n in results) + " |")
    eye = results["eye"]
    print(f"cores to feed one H100 at {H100_EYE_STEP:,} eye images/s at the `ray` rate: "
          f"{H100_EYE_STEP / eye['ray png']:.1f} from png shards, {H100_EYE_STEP / eye['ray raw']:.1f} from raw shards")


if __name__ == "__main__":
    main()

"""Streaming benchmark: is Ray Data fast enough to feed SimGAN training from S3?

One run, one machine, one moto S3 server on loopback holding N synthetic images:
  (a) direct:  pyarrow reads + decodes the shards, one process per core (the ceiling)
  (b) ray:     the Ray Data pipeline training uses (shard list -> read+decode map_batches), no-op consumer,
               reading through pyarrow's native S3 client (the default)
  (b2) s3fs:   the same pipeline reading through s3fs (fsspec, `s3.client: s3fs`), side by side
               (native is measured before and after it)
  (f) tasks:   the pipeline's read function as plain Ray tasks (no Ray Data), what Ray itself costs
  (e) split:   the same pipeline through the streaming split the training workers read (2 no-op
               consumers), by default and with `data.preserve_order: true` (what the exact reruns
               cost), alternated twice
  (c) train:   the same pipeline feeding the real SimGAN update step (2 R + 1 D updates per step), drawn
               as a training worker draws its batches (`training.worker.batches`: a 5,000-image shuffle window);
               (c0) the same with Ray Data's default read-ahead instead of the dataset's bound, alternated twice
  (d) memory:  the same update step on in-memory tensors
Prints images/s of each, peak RSS of the driver and of Ray's worker processes, and last the
ratios (b)/(a) (goal >= 0.8), (f)/(a), (b2)/(b) (what s3fs costs against the native client), ordered/default
of (e), (c)/(d) (goal >= 0.95) and (c0)/(d).

    .venv/bin/python benchmarks/stream.py --count 100000 [--encoding raw] [--step-threads N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simgan_ray import storage  # noqa: E402
from simgan_ray.common.errors import BadItems  # noqa: E402
from simgan_ray.model.history import ImageHistory  # noqa: E402
from simgan_ray.runtime.session import start_local_ray  # noqa: E402
from simgan_ray.sets import data, shards  # noqa: E402
from simgan_ray.sets.simulate import simulate  # noqa: E402
from simgan_ray.storage import S3Options  # noqa: E402
from simgan_ray.training.config import load_config  # noqa: E402
from simgan_ray.training.gan import Gan, discriminator_update, make_gan, refiner_update  # noqa: E402
from simgan_ray.training.worker import batches  # noqa: E402
from tests.s3server import MotoServer, use_fake_credentials  # noqa: E402


def _decode_shard(uri: str, shape: list[int], endpoint: str, encoding: str) -> int:
    import pyarrow.parquet as pq

    s3 = S3Options(endpoint_url=endpoint)
    fs, path = storage.resolve(uri, s3)
    table = pq.read_table(path, filesystem=fs, columns=["id", "image"])
    images = data.decode_shard(uri, table, shape, encoding, BadItems(strict=True))
    return len(images)  # the same work as the pipeline's decode step


def direct(prefix: str, manifest, endpoint: str) -> float:
    """(a) images/s, shards decoded in a process pool of one process per core."""
    uris = shards.shard_uris(prefix, manifest)
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        n = sum(pool.map(_decode_shard, uris, [manifest.shape] * len(uris), [endpoint] * len(uris),
                         [manifest.encoding] * len(uris)))
    return n / (time.perf_counter() - start)


def ray_tasks(prefix: str, manifest, s3: S3Options) -> float:
    """(f) images/s of the pipeline's own read function as plain Ray tasks, one shard each, two per
    CPU in flight, the arrays fetched by the driver: what Ray itself costs, without Ray Data's
    executor, blocks and batches."""
    import ray

    read = ray.remote(num_cpus=1)(lambda uri: next(data._read_shards(
        {"uri": [uri]}, s3, manifest.shape, manifest.encoding, True, None))["image"])
    uris, n = shards.shard_uris(prefix, manifest), 0
    start = time.perf_counter()
    pending = [read.remote(uri) for uri in uris[: 2 * (os.cpu_count() or 1)]]
    for uri in [*uris[len(pending):], *[None] * len(pending)]:
        done, pending = ray.wait(pending)
        n += len(ray.get(done[0]))
        if uri is not None:
            pending.append(read.remote(uri))
    return n / (time.perf_counter() - start)


def through_ray(ds, batch_size: int) -> float:
    """(b) images/s through the Ray Data pipeline into a consumer that does nothing."""
    start, n = time.perf_counter(), 0
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        n += len(batch["image"])
    return n / (time.perf_counter() - start)


def through_split(ds, workers: int, batch_size: int, preserve_order: bool) -> float:
    """(e) images/s through `streaming_split(workers, equal=True)`, one no-op consumer thread per
    split. The options are those Ray Train gives the training workers' shards (train.ingest_options:
    the dataset's own, its read-ahead bound included, `preserve_order` set)."""
    ds.context.execution_options.preserve_order = preserve_order
    splits = ds.streaming_split(workers, equal=True)
    counts = [0] * workers

    def consume(rank: int) -> None:
        for batch in splits[rank].iter_batches(batch_size=batch_size, batch_format="numpy"):
            counts[rank] += len(batch["image"])

    threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(workers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def fresh_gan(cfg) -> Gan:
    torch.manual_seed(0)
    return make_gan(cfg, ImageHistory(3200, 0))


def train_steps(gan: Gan, batches, steps: int, batch_size: int) -> float:
    """Images/s of `steps` adversarial steps: 2 R updates + 1 D update = 4 batches per step."""
    start = time.perf_counter()
    for _ in range(steps):
        refiner_update(gan, next(batches), True)
        refiner_update(gan, next(batches), True)
        discriminator_update(gan, next(batches), next(batches))
    return steps * 4 * batch_size / (time.perf_counter() - start)


def ray_worker_pids():
    """This machine's Ray worker processes ("ray::..."): Ray Data's read tasks, its split coordinator
    and idle workers, not the driver or Ray's daemons."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                yield pid
        except OSError:
            continue


def ray_worker_private_mb() -> float:
    """Largest private resident memory (RssAnon) among this machine's Ray worker processes, MiB.
    Not VmRSS: that also counts the pages of Ray's shared-memory object store a worker touched."""
    peak = 0.0
    for pid in ray_worker_pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peak


def ray_worker_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this machine's Ray worker processes."""
    total = 0.0
    for pid in ray_worker_pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.peak = max(self.peak, ray_worker_private_mb())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=32, help="per update, as in jobs/digits.yaml")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--encoding", choices=["png", "raw"], default="png", help="how the shards hold each image")
    ap.add_argument("--step-threads", type=int, default=os.cpu_count(), help="torch threads of (c) and (d)")
    args = ap.parse_args()

    use_fake_credentials()
    import ray

    server = MotoServer()
    try:
        # As the library starts its Ray (address="local"): a stale or foreign Ray on the machine never captures it.
        start_local_ray(os.cpu_count() or 1)
        s3 = S3Options(endpoint_url=server.endpoint)
        prefix = server.make_bucket("bench") + "/synthetic"
        t = time.perf_counter()
        manifest = simulate(prefix, args.count, args.shard_size, seed=0, s3=s3, encoding=args.encoding)
        sim_s = time.perf_counter() - t
        print(f"simulate: {args.count} images in {sim_s:.1f}s = {args.count / sim_s:.0f} images/s "
              f"({len(manifest.shards)} {args.encoding} shards, {os.cpu_count()} cores, into moto S3)")

        a = direct(prefix, manifest, server.endpoint)
        print(f"(a) pyarrow direct read+decode, {os.cpu_count()} processes: {a:,.0f} images/s")

        sampler = RssSampler()
        sampler.start()
        ds = data.image_dataset(prefix, manifest, s3, shuffle_files=True, seed=0)
        b = through_ray(ds, 256)
        print(f"(b) Ray Data pipeline -> no-op consumer: {b:,.0f} images/s")
        via_s3fs = S3Options(endpoint_url=server.endpoint, client="s3fs")
        b2 = through_ray(data.image_dataset(prefix, manifest, via_s3fs, shuffle_files=True, seed=0), 256)
        print(f"(b2) the same pipeline through s3fs: {b2:,.0f} images/s")
        # Native again after s3fs, so that neither client alone profits from running later (warm Ray workers).
        b_again = through_ray(data.image_dataset(prefix, manifest, s3, shuffle_files=True, seed=0), 256)
        print(f"(b) again, after (b2): {b_again:,.0f} images/s")
        f = ray_tasks(prefix, manifest, s3)
        print(f"(f) the same read function as plain Ray tasks: {f:,.0f} images/s")

        split = {False: [], True: []}
        for ordered in (False, True, False, True):  # alternated: neither profits from running later
            ds_e = data.image_dataset(prefix, manifest, s3, shuffle_files=True, seed=0)
            split[ordered].append(through_split(ds_e, 2, args.batch_size, ordered))
        for ordered, rates in split.items():
            print(f"(e) streaming split to 2 no-op consumers, preserve_order={ordered}: "
                  + ", ".join(f"{r:,.0f}" for r in rates) + " images/s")
        e_ratio = sum(split[True]) / sum(split[False])

        cfg = load_config(ROOT / "jobs" / "digits.yaml")
        torch.set_num_threads(args.step_threads)  # both (c) and (d); by default on every core
        def stepped(bounded: bool) -> tuple[float, float]:
            """(c): images/s of the step fed by the pipeline, and the cores Ray's worker processes
            used meanwhile; `bounded`: with the dataset's read-ahead bound, else Ray Data's default."""
            # As in `simgan-ray train`, the training step owns the cores it computes on (there: the
            # workers' CPU reservations) and Ray Data decodes on what is left: one core here.
            train_ds = data.image_dataset(prefix, manifest, s3, shuffle_files=True, seed=1)
            options = train_ds.context.execution_options
            options.resource_limits = options.resource_limits.copy(
                cpu=max(1, os.cpu_count() - 1), **({} if bounded else {"object_store_memory": float("inf")}))
            # The training worker's own stream: chunks of 16 batches through its 5,000-image shuffle window.
            stream = batches(train_ds.iterator(), args.batch_size, 5000, torch.device("cpu"), 0)
            train_steps(fresh_gan(cfg), stream, 5, args.batch_size)  # warm-up
            ray_cpu, wall = ray_worker_cpu_s(), time.perf_counter()
            rate = train_steps(fresh_gan(cfg), stream, args.train_steps, args.batch_size)
            ray_cores = (ray_worker_cpu_s() - ray_cpu) / (time.perf_counter() - wall)
            stream.close()  # ends the pipeline's iterator while Ray is still up
            return rate, ray_cores

        steps = {True: [], False: []}
        for bounded in (True, False, True, False):  # alternated: neither profits from running later
            steps[bounded].append(stepped(bounded))
        sampler.stop.set()
        for bounded, runs in steps.items():
            print(f"(c{'' if bounded else '0'}) Ray Data pipeline -> SimGAN step (batch {args.batch_size}, "
                  f"{args.step_threads} torch threads), "
                  + ("read-ahead bounded (data.read_ahead_bytes)" if bounded else "Ray Data's default read-ahead")
                  + ": " + ", ".join(f"{r:,.0f}" for r, _ in runs) + " images/s; Ray's worker processes used "
                  + ", ".join(f"{cores:.2f}" for _, cores in runs) + " cores meanwhile")
        c, c0 = (sum(r for r, _ in steps[k]) / len(steps[k]) for k in (True, False))

        fixed = [torch.rand(args.batch_size, *manifest.shape) * 2 - 1 for _ in range(16)]
        memory = itertools.cycle(fixed)
        train_steps(fresh_gan(cfg), memory, 5, args.batch_size)
        d = train_steps(fresh_gan(cfg), memory, args.train_steps, args.batch_size)
        print(f"(d) in-memory tensors -> SimGAN step ({args.step_threads} torch threads): {d:,.0f} images/s")

        driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory: driver RSS {driver_mb:,.0f} MiB; largest Ray worker private RSS "
              f"{sampler.peak:,.0f} MiB, sampled every 0.5 s (for {args.count:,} images of {manifest.shape})")
        print(f"ratio (b)/(a) = {b / a:.2f}  (goal >= 0.80); warm, (b) after (b2): {b_again / a:.2f}")
        print(f"ratio (f)/(a) = {f / a:.2f}  (Ray tasks without Ray Data)")
        print(f"ratio (b2)/(b) = {b2 / ((b + b_again) / 2):.2f}  (s3fs against the native client, (b) the mean of "
              "its two runs)")
        print(f"ratio (e) ordered/default = {e_ratio:.2f}  (what data.preserve_order costs the split)")
        print(f"ratio (c)/(d) = {c / d:.2f}  (goal >= 0.95; (c) the mean of its runs); with Ray Data's default "
              f"read-ahead, (c0)/(d) = {c0 / d:.2f}")
    finally:
        ray.shutdown()
        server.stop()


if __name__ == "__main__":
    main()

"""Training overhead: the whole `simgan-ray train` path with one worker vs a bare PyTorch loop.

One run, one machine, the same model, batch, schedule and thread count on both sides:
  bare:  the SimGAN update functions of `simgan_ray.training.gan` (K_g R updates + K_d D updates per step,
         history buffer included) in this process, on in-memory tensors: the ceiling
  ray:   `fit()`, i.e. Ray Train (1 worker) + Ray Data streaming the same images from Parquet
         shards on local disk + history buffer + metric reports + checkpoints
The bare loop runs in a fresh process with the workers' malloc settings (train.WORKER_ENV), before
and after the Ray path; its figure is their mean. Once more with glibc's defaults, for what those cost.
images/s counts every image an update consumes (R: b synthetic; D: b real + b refined), as the
`images_per_s` metric does. The Ray path's figure is its steady state: the median of its reports
in the adversarial phase, the first one (warm-up) left out; its end-to-end time is printed too.
A control runs the bare loop once more while a spinning process keeps another core busy: how much
of the gap is the machine's cores being shared rather than anything Ray does.
Last line: ray / bare (goal >= 0.90).

    .venv/bin/python benchmarks/train_overhead.py [--threads 2] [--steps 300]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simgan_ray.model.history import ImageHistory  # noqa: E402
from simgan_ray.runtime.session import free_port, start_local_ray  # noqa: E402
from simgan_ray.sets import data  # noqa: E402
from simgan_ray.sets.simulate import simulate  # noqa: E402
from simgan_ray.storage import S3Options  # noqa: E402
from simgan_ray.training.config import load_config  # noqa: E402
from simgan_ray.training.gan import discriminator_update, make_gan, refiner_update  # noqa: E402
from simgan_ray.training.train import WORKER_ENV, fit  # noqa: E402


def in_memory_images(root: str, manifest, n: int = 4096) -> torch.Tensor:
    """The first `n` images of a simulated set as uint8 (n, C, H, W) with standard strides, the
    layout the workers' batches have. (A permuted (n, H, W, 1) array counts as contiguous with
    strides (HW, 1, W, 1): convolution then gives 1-channel weights channels_last gradients, and
    DDP copies them out of its buckets every step.)"""
    return torch.from_numpy(data.head_images(root, manifest, n, S3Options())[1])  # uint8 (n, C, H, W)


def bare(cfg, images: torch.Tensor, steps: int, prepare=lambda model: model) -> float:
    """images/s of `steps` adversarial steps on in-memory uint8 images (n, C, H, W); `prepare`
    wraps R and D as in `make_gan` (e.g. DistributedDataParallel)."""
    torch.manual_seed(cfg.seed)
    gan = make_gan(cfg, ImageHistory(cfg.history_size, cfg.seed), prepare)
    b, n = cfg.batch_size, len(images)
    cursor = 0

    def batch() -> torch.Tensor:  # the same uint8 -> [-1, 1] conversion the workers do
        nonlocal cursor
        cursor = (cursor + b) % (n - b)
        return data.unit_range(images[cursor: cursor + b])

    def step() -> int:
        for _ in range(cfg.schedule.k_g):
            refiner_update(gan, batch(), True)
        for _ in range(cfg.schedule.k_d):
            discriminator_update(gan, batch(), batch())
        return (cfg.schedule.k_g + 2 * cfg.schedule.k_d) * b

    for _ in range(20):  # warm-up, and fills some history
        step()
    start, count = time.perf_counter(), 0
    for _ in range(steps):
        count += step()
    return count / (time.perf_counter() - start)


def bare_group(cfg, images: torch.Tensor, steps: int, n: int, threads: int, env: dict[str, str],
               ddp: bool = False) -> float:
    """Summed images/s of `n` fresh processes running `bare` together, each started with `env` on
    top of this one's (malloc settings act at process start) and `threads` torch threads; with
    `ddp`, as one gloo DDP group."""
    ctx = multiprocessing.get_context("spawn")
    port = free_port()  # for the gloo rendezvous
    start, results = ctx.Barrier(n), ctx.Queue()
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        procs = [ctx.Process(target=_bare_rank, args=(cfg, images, steps, threads, rank, n, port, ddp, start, results))
                 for rank in range(n)]
        for proc in procs:
            proc.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    rates: list[float] = []
    while len(rates) < n:
        try:
            rates.append(results.get(timeout=5))
        except queue.Empty:  # a rank that died never reports (and its peers may wait for it)
            if dead := [rank for rank, proc in enumerate(procs) if proc.exitcode]:
                for proc in procs:
                    proc.kill()
                raise RuntimeError(f"bare rank(s) {dead} of {n} exited early (error above)") from None
    for proc in procs:
        proc.join()
    return sum(rates)


def _bare_rank(cfg, images, steps, threads, rank, world, port, ddp, start, results) -> None:
    torch.set_num_threads(threads)
    prepare = lambda model: model  # noqa: E731
    if ddp:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        prepare = DistributedDataParallel
    start.wait()  # all ranks imported and ready: the runs overlap from their first step
    results.put(bare(cfg, images, steps, prepare))
    if ddp:
        dist.destroy_process_group()


def bare_process(cfg, images: torch.Tensor, steps: int, threads: int, env: dict[str, str],
                 spin: bool = False) -> float:
    """`bare` in one fresh process started with `env`; with `spin`, while another process keeps a
    second core busy."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if spin else None
    try:
        return bare_group(cfg, images, steps, 1, threads, env)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20_000, help="synthetic images (also used as the real set)")
    ap.add_argument("--steps", type=int, default=300, help="adversarial steps measured")
    ap.add_argument("--threads", type=int, default=2, help="torch threads = the worker's CPUs")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="run.precision, both sides")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start_local_ray(args.threads + 1)  # the worker's CPUs plus one for Ray Data's decode tasks
        manifest = simulate(f"{tmp}/synthetic", args.count, 2000, seed=0)
        simulate(f"{tmp}/real", args.count, 2000, seed=1)
        cfg = load_config(ROOT / "jobs" / "digits.yaml", {
            "data.synthetic": f"{tmp}/synthetic", "data.real": f"{tmp}/real", "run.storage": f"{tmp}/runs",
            "run.name": "overhead", "run.num_workers": 1, "run.cpus_per_worker": args.threads,
            "schedule.pretrain_refiner_steps": 10, "schedule.pretrain_discriminator_steps": 10,
            "schedule.steps": args.steps, "run.report_every": 25, "run.checkpoint_every": 100,
            "run.precision": args.precision,
        })
        images = in_memory_images(f"{tmp}/synthetic", manifest)
        # The bare loop runs with the training workers' environment (train.WORKER_ENV: malloc
        # settings), before and after the Ray path, and counts as the mean of the two: this shared
        # 2-core VM drifts by 10% over minutes, more than the effects measured.
        bare_before = bare_process(cfg, images, args.steps, args.threads, WORKER_ENV)

        t = time.perf_counter()
        result = fit(cfg)
        wall = time.perf_counter() - t
        reports = [m for m in result.metrics if m["phase"] == "adversarial"][1:]
        adversarial = [m["images_per_s"] for m in reports]
        ray_ips = statistics.median(adversarial)
        waiting = statistics.median(m["input_wait_frac"] for m in reports)
        total_images = (cfg.schedule.k_g + 2 * cfg.schedule.k_d) * cfg.batch_size * args.steps
        print(f"ray path: `fit`, 1 worker x {args.threads} threads, batch {cfg.batch_size}, {args.steps} adversarial "
              f"steps: median {ray_ips:,.0f} images/s over {len(adversarial)} reports "
              f"(range {min(adversarial):,.0f}-{max(adversarial):,.0f}), waiting for Ray Data {waiting:.1%} of "
              f"the time; end to end {wall:.1f} s including "
              f"Ray Train start-up = {total_images / wall:,.0f} adversarial images/s")

        bare_after = bare_process(cfg, images, args.steps, args.threads, WORKER_ENV)
        bare_ips = (bare_before + bare_after) / 2
        print(f"bare: the same updates in one process on in-memory tensors, {args.threads} threads, the workers' "
              f"malloc settings: {bare_ips:,.0f} images/s (before the Ray path {bare_before:,.0f}, "
              f"after {bare_after:,.0f})")
        default_ips = bare_process(cfg, images, args.steps, args.threads, {})
        print(f"bare, glibc's default malloc settings: {default_ips:,.0f} images/s "
              f"= {default_ips / bare_after:.2f} of the run just before")
        # Control: the bare loop again while one process spins on another core, as Ray Data's decode
        # and Ray's own processes use the cores the worker leaves free. Separates what the cores'
        # sharing costs (memory bandwidth, caches, the VM's scheduling) from what Ray's path adds.
        busy_ips = bare_process(cfg, images, args.steps, args.threads, WORKER_ENV, spin=True)
        print(f"bare, another core busy (a spinning process): {busy_ips:,.0f} images/s "
              f"= {busy_ips / bare_after:.2f} of bare; ray / that = {ray_ips / busy_ips:.2f}")
    print(f"ratio ray / bare = {ray_ips / bare_ips:.2f}  (goal >= 0.90)")


if __name__ == "__main__":
    main()

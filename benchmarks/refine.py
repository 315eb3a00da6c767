"""Refinement benchmark: how close does the S3 -> S3 job come to the bare refiner?

CPU (default), one run on one machine, a moto S3 server on loopback holding N synthetic digits:
  bare:  the refiner's forward pass on in-memory uint8 batches (scaling and clamping included),
         torch using every core
  job:   `simgan-ray refine` S3 -> S3 (read, decode, refine, encode, write, commit), one actor per
         core with one torch thread each, the same batch size
and last the ratio job/bare (goal >= 0.85).

--gpu: the bare refiner only (pure torch, no Ray needed) on CUDA in bf16 for the paper's eye
refiner (55x35 grayscale, 64 features, 4 ResNet blocks): images/s, achieved TFLOP/s and the
fraction of the GPU's dense bf16 peak (--peak-tflops, default 989 for an H100 SXM).

    .venv/bin/python benchmarks/refine.py --count 20000
    python3 benchmarks/refine.py --gpu          # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simgan_ray.networks import Refiner, RefinerConfig  # noqa: E402


def refiner_flops(cfg: RefinerConfig, height: int, width: int) -> float:
    """Forward FLOPs per image (2 per multiply-add) of the refiner's convolutions."""
    k2, f, c = cfg.kernel**2, cfg.features, cfg.channels
    macs = height * width * (c * f * k2 + cfg.blocks * 2 * f * f * k2 + f * c)
    return 2.0 * macs


def bare_images_per_s(refiner: torch.nn.Module, images: torch.Tensor, batch: int, device: str,
                      bf16: bool, seconds: float = 5.0) -> float:
    """images: uint8 (n, C, H, W) already on `device`; the same per-batch work as the job's actor."""
    def run_once(start: int) -> None:
        x = images[start : start + batch].float() / 127.5 - 1.0
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
            y = refiner(x)
        ((y.float() + 1.0) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)

    starts = list(range(0, len(images) - batch + 1, batch))
    for s in starts[:3]:
        run_once(s)  # warm-up
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for s in starts:
            run_once(s)
            done += batch
        sync()
    return done / (time.perf_counter() - t0)


def gpu(args) -> None:
    cfg = RefinerConfig(channels=1, features=64, blocks=4)
    h, w = 35, 55
    refiner = Refiner(cfg).cuda().eval().to(memory_format=torch.channels_last)
    name = torch.cuda.get_device_name()
    flops = refiner_flops(cfg, h, w)
    print(f"device: {name}; eye refiner {cfg}; {flops / 1e9:.3f} GFLOP per 55x35 image (forward)")
    for batch in (512, 2048, 8192):
        images = torch.randint(0, 256, (batch * 4, 1, h, w), dtype=torch.uint8, device="cuda")
        for compiled in (False, True):
            model = torch.compile(refiner) if compiled else refiner
            rate = bare_images_per_s(model, images, batch, "cuda", bf16=True)
            tflops = rate * flops / 1e12
            print(f"bf16 batch {batch:5d} {'compiled' if compiled else 'eager   '}: {rate:,.0f} images/s = "
                  f"{tflops:.1f} TFLOP/s = {100 * tflops / args.peak_tflops:.1f}% of {args.peak_tflops:.0f} peak")


def cpu(args) -> None:
    import ray

    from simgan_ray import checkpoints, storage
    from simgan_ray.config import load_config
    from simgan_ray.refine import RefineJob, refine
    from simgan_ray.simulate import simulate
    from simgan_ray.storage import S3Options
    from tests.s3server import MotoServer, use_fake_credentials

    use_fake_credentials()
    cores = os.cpu_count()
    server = MotoServer()
    try:
        ray.init(include_dashboard=False, log_to_driver=False)
        s3 = S3Options(endpoint_url=server.endpoint)
        bucket = server.make_bucket("bench")
        simulate(f"{bucket}/synthetic", args.count, args.shard_size, seed=0, s3=s3)
        cfg = load_config(ROOT / "jobs" / "digits.yaml").refiner
        torch.manual_seed(0)
        refiner = Refiner(cfg).eval()
        with tempfile.TemporaryDirectory() as tmp:
            checkpoints.write_export(Path(tmp), refiner, {"image_shape": [1, 28, 28]})
            storage.copy_dir_to(tmp, f"{bucket}/model", s3)

        images = torch.randint(0, 256, (args.batch_size * 8, 1, 28, 28), dtype=torch.uint8)
        torch.set_num_threads(cores)
        threaded = bare_images_per_s(refiner, images, args.batch_size, "cpu", bf16=False)
        torch.set_num_threads(1)
        single = bare_images_per_s(refiner, images, args.batch_size, "cpu", bf16=False)
        # The ceiling: the better of one process on every core, or perfect scaling of one thread.
        bare = max(threaded, single * cores)
        print(f"bare refiner ({cfg.features} features, {cfg.blocks} blocks), batch {args.batch_size}: "
              f"{threaded:,.0f} images/s on {cores} threads, {single:,.0f} on 1 thread; ceiling {bare:,.0f}")

        summary = refine(RefineJob(model=f"{bucket}/model", input=f"{bucket}/synthetic", output=f"{bucket}/refined",
                                   batch_size=args.batch_size, concurrency=cores, cpus_per_worker=1, s3=s3))
        job = summary.images_per_s
        print(f"refine job S3 -> S3, {cores} actors x 1 thread: {summary.rows_out:,} images in "
              f"{summary.seconds:.1f}s = {job:,.0f} images/s ({summary.bytes_written / 1e6:.1f} MB written)")
        print(f"ratio job/bare = {job / bare:.2f}  (goal >= 0.85)")
    finally:
        ray.shutdown()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20_000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    args = ap.parse_args()
    gpu(args) if args.gpu else cpu(args)


if __name__ == "__main__":
    main()

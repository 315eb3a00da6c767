"""Refinement benchmark: how close does the S3 -> S3 job come to the bare refiner?

CPU (default), one run on one machine, a moto S3 server on loopback holding N synthetic digits:
  bare:  the refiner's forward pass on in-memory uint8 batches (scaling and clamping included),
         torch using every core
  job:   `simgan-ray refine` S3 -> S3 (read, decode, refine, encode, write, commit), one actor per
         core with one torch thread each, the same batch size
and last the ratio job/bare (goal >= 0.85).

--gpu: the bare refiner only (pure torch, no Ray needed) on CUDA in bf16 + channels_last for the
paper's eye refiner (55x35 grayscale, 64 features, 4 ResNet blocks), uint8 in and out on the
device: images/s, achieved TFLOP/s and the fraction of the GPU's dense bf16 peak (--peak-tflops,
default by the device's name: 989 for an H100 SXM or H200), for each variant (gpu_common.Variant)
at each batch size, the largest first:
  bf16+cl                       eager
  +bench                        torch.backends.cudnn.benchmark: cuDNN picks its algorithms by timing
  +bench+cudagraph              the eager forward captured once in a CUDA graph, replayed per batch
  +bench+pad8                   the 1-channel stem input and head output padded to 8 channels
  +bench+trunk                  the ResNet blocks alone on bf16 input (no uint8 conversion): the
                                convolutions' own ceiling
  +compile                      torch.compile, default mode
  +bench+compile+cudagraphs     mode="reduce-overhead": inductor's kernels replayed as CUDA graphs
  +bench+pad8+compile+cudagraphs
  +bench+compile+autotune       mode="max-autotune-no-cudagraphs": Triton templates timed against cuDNN
Each variant has a time cap (--variant-cap) and its own try; rows go to --json as measured.

    .venv/bin/python benchmarks/refine.py --count 20000
    python3 benchmarks/refine.py --gpu [--json rows.jsonl]      # on a GPU machine
    .venv/bin/python benchmarks/refine.py --gpu --device cpu --quick   # checks the --gpu path (tiny model)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simgan_ray.model.networks import Refiner, RefinerConfig  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_common import (  # noqa: E402
    Budget,
    PaddedRefiner,
    Rows,
    Variant,
    attempt,
    compiled,
    device_name,
    log,
    peak_tflops,
    rate,
    report,
)

BF16 = Variant(bf16=True)
BENCH = dataclasses.replace(BF16, bench=True)
INFERENCE = (
    BF16,
    BENCH,
    dataclasses.replace(BENCH, graph=True),
    dataclasses.replace(BENCH, pad=8),
    dataclasses.replace(BENCH, trunk=True),
    dataclasses.replace(BF16, compile="default"),
    dataclasses.replace(BENCH, compile="reduce-overhead"),
    dataclasses.replace(BENCH, pad=8, compile="reduce-overhead"),
    dataclasses.replace(BENCH, compile="max-autotune-no-cudagraphs"),
)


def refiner_flops(cfg: RefinerConfig, height: int, width: int, trunk: bool = False) -> float:
    """Forward FLOPs per image (2 per multiply-add) of the refiner's convolutions (trunk: of its
    ResNet blocks alone)."""
    k2, f, c = cfg.kernel**2, cfg.features, cfg.channels
    blocks = cfg.blocks * 2 * f * f * k2
    macs = height * width * (blocks if trunk else c * f * k2 + blocks + f * c)
    return 2.0 * macs


def bare_images_per_s(refiner, images: torch.Tensor, batch: int, device: str, bf16: bool,
                      seconds: float = 5.0, warmup: int = 3) -> tuple[float, float]:
    """(images/s, warm-up s); images: uint8 (n, C, H, W) already on `device`; the same per-batch
    work as the job's actor, batch after batch through `images`."""
    starts = itertools.cycle(range(0, len(images) - batch + 1, batch))

    def run_once() -> None:
        start = next(starts)
        x = images[start : start + batch].float() / 127.5 - 1.0
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=bf16):
            y = refiner(x)
        ((y.float() + 1.0) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)

    return rate(run_once, batch, device, seconds, warmup)


def graphed(model: torch.nn.Module, example: torch.Tensor):
    """`model`'s bf16 forward on a static input, captured once in a CUDA graph: each call copies its
    input in and replays the eager kernels without launching them one by one."""
    static = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        for _ in range(3):  # warm-up off the default stream, as capture wants (cuDNN's timing runs here)
            model(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # No autocast cache: its weight casts must be part of the graph, not tensors kept from outside it.
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, cache_enabled=False), torch.cuda.graph(graph):
        out = model(static)

    def call(x: torch.Tensor) -> torch.Tensor:
        static.copy_(x)
        graph.replay()
        return out

    return call


def infer(v: Variant, cfg: RefinerConfig, images: torch.Tensor, batch: int, args) -> tuple[float, float]:
    """(images/s, warm-up s) of one variant on uint8 `images`."""
    dev, (h, w) = args.device, images.shape[2:]
    torch.manual_seed(0)
    refiner = Refiner(cfg).eval()
    if v.trunk:
        blocks = refiner.blocks.to(dev, memory_format=torch.channels_last)
        # bf16 already: a cast of F channels per call would add a memory pass that R's 1 channel does not cost.
        x = (torch.rand(batch, cfg.features, h, w, device=dev, dtype=torch.bfloat16) * 2 - 1).contiguous(
            memory_format=torch.channels_last)

        def trunk_once() -> None:
            with torch.inference_mode(), torch.autocast(dev, torch.bfloat16):
                blocks(x)

        return rate(trunk_once, batch, dev, args.seconds, args.warmup)
    model = (PaddedRefiner(refiner, v.pad) if v.pad else refiner).to(dev, memory_format=torch.channels_last)
    if v.compile:
        model = compiled(model, v.compile, dev)
    if v.graph:
        model = graphed(model, images[:batch].float() / 127.5 - 1.0)
    return bare_images_per_s(model, images, batch, dev, bf16=True, seconds=args.seconds, warmup=args.warmup)


def gpu(args) -> None:
    cfg, (h, w), batches = RefinerConfig(channels=1, features=64, blocks=4), (35, 55), args.batches
    if args.quick:  # the model's structure at sizes a CPU runs in seconds
        cfg, (h, w), batches, args.seconds, args.warmup = RefinerConfig(features=16, blocks=2), (24, 24), [4, 2], 0.0, 1
    budget = Budget(args.budget_s)
    name = device_name(args.device)
    peak = peak_tflops(name, args.peak_tflops)
    rows = Rows(args.json, bench="refine_gpu", device=name, torch=torch.__version__, peak_tflops=peak)
    log(f"device: {name}; eye refiner {cfg}; {refiner_flops(cfg, h, w) / 1e9:.3f} GFLOP per {w}x{h} image "
        f"(forward); peak taken as {peak} TFLOP/s")
    best = 0.0
    for batch in sorted(batches, reverse=True):
        images = torch.randint(0, 256, (batch * 4, 1, h, w), dtype=torch.uint8, device=args.device)
        for v in INFERENCE:
            common = {"model": "eye", "variant": v.name, "batch": batch, "loop": "inference"}
            cap = min(args.variant_cap, budget.left())
            if cap < (1 if args.quick else 30 if v.compile else 5) or (v.graph and args.device != "cuda"):
                why = "CUDA graphs need CUDA" if v.graph and args.device != "cuda" else "stage budget spent"
                rows.add(**common, error=f"skipped: {why}")
                log(f"  {v.name} batch {batch}: skipped, {why}")
                continue
            torch.backends.cudnn.benchmark = v.bench
            with attempt(rows, common, cap):
                ips, warm = infer(v, cfg, images, batch, args)
                frac = report(rows, common, f"{v.name:38s} batch {batch:5d}:", ips,
                              ips * refiner_flops(cfg, h, w, trunk=v.trunk) / 1e12, warm, peak)
                if frac is not None and not v.trunk:
                    best = max(best, frac)
    log(f"best refiner inference: {100 * best:.1f}% of peak (goal >= 40%)")


def cpu(args) -> None:
    import ray

    from simgan_ray import storage
    from simgan_ray.apply.refine import RefineJob, refine
    from simgan_ray.model.export import write_export
    from simgan_ray.runtime.session import start_local_ray
    from simgan_ray.sets.simulate import simulate
    from simgan_ray.storage import S3Options
    from simgan_ray.training.config import load_config
    from tests.s3server import MotoServer, use_fake_credentials

    use_fake_credentials()
    cores = os.cpu_count()
    server = MotoServer()
    try:
        # As the library starts its Ray (address="local"): a stale or foreign Ray on the machine never captures it.
        start_local_ray(os.cpu_count() or 1)
        s3 = S3Options(endpoint_url=server.endpoint)
        bucket = server.make_bucket("bench")
        simulate(f"{bucket}/synthetic", args.count, args.shard_size, seed=0, s3=s3)
        cfg = load_config(ROOT / "jobs" / "digits.yaml").refiner
        torch.manual_seed(0)
        refiner = Refiner(cfg).eval()
        with tempfile.TemporaryDirectory() as tmp:
            write_export(Path(tmp), refiner, {"image_shape": [1, 28, 28]})
            storage.copy_dir_to(tmp, f"{bucket}/model", s3)

        images = torch.randint(0, 256, (args.batch_size * 8, 1, 28, 28), dtype=torch.uint8)
        torch.set_num_threads(cores)
        threaded = bare_images_per_s(refiner, images, args.batch_size, "cpu", bf16=False)[0]
        torch.set_num_threads(1)
        single = bare_images_per_s(refiner, images, args.batch_size, "cpu", bf16=False)[0]
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
    ap.add_argument("--gpu", action="store_true", help="the bare refiner's variants on one device (below)")
    ap.add_argument("--device", default="cuda", help="--gpu: the device (cpu: with --quick, a check)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak (0: by the device's name)")
    ap.add_argument("--batches", type=int, nargs="+", default=[8192, 512], help="--gpu: batch sizes")
    ap.add_argument("--seconds", type=float, default=2.0, help="--gpu: measured time per variant and batch")
    ap.add_argument("--warmup", type=int, default=3, help="--gpu: untimed batches first")
    ap.add_argument("--variant-cap", type=float, default=60.0, help="--gpu: seconds one variant may take")
    ap.add_argument("--budget-s", type=float, default=1e9, help="--gpu: seconds in all (variants left: skipped)")
    ap.add_argument("--json", help="--gpu: append one JSON line per measured row to this file")
    ap.add_argument("--quick", action="store_true", help="--gpu: tiny model, batches and times: a check that it runs")
    args = ap.parse_args()
    gpu(args) if args.gpu else cpu(args)


if __name__ == "__main__":
    main()

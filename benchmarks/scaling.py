"""Data-parallel scaling of `simgan-ray train`: the same job on 1, 2, ... workers, side by side.

Each worker computes with `--threads` torch threads (run.cpus_per_worker) on its own batch of
`--batch-size` images (so the global batch grows with the workers, as in the scaling notes of
cluster/README.md). Throughput is the job's steady-state `images_per_s` (median of its adversarial
reports, the first one left out). Beside each Ray run (CPU only), two ceilings measured right after
it, N processes started together, each computing the same updates on in-memory tensors
(`train_overhead.bare_group`, the workers' malloc settings):
  independent   no communication: what N workers could reach on this machine's shared cores
  gloo DDP      R and D wrapped in DistributedDataParallel over loopback gloo, as the workers do:
                what the gradient all-reduces (K_g + K_d per step) cost on top
so the gap of the Ray path splits into the machine, the all-reduce and Ray (Data, Train, reports).
Prints images/s per worker count and, last, the scaling efficiency of the largest count:
images/s(N) / (N x images/s(1)).

On one machine N workers share its cores: give each worker cores of its own (N x threads <= cores)
or the figure measures oversubscription, not scaling. With `--gpu`, one GPU per worker (NCCL).

    .venv/bin/python benchmarks/scaling.py --workers 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simgan_ray.runtime.session import start_local_ray  # noqa: E402
from simgan_ray.sets.simulate import simulate  # noqa: E402
from simgan_ray.training.config import load_config  # noqa: E402
from simgan_ray.training.train import WORKER_ENV, fit  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from train_overhead import bare_group, in_memory_images  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPUs) per worker")
    ap.add_argument("--batch-size", type=int, default=32, help="per worker, as in jobs/digits.yaml")
    ap.add_argument("--steps", type=int, default=200, help="adversarial steps per run")
    ap.add_argument("--count", type=int, default=20_000)
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()
    if not args.gpu and max(args.workers) * args.threads > (os.cpu_count() or 1):
        print(f"note: {max(args.workers)} workers x {args.threads} threads > {os.cpu_count()} cores: oversubscribed")

    results, independent, ddp = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        start_local_ray(max(args.workers) * args.threads + 1)  # + 1 CPU for Ray Data's decode tasks
        manifest = simulate(f"{tmp}/synthetic", args.count, 2000, seed=0)
        simulate(f"{tmp}/real", args.count, 2000, seed=1)
        images = in_memory_images(f"{tmp}/synthetic", manifest)
        for n in args.workers:
            cfg = load_config(ROOT / "jobs" / "digits.yaml", {
                "data.synthetic": f"{tmp}/synthetic", "data.real": f"{tmp}/real", "run.storage": f"{tmp}/runs",
                "run.name": f"scale-{n}", "run.num_workers": n, "run.cpus_per_worker": args.threads,
                "run.gpus_per_worker": int(args.gpu), "batch_size": args.batch_size,
                "schedule.pretrain_refiner_steps": 10, "schedule.pretrain_discriminator_steps": 10,
                "schedule.steps": args.steps, "run.report_every": 20, "run.checkpoint_every": 1000,
            })
            result = fit(cfg)
            ips = [m["images_per_s"] for m in result.metrics if m["phase"] == "adversarial"][1:]
            results[n] = statistics.median(ips)
            print(f"{n} worker(s) x {args.threads} thread(s), batch {args.batch_size} per worker: "
                  f"{results[n]:,.0f} images/s (reports {min(ips):,.0f}-{max(ips):,.0f})")
            if args.gpu:
                continue
            independent[n] = bare_group(cfg, images, args.steps, n, args.threads, WORKER_ENV)
            print(f"  bare, {n} independent process(es): {independent[n]:,.0f} images/s; "
                  f"ray / that = {results[n] / independent[n]:.2f}")
            if n > 1:
                ddp[n] = bare_group(cfg, images, args.steps, n, args.threads, WORKER_ENV, ddp=True)
                print(f"  bare, {n} processes in gloo DDP: {ddp[n]:,.0f} images/s = "
                      f"{ddp[n] / independent[n]:.2f} of independent; ray / that = {results[n] / ddp[n]:.2f}")
    first = args.workers[0]
    base = results[first] / first
    for n in args.workers[1:]:
        print(f"speed-up x{results[n] / results[first]:.2f} for x{n / first:.0f} workers")
        if not args.gpu:  # the speed-up as a product of its factors
            print(f"  = the machine x{independent[n] / independent[first]:.2f} (independent bare processes)"
                  f" x gloo all-reduce {ddp[n] / independent[n]:.2f} (bare DDP / independent)"
                  f" x Ray's path at {n} {results[n] / ddp[n]:.2f} (of bare DDP)"
                  f" / Ray's path at {first} {results[first] / independent[first]:.2f} (of bare)")
    top = max(args.workers)
    print(f"scaling efficiency at {top} workers = {results[top] / (top * base):.2f}")


if __name__ == "__main__":
    main()

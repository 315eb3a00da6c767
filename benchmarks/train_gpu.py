"""GPU path of training: the SimGAN step of `simgan_ray.training.gan` on one device, precision, kernels and
compilation side by side, as images/s and as a fraction of the device's dense bf16 peak FLOP/s.

Models (paper): the eye-gaze refiner (1 x 35 x 55, 64 features, 4 ResNet blocks, 3x3 kernels,
batch 512) and the hand-depth refiner (1 x 224 x 224, 64 features, 10 blocks, 7x7 kernels; batch
`--hand-batch`, 32 by default, as the paper's 512 would need ~2 TB of saved activations), each
with the local discriminator of the paper (96, 64, 32, 32). Variants (gpu_common.Variant), all
measured in this one process:
  fp32                    eager, float32 (cuDNN's convolutions in TF32, torch's default)
  bf16+cl                 autocast to bfloat16 (Gan.amp), channels_last weights and inputs
  bf16+cl+fused           the same with fused Adam kernels
  bf16+cl+fused+compile   R and D wrapped by torch.compile
and toward 40% of peak, each on top of bf16+cl+fused:
  +bench                  torch.backends.cudnn.benchmark: cuDNN picks its convolution algorithms by timing
  +bench+pad8             R's 1-channel stem input and head output padded to 8 channels (PaddedRefiner)
  +bench+trunk            R's ResNet blocks alone (64 channels in and out; refiner loop only): what
                          the convolutions reach without the 1-channel ends
  +bench+4xbatch          4 times the batch
  +bench+compile+cudagraphs         torch.compile(mode="reduce-overhead"): inductor + CUDA graphs
  +bench+pad8+compile+cudagraphs    both
Two loops per variant:
  refiner f+b     R forward + backward + Adam step on the self-regularization loss only: the
                  FLOPs are R's alone (3 x forward: backward costs twice the forward), so the
                  fraction of peak is the refiner's forward+backward efficiency (goal >= 40%)
  SimGAN step     K_g = 2 R updates (through the frozen D) + K_d = 1 D update with the history
                  buffer, i.e. `refiner_update` and `discriminator_update` as the workers run them;
                  its TFLOP/s count R's work only, 7 R forwards per b images (2 updates x 3, plus
                  D's step refining its batch): D's convolutions would add 2.3% (eye), 0.2% (hand)
Variants run in the order above (outer loop), models inside, so a tight --budget-s still measures
every model's first variants. Each variant has a time cap (--variant-cap) and its own try: a
failure or overrun is a row with its error, and the next variant runs. Rows go to --json as measured.
Last line: the best refiner f+b fraction of peak.

    python3 benchmarks/train_gpu.py [--json rows.jsonl] [--only eager|compiled]   # on a GPU machine
    .venv/bin/python benchmarks/train_gpu.py --device cpu --quick   # checks the script (tiny models), no figures
    .venv/bin/python benchmarks/train_gpu.py --device cpu --models digits --threads 1 --only eager
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simgan_ray.model.history import ImageHistory  # noqa: E402
from simgan_ray.model.losses import LocalAdversarialLoss, SelfRegularization  # noqa: E402
from simgan_ray.model.networks import DiscriminatorConfig, LocalDiscriminator, Refiner, RefinerConfig  # noqa: E402
from simgan_ray.training.gan import Gan, discriminator_update, refiner_update  # noqa: E402

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
    step_marker,
)
from refine import refiner_flops  # noqa: E402

PAPER_D = DiscriminatorConfig(channels=1)
MODELS = {  # name: (refiner config, discriminator config, (H, W), batch)
    "eye": (RefinerConfig(channels=1, features=64, blocks=4, kernel=3), PAPER_D, (35, 55), 512),
    "hand": (RefinerConfig(channels=1, features=64, blocks=10, kernel=7), PAPER_D, (224, 224), 32),
    # jobs/digits-long.yaml, per worker: for the CPU (`--device cpu --models digits`)
    "digits": (RefinerConfig(channels=1, features=32, blocks=4),
               DiscriminatorConfig(channels=1, widths=(64, 48, 32, 32)), (28, 28), 32),
}
BF16 = Variant(bf16=True, fused=True)
BENCH = dataclasses.replace(BF16, bench=True)
VARIANTS = (
    Variant(),
    Variant(bf16=True),
    BF16,
    dataclasses.replace(BF16, compile="default"),
    BENCH,
    dataclasses.replace(BENCH, pad=8),
    dataclasses.replace(BENCH, trunk=True),
    dataclasses.replace(BENCH, batch_scale=4),
    dataclasses.replace(BENCH, compile="reduce-overhead"),
    dataclasses.replace(BENCH, pad=8, compile="reduce-overhead"),
)


def build(cfg: RefinerConfig, d_cfg: DiscriminatorConfig, device: str, v: Variant) -> Gan:
    torch.manual_seed(0)
    fmt = torch.channels_last if v.bf16 else torch.contiguous_format
    r = Refiner(cfg)
    r = r.blocks if v.trunk else PaddedRefiner(r, v.pad) if v.pad else r
    r = r.to(device, memory_format=fmt)
    d = LocalDiscriminator(d_cfg).to(device, memory_format=fmt)
    opt_r = torch.optim.Adam(r.parameters(), lr=1e-4, betas=(0.5, 0.999), fused=v.fused)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.999), fused=v.fused)
    if v.compile:
        # The update functions call D's bare module (`unwrap`, a no-op here) and R under no_grad:
        # the compiled wrappers serve both.
        r, d = compiled(r, v.compile, device), compiled(d, v.compile, device)
    # bf16 exactly as training runs it (Gan.amp): autocast around the forward passes only. An
    # autocast around whole updates (backward and optimizer step included) measured 339 against
    # 648 images/s for the digits step on this CPU.
    return Gan(r, d, opt_r, opt_d, LocalAdversarialLoss("sum"), SelfRegularization(0.1, "identity", "sum"),
               ImageHistory(4 * 512, seed=0), amp=torch.bfloat16 if v.bf16 else None)


def loops(gan: Gan, v: Variant, channels: int, h: int, w: int, batch: int, dev: str) -> list[tuple]:
    """(loop, step, images per step, R forwards per image) on random images in [-1, 1]: the refiner
    loop, then (not for the trunk) the SimGAN step."""
    fmt = torch.channels_last if v.bf16 else torch.contiguous_format
    # The trunk's F-channel input in bf16 already: casting it per call would add a memory pass that R's
    # 1-channel input does not cost.
    dtype = torch.bfloat16 if v.trunk and v.bf16 else torch.float32
    x = (torch.rand(batch, channels, h, w, device=dev, dtype=dtype) * 2 - 1).contiguous(memory_format=fmt)
    y = (torch.rand(batch, channels, h, w, device=dev) * 2 - 1).contiguous(memory_format=fmt)
    mark = step_marker(v)

    def refiner_only() -> None:
        mark()
        refiner_update(gan, x, with_adversary=False)

    def simgan_step() -> None:
        for _ in range(2):
            mark()
            refiner_update(gan, x, with_adversary=True)
        mark()
        discriminator_update(gan, x, y)

    # Backward costs two forwards. SimGAN step: 2 x b images through R, b real + b refined through D,
    # and 7 R forwards per b (2 updates x 3, plus D's step refining its batch).
    refiner = [("refiner f+b", refiner_only, batch, 3.0)]
    return refiner if v.trunk else [*refiner, ("SimGAN step", simgan_step, 4 * batch, 7 / 4)]


def run_variant(v: Variant, model: str, args, peak: float | None, rows: Rows, budget: Budget) -> float:
    """Measures one variant of one model into `rows`; returns R's f+b fraction of peak (0 if none)."""
    cfg, d_cfg, (h, w), batch = MODELS[model]
    batch = 2 if args.quick else (args.hand_batch if model == "hand" else batch)
    if args.quick:  # the models' structure (kernels, D) at sizes a CPU runs in seconds
        cfg, (h, w) = dataclasses.replace(cfg, features=16, blocks=min(cfg.blocks, 2)), (min(h, 24), min(w, 24))
    batch *= v.batch_scale
    flops = refiner_flops(cfg, h, w, trunk=v.trunk)
    channels = cfg.features if v.trunk else cfg.channels
    common = {"model": model, "variant": v.name, "batch": batch}
    cap = min(args.variant_cap, budget.left())
    if cap < (1 if args.quick else 40 if v.compile else 15):  # a compilation takes tens of seconds
        rows.add(**common, error="skipped: stage budget spent")
        log(f"  {model} {v.name}: skipped, stage budget spent")
        return 0.0
    torch.backends.cudnn.benchmark = v.bench
    where, best = {**common, "loop": "build"}, 0.0
    with attempt(rows, where, cap):
        gan = build(cfg, d_cfg, args.device, v)
        for loop, step, images, forwards in loops(gan, v, channels, h, w, batch, args.device):
            where["loop"] = loop
            ips, warm = rate(step, images, args.device, args.seconds, args.warmup)
            frac = report(rows, where, f"{model:6s} {v.name:44s} {loop:12s}", ips, ips * forwards * flops / 1e12,
                          warm, peak)
            if loop == "refiner f+b" and frac is not None and not v.trunk:  # the trunk is not R
                best = frac
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak (0: by the device's name)")
    ap.add_argument("--hand-batch", type=int, default=32)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["eye", "hand"])
    ap.add_argument("--only", choices=["eager", "compiled"], help="only the eager, or only the compiled variants")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seconds", type=float, default=2.0, help="measured time per loop")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls before each loop")
    ap.add_argument("--variant-cap", type=float, default=100.0, help="seconds one variant of one model may take")
    ap.add_argument("--budget-s", type=float, default=1e9, help="seconds for the whole run (variants left: skipped)")
    ap.add_argument("--json", help="append one JSON line per measured row to this file")
    ap.add_argument("--quick", action="store_true", help="tiny models, batches and times: a check that it runs")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.warmup = 0.0, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = Budget(args.budget_s)
    name = device_name(args.device)
    peak = peak_tflops(name, args.peak_tflops)
    log(f"device: {name}; torch {torch.__version__}; peak taken as {peak} TFLOP/s")
    rows = Rows(args.json, bench="train_gpu", device=name, torch=torch.__version__, peak_tflops=peak)
    variants = [v for v in VARIANTS if args.only is None or bool(v.compile) == (args.only == "compiled")]
    best = 0.0
    for v in variants:
        for model in args.models:
            best = max(best, run_variant(v, model, args, peak, rows, budget))
    log(f"best refiner forward+backward: {100 * best:.1f}% of peak (goal >= 40%)")


if __name__ == "__main__":
    main()

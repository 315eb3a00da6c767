"""GPU path of training: the SimGAN step of `simgan_ray.train` on one device, precision and
compilation options side by side, as images/s and as a fraction of the device's peak FLOP/s.

Models (paper): the eye-gaze refiner (1 x 35 x 55, 64 features, 4 ResNet blocks, 3x3 kernels,
batch 512) and the hand-depth refiner (1 x 224 x 224, 64 features, 10 blocks, 7x7 kernels; batch
`--hand-batch`, 32 by default, as the paper's 512 would need ~2 TB of saved activations), each
with the local discriminator of the paper (96, 64, 32, 32). Variants, each measured in this one
process:
  fp32            eager, float32
  bf16+cl         autocast to bfloat16, channels_last weights and inputs
  bf16+cl+fused   the same with fused Adam kernels
  bf16+cl+fused+compile   R and D wrapped by torch.compile
Two loops per variant:
  refiner f+b     R forward + backward + Adam step on the self-regularization loss only: the
                  FLOPs are R's alone (3 x forward: backward costs twice the forward), so the
                  fraction of peak is the refiner's forward+backward efficiency (goal >= 40%)
  SimGAN step     K_g = 2 R updates (through the frozen D) + K_d = 1 D update with the history
                  buffer, i.e. `refiner_update` and `discriminator_update` as the workers run them
Last line: the best refiner f+b fraction of peak.

    python3 benchmarks/train_gpu.py                      # on a GPU machine (H100: --peak-tflops 989)
    .venv/bin/python benchmarks/train_gpu.py --device cpu --quick   # checks the script (small images), no figures
    .venv/bin/python benchmarks/train_gpu.py --device cpu --models digits --threads 1   # the digits model on a CPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simgan_ray.history import ImageHistory  # noqa: E402
from simgan_ray.losses import LocalAdversarialLoss, SelfRegularization  # noqa: E402
from simgan_ray.networks import DiscriminatorConfig, LocalDiscriminator, Refiner, RefinerConfig  # noqa: E402
from simgan_ray.train import Gan, discriminator_update, refiner_update  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from refine import refiner_flops  # noqa: E402

PAPER_D = DiscriminatorConfig(channels=1)
MODELS = {  # name: (refiner config, discriminator config, (H, W), batch)
    "eye": (RefinerConfig(channels=1, features=64, blocks=4, kernel=3), PAPER_D, (35, 55), 512),
    "hand": (RefinerConfig(channels=1, features=64, blocks=10, kernel=7), PAPER_D, (224, 224), 32),
    # jobs/digits-long.yaml, per worker: for the CPU (`--device cpu --models digits`)
    "digits": (RefinerConfig(channels=1, features=32, blocks=4),
               DiscriminatorConfig(channels=1, widths=(64, 48, 32, 32)), (28, 28), 32),
}
VARIANTS = {  # name: (bf16 autocast + channels_last, fused Adam, torch.compile)
    "fp32": (False, False, False),
    "bf16+cl": (True, False, False),
    "bf16+cl+fused": (True, True, False),
    "bf16+cl+fused+compile": (True, True, True),
}


def build(cfg: RefinerConfig, d_cfg: DiscriminatorConfig, device: str, bf16: bool, fused: bool,
          compiled: bool) -> Gan:
    torch.manual_seed(0)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    r = Refiner(cfg).to(device, memory_format=fmt)
    d = LocalDiscriminator(d_cfg).to(device, memory_format=fmt)
    opt_r = torch.optim.Adam(r.parameters(), lr=1e-4, betas=(0.5, 0.999), fused=fused)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.999), fused=fused)
    if compiled:
        # The update functions call D's bare module (`unwrap`, a no-op here) and R under no_grad:
        # the compiled wrappers serve both.
        r, d = torch.compile(r), torch.compile(d)
    # bf16 exactly as training runs it (Gan.amp): autocast around the forward passes only. An
    # autocast around whole updates (backward and optimizer step included) measured 339 against
    # 648 images/s for the digits step on this CPU.
    return Gan(r, d, opt_r, opt_d, LocalAdversarialLoss("sum"), SelfRegularization(0.1, "identity", "sum"),
               ImageHistory(4 * 512, seed=0), amp=torch.bfloat16 if bf16 else None)


def rate(step, images_per_call: int, device: str, seconds: float, warmup: int = 3) -> float:
    """images/s of repeated `step()` calls, after `warmup` calls (compilation happens there)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        done += images_per_call
    sync()
    return done / (time.perf_counter() - t0)


def measure(gan: Gan, channels: int, h: int, w: int, batch: int, dev: str, bf16: bool,
            seconds: float) -> tuple[float, float]:
    """(refiner f+b images/s, SimGAN step images/s) on random images in [-1, 1]."""
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    x = (torch.rand(batch, channels, h, w, device=dev) * 2 - 1).contiguous(memory_format=fmt)
    y = (torch.rand(batch, channels, h, w, device=dev) * 2 - 1).contiguous(memory_format=fmt)

    def refiner_only() -> None:
        refiner_update(gan, x, with_adversary=False)

    def simgan_step() -> None:
        for _ in range(2):
            refiner_update(gan, x, with_adversary=True)
        discriminator_update(gan, x, y)

    # SimGAN step images: 2 x b through R, b real + b refined through D.
    return rate(refiner_only, batch, dev, seconds), rate(simgan_step, 4 * batch, dev, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    ap.add_argument("--hand-batch", type=int, default=32)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["eye", "hand"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured time per loop")
    ap.add_argument("--quick", action="store_true", help="tiny batches and times: a check that it runs")
    args = ap.parse_args()
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; peak taken as {args.peak_tflops:.0f} TFLOP/s")
    best = 0.0
    for model in args.models:
        cfg, d_cfg, (h, w), batch = MODELS[model]
        batch = 2 if args.quick else (args.hand_batch if model == "hand" else batch)
        if args.quick:
            h, w = min(h, 32), min(w, 32)  # the hand model at 224x224 takes minutes per step on a CPU
        flops = refiner_flops(cfg, h, w)
        print(f"{model}: refiner {cfg.features} features, {cfg.blocks} blocks, {cfg.kernel}x{cfg.kernel}, "
              f"{h}x{w}, batch {batch}: {flops / 1e9:.2f} GFLOP per image forward")
        for variant, (bf16, fused, compiled) in VARIANTS.items():
            if compiled and dev == "cpu":
                continue  # compilation alone takes minutes on a CPU
            gan = build(cfg, d_cfg, dev, bf16, fused, compiled)
            r_ips, s_ips = measure(gan, cfg.channels, h, w, batch, dev, bf16, 0.2 if args.quick else args.seconds)
            frac = r_ips * 3 * flops / 1e12 / args.peak_tflops
            best = max(best, frac)
            print(f"  {variant:22s} refiner f+b {r_ips:12,.0f} images/s = {r_ips * 3 * flops / 1e12:7.1f} TFLOP/s "
                  f"= {100 * frac:5.1f}% of peak | SimGAN step {s_ips:12,.0f} images/s")
    print(f"best refiner forward+backward: {100 * best:.1f}% of peak (goal >= 40%)")


if __name__ == "__main__":
    main()

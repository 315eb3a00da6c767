"""What the GPU benchmarks share (train_gpu.py, refine.py --gpu; scripts/gpu-check.sh runs them all):
the variants and their names, the device's peak, rows written to a JSON-lines file as they are
measured (a run cut short keeps what it measured), a time cap per variant, R with its 1-channel
ends padded, and the summary table. Pure torch: the GPU machine has no Ray and no pydantic.

    python3 benchmarks/gpu_common.py env --out DIR      # DIR/env.json: device, versions, peak, measured ceilings
    python3 benchmarks/gpu_common.py summary --out DIR  # DIR/summary.md from DIR/<bench>.jsonl, printed too
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import signal
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simgan_ray.model.networks import Refiner  # noqa: E402

# Dense bf16 tensor-core peak in TFLOP/s by a fragment of the device's name (vendor datasheets, SXM
# parts unless named); the first fragment found wins, so the PCIe and NVL parts come before the SXM ones.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0))
BENCHES = ("train_gpu", "refine_gpu")  # their rows: DIR/<bench>.jsonl, in this order in the summary
LOOPS = {"refiner f+b": 0, "SimGAN step": 1, "inference": 2}
COMPILE_MODES = {  # torch.compile mode: its part of a variant's name
    "default": "compile",
    "reduce-overhead": "compile+cudagraphs",  # inductor's kernels replayed as CUDA graphs
    "max-autotune-no-cudagraphs": "compile+autotune",  # inductor times Triton templates against ATen per shape
}


@dataclass(frozen=True)
class Variant:
    """One way of running the refiner; its name lists what it adds, e.g. bf16+cl+fused+bench+pad8."""

    bf16: bool = False  # autocast to bfloat16 around the forward passes, channels_last weights and inputs
    fused: bool = False  # Adam's fused kernels (training)
    bench: bool = False  # torch.backends.cudnn.benchmark: cuDNN times its algorithms per shape, no heuristic
    graph: bool = False  # the eager forward captured once in a CUDA graph and replayed (inference)
    pad: int = 0  # R's 1-channel stem input and head output padded with zeros to this many channels
    trunk: bool = False  # R's ResNet blocks alone, F channels in and out: the convolutions' own ceiling
    batch_scale: int = 1  # times the model's batch
    compile: str = ""  # a COMPILE_MODES key, or "" for eager

    @property
    def name(self) -> str:
        parts = ["bf16+cl" if self.bf16 else "fp32"]
        parts += [p for p, on in (("fused", self.fused), ("bench", self.bench), ("cudagraph", self.graph),
                                  (f"pad{self.pad}", self.pad), ("trunk", self.trunk),
                                  (f"{self.batch_scale}xbatch", self.batch_scale > 1)) if on]
        return "+".join(parts + ([COMPILE_MODES[self.compile]] if self.compile else []))


def peak_tflops(device_name: str, override: float = 0.0) -> float | None:
    """Dense bf16 peak of the device: `override` if given, else from PEAK_BF16_TFLOPS, else None."""
    return override or next((p for fragment, p in PEAK_BF16_TFLOPS if fragment in device_name), None)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or platform.machine()})"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Rows:
    """Measured rows, each appended to a JSON-lines file (and flushed) as soon as it is measured, so a
    stage killed at its time cap keeps every row before the one it was in."""

    def __init__(self, path: str | None, **common) -> None:
        self.path, self.common = path, common

    def add(self, **row) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({**self.common, **row, "at": time.strftime("%H:%M:%S")}) + "\n")


def report(rows: Rows, where: dict, label: str, ips: float, tflops: float, warm: float,
           peak: float | None) -> float | None:
    """Writes a measured row and its log line; returns its fraction of `peak` (None without one)."""
    frac = tflops / peak if peak else None
    rows.add(**where, images_per_s=ips, tflops=tflops, warmup_s=warm, error=None)
    log(f"  {label} {ips:12,.0f} images/s = {tflops:7.1f} TFLOP/s"
        + (f" = {100 * frac:5.1f}% of peak" if frac is not None else "") + f" (warm-up {warm:.1f} s)")
    return frac


class Budget:
    """The seconds a benchmark process may still spend (gpu-check.sh gives each stage a share of its 8
    minutes; its `timeout` is the hard stop, this the soft one that still writes a row)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class OverTime(Exception):
    """A variant ran past its time cap (a compilation, usually)."""


@contextmanager
def time_cap(seconds: float):
    """Raises OverTime inside the block after `seconds` (SIGALRM, so the main thread only: Python
    notices it between bytecodes, and a long C call overruns the cap by its own length)."""
    def fire(signum, frame):
        raise OverTime(f"over its {seconds:.0f} s cap")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def compiled(module: nn.Module, mode: str, device: str) -> nn.Module:
    """torch.compile in `mode`, static shapes (each batch size its own kernels). On a CPU (the --quick
    checks) the aot_eager backend instead: it traces forward and backward (graph breaks,
    recompilations) without generating code, which takes inductor minutes there."""
    if device == "cuda":
        return torch.compile(module, mode=mode, dynamic=False)
    return torch.compile(module, backend="aot_eager", dynamic=False)


@contextmanager
def attempt(rows: Rows, where: dict, cap: float):
    """One variant's block, run under time_cap(cap) after freeing what the variant before left (its
    memory, its compiled graphs and CUDA graph pools, so they neither serve nor crowd this one). A
    failure (out of memory, a compile error, the cap) becomes a row with the error, with `where`'s
    fields as they are then, and the run goes on."""
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    try:
        with time_cap(cap):
            yield
    except Exception as e:
        error = f"{type(e).__name__} after {time.perf_counter() - t0:.0f} s: {e}"[:600]
        rows.add(**where, error=error)
        log(f"  {where['model']} {where['variant']} batch {where['batch']} {where['loop']}: {error}")
        traceback.print_exc(limit=3)


def step_marker(variant: Variant):
    """Called before each step: with CUDA graphs (reduce-overhead) it tells torch that the outputs of
    the previous step's replays are dead, so the next replays may overwrite them."""
    if variant.compile == "reduce-overhead":
        return torch.compiler.cudagraph_mark_step_begin
    return lambda: None


class PaddedRefiner(nn.Module):
    """R with its stem's input and its head's output padded with zero channels to `width`, computing
    the same function: the extra stem weights see only zeros and the extra head outputs are dropped,
    so those weights get zero gradients and Adam (no weight decay) keeps them at zero. It gives the
    1-channel convolutions, which are memory-bound and may get slow kernels, channel counts the
    tensor cores take. Benchmark-only until measured: networks.Refiner could do it the same way."""

    def __init__(self, refiner: Refiner, width: int) -> None:
        super().__init__()
        self.channels, self.width = refiner.cfg.channels, width
        self.inner = Refiner(dataclasses.replace(refiner.cfg, channels=width))
        source = refiner.state_dict()
        with torch.no_grad():
            for key, target in self.inner.state_dict().items():
                target.zero_()
                target[tuple(slice(0, n) for n in source[key].shape)].copy_(source[key])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        last = self.inner.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if last else torch.contiguous_format
        padded = x.new_zeros((n, self.width, h, w)).contiguous(memory_format=layout)
        padded[:, :c] = x
        return self.inner(padded)[:, : self.channels]


def rate(step, images_per_call: int, device: str, seconds: float, warmup: int = 3) -> tuple[float, float]:
    """(images/s of repeated `step()` calls, seconds the `warmup` calls took: compilation, autotuning
    and CUDA graph capture happen there)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm = time.perf_counter() - t0
    done, t0 = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - t0 < seconds:
        step()
        done += images_per_call
    sync()
    return done / (time.perf_counter() - t0), warm


def ceilings(device: str) -> dict:
    """The two ceilings METHOD.md asks for, measured: bf16 8192^3 matrix product TFLOP/s on random
    data, and device-to-device copy GB/s counting bytes read and written; medians of 10 after 3."""
    if device != "cuda":
        return {"matmul_bf16_tflops": None, "copy_gb_s": None}

    def median_ms(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    n, elements = 8192, 1 << 30  # the copy: 2 GiB of bf16, far over the L2
    ab = torch.randn(2, n, n, device="cuda", dtype=torch.bfloat16)
    mm_ms = median_ms(lambda: ab[0] @ ab[1])
    src = torch.randn(elements, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    return {"matmul_bf16_tflops": round(2 * n**3 / mm_ms / 1e9, 1),
            "copy_gb_s": round(2 * 2 * elements / copy_ms / 1e6, 1)}  # 2 bytes each, read and written


def host_to_device(shape: tuple[int, int, int], images: int = 512, seconds: float = 1.0) -> dict[str, float]:
    """images/s of copying uint8 (images, *shape) chunks to the GPU on one host thread, each copy
    waited for (a training worker's handout: 16 batches of 32): from pageable memory, from pinned
    memory, and pinned per chunk first (what Ray Data's `pin_memory` does on its collate thread)."""
    pageable = torch.randint(0, 256, (images, *shape), dtype=torch.uint8)
    pinned = pageable.pin_memory()
    copies = {"h2d pageable": lambda: pageable.to("cuda", non_blocking=True),
              "h2d pinned": lambda: pinned.to("cuda", non_blocking=True),
              "h2d pin, then copy": lambda: pageable.pin_memory().to("cuda", non_blocking=True)}
    # Each copy synchronised: the next chunk's copy starts once this one has landed, as a worker's would.
    return {name: rate(lambda c=copy: (c(), torch.cuda.synchronize()), images, "cuda", seconds)[0]
            for name, copy in copies.items()}


def env(args) -> None:
    cuda = args.device == "cuda"
    name = device_name(args.device)
    facts = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "multiprocessors": torch.cuda.get_device_properties(0).multi_processor_count if cuda else None,
        "peak_bf16_tflops": peak_tflops(name, args.peak_tflops),
        **ceilings(args.device),
        # The eye shape: its step is the one the input path must keep up with (benchmarks/RESULTS.md).
        "h2d_eye_images_per_s": {k: round(v) for k, v in host_to_device((1, 35, 55)).items()} if cuda else None,
    }
    Path(args.out, "env.json").write_text(json.dumps(facts, indent=1) + "\n")
    log("env: " + json.dumps(facts))


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary(args) -> None:
    """One table of every row in DIR/<bench>.jsonl: images/s, TFLOP/s, % of the datasheet peak and % of
    the measured matrix-product rate; then the best refiner f+b and inference fractions."""
    out = Path(args.out)
    facts = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    peak, matmul = facts.get("peak_bf16_tflops"), facts.get("matmul_bf16_tflops")
    h2d = facts.get("h2d_eye_images_per_s")
    lines = [f"device: {facts.get('device', '?')}; torch {facts.get('torch', '?')}; peak {fmt(peak, '.0f')} "
             f"TFLOP/s (datasheet), bf16 matmul measured {fmt(matmul, '.0f')} TFLOP/s, copy "
             f"{fmt(facts.get('copy_gb_s'), '.0f')} GB/s",
             "host to device, eye uint8 chunks of 512, images/s on one thread: "
             + (", ".join(f"{k[4:]} {v:,}" for k, v in h2d.items()) if h2d else "not measured (no GPU)"), "",
             "| bench | model | variant | batch | loop | images/s | TFLOP/s | % peak | % matmul | warm-up s | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    best: dict[str, tuple[float, str]] = {}
    for bench in BENCHES:
        path = out / f"{bench}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        # Grouped by model and loop; within a group in the order measured (the sort is stable).
        for r in sorted(rows, key=lambda r: (r.get("model", ""), LOOPS.get(r.get("loop"), len(LOOPS)))):
            tflops = r.get("tflops")
            frac = tflops / peak if tflops is not None and peak else None
            if frac is not None and r["loop"] in ("refiner f+b", "inference") and "trunk" not in r["variant"]:
                key = f"{r['loop']} ({r['model']})"
                best[key] = max(best.get(key, (0.0, "")), (frac, r["variant"]))
            lines.append(
                f"| {bench} | {r.get('model', '')} | {r['variant']} | {r.get('batch', '')} | {r.get('loop', '')} "
                f"| {fmt(r.get('images_per_s'), ',.0f')} | {fmt(tflops, '.1f')} | {fmt(frac and 100 * frac, '.1f')} "
                f"| {fmt(tflops and matmul and 100 * tflops / matmul, '.1f')} | {fmt(r.get('warmup_s'), '.1f')} "
                f"| {(r.get('error') or '')[:100]} |")  # the whole error is in the .jsonl
    lines.append("")
    lines += [f"best {key}: {100 * frac:.1f}% of peak ({variant}; goal >= 40%)"
              for key, (frac, variant) in best.items()]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["env", "summary"])
    ap.add_argument("--out", required=True, help="folder of env.json, the *.jsonl rows and summary.md")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak (0: by the device's name)")
    args = ap.parse_args()
    env(args) if args.what == "env" else summary(args)


if __name__ == "__main__":
    main()

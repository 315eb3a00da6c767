"""What a training worker reports: metric windows averaged over time and over ranks, the time spent
waiting for input, and the checks and format of a report."""

from __future__ import annotations

import math
import resource
import time
from collections import defaultdict

import numpy as np
import torch

from simgan_ray.measures.probe import Probe
from simgan_ray.model.export import refine_images
from simgan_ray.training.ddp import distributed, unwrap
from simgan_ray.training.gan import Gan


class Stopwatch:
    """Seconds spent inside the wrapped iterators' next(): the loop waiting for its input."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, batches):
        while True:
            start = time.perf_counter()
            batch = next(batches)
            self.seconds += time.perf_counter() - start
            yield batch

    def lap(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class MetricWindow:
    """Averages scalar metrics over a report window and over all ranks."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.images = 0
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def add(self, values: dict[str, torch.Tensor], images: int) -> None:
        for k, v in values.items():
            self.sums[k] += float(v)
            self.counts[k] += 1
        self.images += images

    def reduce(self, device: torch.device) -> dict[str, float]:
        keys = sorted(self.sums)  # every rank runs the same phases, so the same keys
        local = [self.sums[k] / self.counts[k] for k in keys]
        total = torch.tensor([*local, self.images / max(self.elapsed(), 1e-9)], dtype=torch.float64, device=device)
        # Peak resident memory of this worker process, MiB (Linux reports ru_maxrss in KiB).
        peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024], dtype=torch.float64,
                            device=device)
        world = 1
        if distributed():
            world = torch.distributed.get_world_size()
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        vals = total.tolist()
        out = {k: v / world for k, v in zip(keys, vals[:-1], strict=True)}
        out["images_per_s"] = vals[-1]  # summed over ranks: whole-job throughput
        out["worker_peak_rss_mb"] = peak.item()  # max over ranks
        return out


def check_finite(metrics: dict) -> None:
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"step {metrics['step']}: non-finite {', '.join(bad)}; stopping before checkpointing")


def score_gan(probe: Probe, gan: Gan, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The probe's scores of the exported refiner on uint8 synthetic `images`, and with a weight average
    R's own beside them as probe_r_* (R's last iterate: the collapse guard watches its labels)."""
    out = probe.score(refine_images(gan.exported, images), labels)
    if gan.ema is not None:
        scores = probe.score(refine_images(unwrap(gan.refiner), images), labels)
        out.update({f"probe_r_{k.removeprefix('probe_')}": v for k, v in scores.items()})
    return out

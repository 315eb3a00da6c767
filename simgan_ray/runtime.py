"""Where Ray runs: the embedded default is a local Ray started in-process on first use."""

from __future__ import annotations

import math
import os


def ensure_ray(min_cpus: float = 1) -> None:
    """Join the Ray already initialized in this process, or start a local one. Logical CPUs are
    raised above the training workers' request so that Ray Data's read/decode tasks can run
    beside them on a small machine (the OS shares the real cores)."""
    import ray

    if ray.is_initialized():
        return
    cpus = max(os.cpu_count() or 1, math.ceil(min_cpus) + 1)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)

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
    # The dashboard serves the State API, which Ray Train's PlacementGroupCleaner needs to free a
    # stopped run's CPUs (without it, a Tune trial stopped by ASHA leaks its workers' reservation).
    ray.init(num_cpus=cpus, include_dashboard=True, log_to_driver=True)


def run_tasks(fn, calls: list[tuple], what: str) -> list:
    """Run fn(*args) for every args tuple as a Ray task (1 CPU each), with progress lines.
    Results come back in the order of `calls`."""
    import ray

    from simgan_ray.progress import progress

    ensure_ray()
    task = ray.remote(num_cpus=1)(fn)
    refs = [task.remote(*args) for args in calls]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    with progress(len(refs), what) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            results[index[ready[0]]] = ray.get(ready[0])
            bar.update(1)
    return results

"""Where Ray runs: the embedded default is a local Ray started in-process on first use."""

from __future__ import annotations

import math
import os
import socket


def ensure_ray(min_cpus: float = 1) -> None:
    """Join the Ray already initialized in this process, the cluster of a Ray Job this process is
    the entrypoint of (RAY_ADDRESS, set by the Jobs API), or start a local one."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    start_local_ray(max(os.cpu_count() or 1, math.ceil(min_cpus) + 1))


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray(num_cpus: int) -> None:
    """A local Ray for this process. Logical CPUs may exceed the cores so that Ray Data's
    read/decode tasks run beside the training workers on a small machine (the OS shares them).

    The dashboard serves the State API, which Ray Train's PlacementGroupCleaner uses to free a
    stopped run's CPUs (without it, a Tune trial stopped by ASHA or paused by PBT leaks its
    workers' reservation). The cleaner finds the API server by scanning for Ray processes, which
    fails when another Ray runs on the machine, so its address is handed to every worker."""
    import ray

    port = free_port()
    # address="local": always a new Ray; without it, ray.init joins any Ray already started on the machine.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_port=port, log_to_driver=True,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})


def run_tasks(fn, calls: list[tuple], what: str) -> list:
    """Run fn(*args) for every args tuple as a Ray task (1 CPU each), with progress lines.
    Results come back in the order of `calls`."""
    import ray

    ensure_ray()
    task = ray.remote(num_cpus=1)(fn)
    return gather([task.remote(*args) for args in calls], what)


def gather(refs: list, what: str) -> list:
    """ray.get of every ref, in the order given, printing progress lines as they finish."""
    import ray

    from simgan_ray.progress import progress

    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    with progress(len(refs), what) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            results[index[ready[0]]] = ray.get(ready[0])
            bar.update(1)
    return results

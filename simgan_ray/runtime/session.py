"""Where Ray runs: the embedded default is a local Ray started in-process on first use."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

import yaml

from simgan_ray.common.errors import SimganError, first_line
from simgan_ray.runtime.progress import progress

_started_here = False  # whether this process started its local Ray (which has no autoscaler)
_stopped_by = signal.SIGINT  # the signal that last stopped this process's work (`on_stop_signal`)


def on_stop_signal(signum: int, frame) -> None:
    """SIGTERM handler: stop the main thread's work as Ctrl-C does, remembering which signal it was.
    KeyboardInterrupt because Ray's blocking calls pass only it and SystemExit on from a handler."""
    global _stopped_by
    _stopped_by = signal.Signals(signum)
    raise KeyboardInterrupt


def stopped_by() -> signal.Signals:
    """The signal behind the last KeyboardInterrupt: SIGINT unless `on_stop_signal` saw another."""
    return _stopped_by


_verbose = False


def set_verbose(on: bool) -> None:
    """Whether the Ray this process starts or joins prints its own output here: its INFO lines, the
    workers' output and Ray Data's progress bars (`--verbose`). Off, a command prints only its own
    lines; Ray's stay in its session logs (/tmp/ray/session_latest/logs)."""
    global _verbose
    _verbose = on


def _init_options() -> dict:
    return {"log_to_driver": _verbose, "logging_level": logging.INFO if _verbose else logging.ERROR}


def ensure_ray(min_cpus: float = 1) -> None:
    """Join the Ray already initialized in this process, the cluster of a Ray Job this process is
    the entrypoint of (RAY_ADDRESS, set by the Jobs API), or start a local one."""
    import ray

    if ray.is_initialized():
        return
    from simgan_ray.runtime import rayinternals  # imports Ray Data: at use

    if address := os.environ.get("RAY_ADDRESS"):
        _check_form(address)
        if "://" in address and not address.startswith("ray://"):
            raise SimganError(f"RAY_ADDRESS={address} names a Ray Jobs API, which a driver cannot join: submit to it "
                              "with the CLI (it uses RAY_ADDRESS so), or unset it to run on a local Ray")
        _wait_for_answer(address)
        try:
            # Its workers are told the API server of this Ray, not whichever they would find on the machine.
            ray.init(**_init_options(), runtime_env={"env_vars": rayinternals.api_server_env(address)})
        except ConnectionError as e:  # something answers there, but no Ray that lets this process join
            raise SimganError(f"RAY_ADDRESS={address}: could not join the Ray there ({first_line(e)}); is it a Ray "
                              "of another auth token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH)?") from None
    else:
        start_local_ray(max(os.cpu_count() or 1, math.ceil(min_cpus) + 1))
    rayinternals.show_data_progress(_verbose)
    # ray.init installs SIGTERM handlers that exit with SystemExit(1) (a local head node: after
    # killing its processes) or SystemExit(SIGTERM), which tell a stop from a failure only by a number.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_stop_signal)


# host:port or [ipv6]:port, optionally behind a scheme (ray://, or http:// for the Jobs API, refused below)
_ADDRESS = re.compile(r"([a-z][a-z0-9+.-]*://)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}/?")


def _check_form(address: str) -> None:
    if address not in ("auto", "local") and not _ADDRESS.fullmatch(address):
        raise SimganError(f"RAY_ADDRESS={address!r} is not HOST:PORT, ray://HOST:PORT, auto or local")


def _wait_for_answer(address: str, seconds: float = 5.0) -> None:
    """Raise, naming `address` (host:port or ray://host:port), when nothing accepts a connection there
    within `seconds`: ray.init would retry a cluster that does not answer for ever. Other forms
    ("auto", "local") are left to ray.init."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise SimganError(f"RAY_ADDRESS={address}: no Ray answers there ({e.strerror or first_line(e)} for "
                                  f"{seconds:.0f} s); is the cluster up?") from None
            time.sleep(1)


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

    from simgan_ray.runtime.rayinternals import disable_failure_signal_handler, local_ray_env  # imports Ray: at use

    global _started_here

    disable_failure_signal_handler()  # a stopped job is no crash: no native stack dump on SIGTERM
    port = free_port()
    _started_here = True
    # address="local": always a new Ray; without it, ray.init joins any Ray already started on the machine.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_port=port, **_init_options(),
             runtime_env={"env_vars": local_ray_env(port)})


def _bundles(nodes: list[dict], per_worker: dict[str, float]) -> int:
    """How many workers of `per_worker` resources the nodes' totals hold, no worker split over nodes."""
    return sum(min(int(node.get(k, 0) // v) for k, v in per_worker.items()) for node in nodes)


def _addable(per_worker: dict[str, float], alive: int) -> bool | None:
    """Whether the cluster's autoscaler could add a node that holds one worker: True/False from the
    launcher config on this (head) node, None where an autoscaler runs whose node types are not
    known here (KubeRay), False where there is none (a local Ray, a fixed cluster). `alive`: nodes up now."""
    from simgan_ray.runtime import rayinternals  # imports Ray: at use

    if _started_here:
        return False
    if rayinternals.BOOTSTRAP_CONFIG.exists():
        launcher = yaml.safe_load(rayinternals.BOOTSTRAP_CONFIG.read_text()) or {}
        types = launcher.get("available_node_types") or {}
        if launcher.get("provider", {}).get("type") == "local":
            # On-prem: `ray up` made one node type for the head and its workers (of worker_ips), with
            # resources left to `ray start` to detect; the autoscaler starts workers until max_workers are up.
            return alive - 1 < sum(t.get("max_workers", 0) for t in types.values())
        # A type without declared resources has them detected from its instance type at launch.
        return any(t.get("max_workers", 0) > 0 and ("resources" not in t or _bundles([t["resources"]], per_worker))
                   for t in types.values())
    return None if rayinternals.autoscaler_running() else False


def _shortfall(nodes: list[dict], per_worker: dict[str, float], workers: int, spare_cpus: float) -> str | None:
    """What is missing for `workers` workers of `per_worker` resources and `spare_cpus` CPUs beside
    them on `nodes` (their resource totals), or None where they fit."""
    cpus = sum(n.get("CPU", 0) for n in nodes)
    if per_worker and _bundles(nodes, per_worker) < workers:
        wanted = ", ".join(f"{v:g} {k}" for k, v in per_worker.items())
        return f"{workers} worker(s) of {wanted} each do not fit"
    if cpus - workers * per_worker.get("CPU", 0) < spare_cpus:
        wanted = ", ".join(f"{v:g} {k}" for k, v in per_worker.items())
        return (f"{workers} worker(s) of {wanted} each leave less than {spare_cpus:g} CPU for reading data (Ray "
                "Data's tasks) in")
    return None


def check_resources(per_worker: dict[str, float], workers: int, what: str, spare_cpus: float = 0) -> None:
    """Fail at once, naming the resource, where the Ray this process uses can place fewer than
    `workers` workers of `per_worker` resources ({"CPU": 1, "GPU": 1}), or has fewer than
    `spare_cpus` CPUs beside them (a training run's Ray Data read and decode tasks), and no
    autoscaler could add nodes for them: Ray would wait for them forever. `what`: the options that
    asked for them."""
    import ray

    per_worker = {k: v for k, v in per_worker.items() if v > 0}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = _shortfall(nodes, per_worker, workers, spare_cpus)
    if problem is None:
        return
    have = {k: sum(n.get(k, 0) for n in nodes) for k in per_worker or {"CPU": 1}}
    has = ", ".join(f"{v:g} {k}" for k, v in have.items())
    fits = not per_worker or _bundles(nodes, per_worker) >= workers
    addable = _addable(per_worker if not fits else {"CPU": spare_cpus}, len(nodes))
    if addable is False:
        where = "the local Ray" if _started_here else "the cluster"
        raise SimganError(f"{what}: {problem} {where} ({has} in all, on {len(nodes)} node(s)) and no autoscaler "
                          "can add nodes for them")
    print(f"note: {problem} the cluster now ({has}); waiting for its autoscaler to add nodes", file=sys.stderr,
          flush=True)


def plan_here(per_worker: dict[str, float], workers: int, what: str, spare_cpus: float = 0) -> str:
    """A dry run's `ensure_ray` + `check_resources`, starting and joining nothing -> where the command
    would run. RAY_ADDRESS: its form and that something answers there; otherwise the local Ray that
    `start_local_ray` would start on this machine (its cores, its GPUs): workers that would not
    fit are refused as the run would refuse them."""
    per_worker = {k: v for k, v in per_worker.items() if v > 0}
    if address := os.environ.get("RAY_ADDRESS"):
        _check_form(address)
        _wait_for_answer(address)
        return f"on the Ray at RAY_ADDRESS={address}"
    cores = os.cpu_count() or 1
    gpus = _local_gpus()
    node = {"CPU": max(cores, math.ceil(workers * per_worker.get("CPU", 0)) + 1), "GPU": gpus}
    if problem := _shortfall([node], per_worker, workers, spare_cpus):
        has = ", ".join(f"{node[k]:g} {k}" for k in per_worker or {"CPU": 1})
        raise SimganError(f"{what}: {problem} a local Ray on this machine ({has}; {cores} cores)")
    return f"on a local Ray ({cores} cores, {gpus} GPU(s) on this machine)"


def _local_gpus() -> int:
    """The GPUs a local Ray would find here, as Ray counts NVIDIA GPUs: CUDA_VISIBLE_DEVICES where it is
    set, else the devices (/dev/nvidia0, ...). Without importing torch, which costs a dry run ~2 s
    of CPU (and a CPU build of torch sees no GPU where Ray sees them)."""
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "NoDevFiles"])
    return sum(1 for p in Path("/dev").glob("nvidia*") if p.name[len("nvidia"):].isdigit())


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

    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    with progress(len(refs), what) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            results[index[ready[0]]] = ray.get(ready[0])
            bar.update(1)
    return results


# How to carry on after an interrupt, per command: what the interrupted work left is kept.
_CONTINUE = {
    "train": "run the same command with --resume (or --auto-resume) to continue from the last checkpoint",
    "refine": "run the same command again to finish: finished shards are kept",
    "tune": "run the same command with --resume to continue the sweep: finished trials are kept, the others go on "
            "from their last checkpoints",
}


def exit_interrupted(signum: int, command: str) -> NoReturn:
    """Shut down this process's Ray (left to interpreter exit, its threads abort the process), say
    in one line what happened and how to go on with `command`, and exit with 128 + the signal's number."""
    import ray
    from ray.experimental import tqdm_ray

    hint = _CONTINUE.get(command, "what was written so far is kept")
    if ray.is_initialized():
        ray.shutdown()  # first, so that no log line of its workers comes after ours
    # Workers' progress bars still open (a Ray Data split stopped part-way) are drawn by this process,
    # and Ray's replacement for print() redraws them after whatever it prints: clear them, then
    # write past it, so that our line is the last.
    tqdm_ray.instance().hide_bars()
    sys.stderr.write(f"interrupted ({signal.Signals(signum).name}): {hint}\n")
    sys.stderr.flush()
    os._exit(128 + signum)

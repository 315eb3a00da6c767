"""Every use of Ray's internals, in one place: what it is, the Ray version it was written against
(2.60.0, pinned in pyproject.toml), and why no public API does. tests/runtime/test_rayinternals.py fails
naming the use when a Ray upgrade moves one of them. Nothing else in the package imports a private
Ray module or sets a private Ray attribute. Importing it imports Ray Data: modules the CLI
imports at start import it where they use it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import threading
import time
from pathlib import Path

from ray.data._internal.execution.execution_callback import ExecutionCallback

# Ray Train V2 (ray/train/v2/_internal/constants.py, CHECKPOINT_MANAGER_SNAPSHOT_FILENAME) lists a
# run's committed checkpoints in this file of the run directory and resumes from it: a checkpoint
# uploaded but not yet committed is not in it. Whether a run can be resumed is whether it exists.
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"



def snapshot_checkpoints(doc: dict) -> tuple[list[str], list[str]]:
    """A TRAIN_SNAPSHOT (Ray 2.60's _CheckpointManagerState in ray/train/v2/_internal/execution/
    checkpoint/checkpoint_manager.py: `checkpoint_results` with their `checkpoint_report_indices`,
    `latest_checkpoint_result`, `pending_training_results`) -> (its committed checkpoints, oldest
    report first; every checkpoint folder name it holds). Ray joins each name to the run folder as
    it is, so '../x' or '/x' would resume from elsewhere. ValueError when `doc` is no such snapshot."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    results, indices = doc.get("checkpoint_results"), doc.get("checkpoint_report_indices")
    if not isinstance(results, list) or not isinstance(indices, list) or len(results) != len(indices):
        raise ValueError("checkpoint_results and checkpoint_report_indices are not lists of one length")
    entries = [*results, *(doc.get("pending_training_results") or [])]
    if doc.get("latest_checkpoint_result") is not None:
        entries.append(doc["latest_checkpoint_result"])
    if not all(isinstance(e, dict) and isinstance(e.get("checkpoint_dir_name"), str) for e in entries):
        raise ValueError("an entry without a checkpoint_dir_name")
    if not all(isinstance(i, int) for i in indices):
        raise ValueError("checkpoint_report_indices are not integers")
    ordered = [r["checkpoint_dir_name"] for _, r in sorted(zip(indices, results, strict=True), key=lambda p: p[0])]
    return ordered, list(dict.fromkeys([*ordered, *(e["checkpoint_dir_name"] for e in entries)]))


def snapshot_without(doc: dict, dropped: set[str]) -> dict | None:
    """The snapshot with the checkpoints `dropped` forgotten (its latest then the newest one left),
    or None when none is left: what Ray resumes from after a checkpoint it lists turned out damaged."""
    kept = [(i, r) for i, r in zip(doc["checkpoint_report_indices"], doc["checkpoint_results"], strict=True)
            if r["checkpoint_dir_name"] not in dropped]
    if not kept:
        return None
    return {**doc, "checkpoint_results": [r for _, r in kept], "checkpoint_report_indices": [i for i, _ in kept],
            "latest_checkpoint_result": max(kept, key=lambda p: p[0])[1],
            "pending_training_results": [r for r in doc.get("pending_training_results") or []
                                         if r["checkpoint_dir_name"] not in dropped]}


# Where `ray up` leaves the cluster's launcher config on the head node, for its autoscaler
# (ray/autoscaler/_private/commands.py); Ray Jobs' entrypoints run on the head, so they can read it.
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()


def launcher_checks(cfg: dict) -> dict:
    """What `ray up` does to a config before it starts anything -> the config it would launch.

    `ray up` (create_or_update_cluster -> _bootstrap_config in ray/autoscaler/_private/commands.py)
    runs prepare_config (defaults, and for `provider: local` its own rules), the provider's fillout
    of node resources, validate_config (the schema again, node types, max_workers) and the
    provider's bootstrap_config; Ray has no public API for them. Only `provider: local` runs all of
    them offline (a cloud's fillout and bootstrap call its API). Their messages go to a CLI logger:
    kept quiet here, the caller reports a failure in one line."""
    from ray.autoscaler._private.providers import _get_node_provider_cls
    from ray.autoscaler._private.util import prepare_config, validate_config

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cfg = prepare_config(cfg)
        provider = _get_node_provider_cls(cfg["provider"]) if cfg["provider"]["type"] == "local" else None
        if provider:
            cfg = provider.fillout_available_node_types_resources(cfg)
        validate_config(cfg)
        return provider.bootstrap_config(cfg) if provider else cfg


def disable_failure_signal_handler() -> None:
    """Ray 2.60's core worker installs absl's failure-signal handler in the driver, which prints a
    native stack dump on SIGTERM: a stopped job is no crash (the CLI says in one line what to do).
    The module attribute (ray/_private/ray_constants.py), read when the driver's core worker starts,
    not the environment variable, which workers would inherit: they still dump real crashes."""
    import ray._private.ray_constants as ray_constants

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


def autoscaler_running() -> bool:
    """Whether an autoscaler serves the Ray this process is connected to. Autoscaler v2 (KubeRay's)
    sets a flag in the GCS (ray/autoscaler/v2/utils.py); v1 (the launcher's monitor) keeps its
    status record in the internal KV store under "__autoscaling_status". No public API says either."""
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    return bool(is_autoscaler_v2(fetch_from_server=True) or _internal_kv_get("__autoscaling_status"))


API_SERVER_VAR = "RAY_API_SERVER_ADDRESS"  # where Ray's State API client looks first (ray/dashboard/utils.py)


def api_server_env(address: str) -> dict[str, str]:
    """For a driver joining the Ray whose GCS is at `address` (host:port or "auto", as RAY_ADDRESS
    names it): the variable that tells this job's workers where that Ray's API server (dashboard)
    is. Ray Train's placement-group cleaner, a worker of the job, asks the State API whether a run's
    controller still lives; without the variable it finds the API server by scanning the machine for
    Ray processes, which fails where more than one Ray runs (two users' local Rays, a test session's
    beside loopback cluster nodes) and leaves a stopped run's CPUs reserved. The GCS keeps the
    dashboard's address in its KV store (ray/dashboard/utils.py, ray_address_to_api_server_url, which
    retries for 40 s where none runs): read once; a Ray without dashboard has none to hand on. Ray
    Client addresses (ray://) are left to Ray: such a driver runs beside the head. A value that a
    submitted job's runtime env sets reaches its workers already (Ray refuses to set it twice)."""
    from ray._private import ray_constants, services
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray._raylet import InnerGcsClient
    from ray.exceptions import AuthenticationError, RpcError

    if address.startswith("ray://"):
        return {}
    if given := os.environ.get(API_SERVER_VAR):
        return {} if RAY_JOB_CONFIG_JSON_ENV_VAR in os.environ else {API_SERVER_VAR: given}
    try:  # the public GcsClient waits 40 s for an address that is no GCS; ray.init says what is wrong there
        gcs = InnerGcsClient.standalone(services.canonicalize_bootstrap_address_or_die(address), None, 5000)
        url = gcs.internal_kv_get(ray_constants.DASHBOARD_ADDRESS.encode(), ray_constants.KV_NAMESPACE_DASHBOARD, 5)
    except (RpcError, AuthenticationError):  # no GCS there, or one of another token: ray.init says which
        return {}
    return {API_SERVER_VAR: f"http://{url.decode()}"} if url else {}


# Ray Train V2 settings its driver passes on to the controller and the workers (ENV_VARS_TO_PROPAGATE
# in ray/train/v2/_internal/constants.py), read from the driver's environment when a run starts.
TRAIN_DRIVER_ENV = {
    # Workers' print() goes straight to the driver's console instead of twice via Train's logger.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # A worker's report waits in a queue of one until the controller polls the workers, every
    # 2 s by default: a run reporting more often than that stalls its step at every report.
    # Polled every 0.25 s, a report holds the step for at most that long.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}


# Read by Ray Train V2's controller (ray/train/v2/_internal/constants.py); default on.
PREEMPTION_WATCHER_VAR = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def local_ray_env(dashboard_port: int) -> dict[str, str]:
    """The job-level variables of a local Ray started by this process (its workers, Tune's trials
    and Train's controllers all read them): where its API server is (API_SERVER_VAR, see
    api_server_env), and no Ray Train preemption watcher, where the user has not asked for one. A
    local Ray is one machine: no node of it is drained or preempted, and the watcher is one more
    process per run (about a second of CPU to start) polling Ray's drain state every 5 s."""
    env = {API_SERVER_VAR: f"http://127.0.0.1:{dashboard_port}"}
    if PREEMPTION_WATCHER_VAR not in os.environ:  # a value set by the user reaches the controller as it is
        env[PREEMPTION_WATCHER_VAR] = "0"
    return env


def set_train_driver_env() -> None:
    """TRAIN_DRIVER_ENV in this (the driver's) process, where the user has not set them."""
    for name, value in TRAIN_DRIVER_ENV.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def train_sigint_scope():
    """Around a Ray Train `fit` in this thread: the SIGINT handler in place before it, put back after.
    Train 2.60 (DataParallelTrainer._register_sigint_handler) installs one that aborts the run, and
    never removes it: after the run, a Ctrl-C would abort a finished run instead of interrupting,
    and the handler's hold on the run's controller keeps it and, through it, the run's data
    coordinators and dataset manager alive as idle processes for as long as this process lives."""
    main = threading.current_thread() is threading.main_thread()  # Train registers none elsewhere (Tune's trials)
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if before is not None:  # None: a handler not set from Python, which Python cannot put back
            signal.signal(signal.SIGINT, before)


def quiet_train_reports() -> None:
    """Ray Train V2 logs every report (its metrics dict, per rank) at INFO under a logger named by
    its source file's path (ray/train/v2/_internal/execution/context.py), not under "ray.train":
    our workers print one line per report themselves."""
    from ray.train.v2._internal.execution import context as train_context

    for name in ("ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)


def show_data_progress(on: bool) -> None:
    """Ray Data's progress bars and INFO lines in this process (a driver that runs a dataset:
    `refine`), with `--verbose` only: the command prints its own progress."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = on
    logging.getLogger("ray.data").setLevel(logging.INFO if on else logging.WARNING)


@contextlib.contextmanager
def streaming_reads(block_bytes: int):
    """Ray Data's global DataContext, set for building a dataset and restored after (the dataset
    keeps a copy of the context it was built with): a backpressured executor must not spin
    (IdleBackoff) and must know the CPUs it may use from its first step (KnownLimits), both
    execution callbacks, a Ray Data internal; a task's outputs become blocks of at most
    `block_bytes` (up to Ray's default), where Ray would merge them up to its default; and a task
    never waits for its consumers (below)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    callbacks, target = ctx.custom_execution_callback_classes, ctx.target_max_block_size
    buffer = ctx._max_num_blocks_in_streaming_gen_buffer
    ctx.custom_execution_callback_classes = [*callbacks, IdleBackoff, KnownLimits]
    ctx.target_max_block_size = min(block_bytes, target or block_bytes)
    # Ray 2.60 pauses a task whose blocks its executor has not yet taken (2 by default), holding
    # the task's CPU while it waits. When the executor stops taking (the consumers hold what the
    # read-ahead bound allows), a read task of several shards would keep a CPU that the other
    # set's reading needs, and the training workers, waiting for that set, never take from this
    # one again. Without the pause, a task reads its few shards to the end and gives its CPU back;
    # the bound holds by not starting tasks.
    ctx._max_num_blocks_in_streaming_gen_buffer = None
    try:
        yield
    finally:
        ctx.custom_execution_callback_classes, ctx.target_max_block_size = callbacks, target
        ctx._max_num_blocks_in_streaming_gen_buffer = buffer


# A Ray Data execution callback that stops an idle streaming executor from spinning. A training
# consumer keeps its input streams backpressured nearly all the time (a digits worker takes ~400
# images/s, decoding makes ~20,000); backpressured, Ray 2.60's scheduling loop has no task to
# `ray.wait` on and spins, and the split coordinator of a training set burns most of a core
# (benchmarks/RESULTS.md), CPU the training worker loses.
class IdleBackoff(ExecutionCallback):
    """Sleeps the scheduling loop after a step that changed nothing (no task submitted or finished,
    no block queued or taken): 1, 2, 4, ... 64, 64, ... ms per idle step, none after any progress.
    At most 64 ms pass before the loop notices new work: consumers hold seconds of batches, and a
    loop with running tasks already blocks up to 100 ms in `ray.wait`."""

    MAX_SLEEP_S = 0.064

    def __init__(self) -> None:
        self.last: tuple | None = None
        self.sleep_s = 0.0

    @staticmethod
    def progress(executor) -> tuple:
        """Counters that move whenever the executor does anything (Ray 2.60 internals: Ray is pinned)."""
        return tuple(
            (op.metrics.num_tasks_submitted, op.metrics.num_tasks_finished,
             state.total_enqueued_input_blocks(), state.total_enqueued_output_blocks())
            for op, state in executor._topology.items()
        )

    def on_execution_step(self, executor) -> None:
        now = self.progress(executor)
        if now == self.last:
            self.sleep_s = min(max(2 * self.sleep_s, 0.001), self.MAX_SLEEP_S)
            time.sleep(self.sleep_s)
        else:
            self.sleep_s = 0.0
        self.last = now


# Ray 2.60's executor learns the resources it may use from its autoscaling coordinator (an actor),
# asynchronously, and asks again at most once a second; until the first answer its limits are zero,
# and it runs one task at a time: the first second of every execution on one CPU, however many the
# cluster has (benchmarks/RESULTS.md).
class KnownLimits(ExecutionCallback):
    """Asks for the limits again at every step while they are still zero (one actor call at a time
    in flight, Ray's own cache), so reading widens to every CPU as soon as the answer is in."""

    def on_execution_step(self, executor) -> None:
        manager = executor._resource_manager
        if manager._global_limits.cpu == 0 and manager._global_limits.object_store_memory == 0:
            manager._global_limits_last_update_time = 0

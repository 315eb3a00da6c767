"""Each use of Ray's internals (simgan_ray/runtime/rayinternals.py), checked against the Ray installed: when
an upgrade moves one, the test names the use that broke."""

import inspect
import os
from pathlib import Path

import yaml

from simgan_ray.runtime import rayinternals

ROOT = Path(__file__).resolve().parents[2]


def test_train_snapshot_is_ray_trains_checkpoint_list():
    from ray.train.v2._internal import constants

    assert constants.CHECKPOINT_MANAGER_SNAPSHOT_FILENAME == rayinternals.TRAIN_SNAPSHOT, "TRAIN_SNAPSHOT moved"


def test_a_repaired_checkpoint_list_is_one_ray_train_loads():
    """snapshot_checkpoints / snapshot_without read and write Ray Train's _CheckpointManagerState: the
    list they leave must parse as one, its latest the newest checkpoint kept."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState

    results = [{"checkpoint_dir_name": n, "metrics": {"step": i}} for i, n in enumerate(("c0", "c1", "c2"))]
    doc = _CheckpointManagerState(checkpoint_results=results, checkpoint_report_indices=[0, 1, 2],
                                  latest_checkpoint_result=results[2], pending_training_results=[],
                                  pending_validation_specs=[], current_report_index=3,
                                  validated_checkpoint_dir_names=[], timed_out_validation_checkpoint_dir_names=[],
                                  failed_validation_checkpoint_dir_names=[]).model_dump(mode="json")
    assert rayinternals.snapshot_checkpoints(doc) == (["c0", "c1", "c2"], ["c0", "c1", "c2"])
    fixed = _CheckpointManagerState.model_validate(rayinternals.snapshot_without(doc, {"c2"}))
    assert fixed.latest_checkpoint_result.checkpoint_dir_name == "c1"
    assert [r.checkpoint_dir_name for r in fixed.checkpoint_results] == ["c0", "c1"]
    assert fixed.checkpoint_report_indices == [0, 1]
    assert rayinternals.snapshot_without(doc, {"c0", "c1", "c2"}) is None


def test_bootstrap_config_is_where_ray_up_leaves_it():
    from ray.autoscaler._private import commands

    assert "~/ray_bootstrap_config.yaml" in inspect.getsource(commands), "BOOTSTRAP_CONFIG moved"
    assert rayinternals.BOOTSTRAP_CONFIG == Path("~/ray_bootstrap_config.yaml").expanduser()


def test_launcher_checks_run_ray_ups_own_steps():
    cfg = rayinternals.launcher_checks(yaml.safe_load((ROOT / "cluster" / "onprem.yaml").read_text()))
    # prepare_config and the local provider's fillout/bootstrap ran: worker_ips became a node type
    (node_type,) = cfg["available_node_types"].values()
    assert node_type["max_workers"] == len(cfg["provider"]["worker_ips"]), "launcher_checks: Ray's steps changed"


def test_failure_signal_handler_switch_is_where_the_driver_reads_it():
    import ray._private.ray_constants as ray_constants
    import ray._raylet

    assert hasattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"), "disable_failure_signal_handler: moved"
    assert b"RAY_DISABLE_FAILURE_SIGNAL_HANDLER" in Path(ray._raylet.__file__).read_bytes(), \
        "disable_failure_signal_handler: the core worker no longer reads it"


def test_the_train_driver_env_is_what_train_passes_on_and_reads():
    from ray.train.v2._internal import constants

    from simgan_ray.runtime.rayinternals import TRAIN_DRIVER_ENV

    assert set(TRAIN_DRIVER_ENV) <= constants.ENV_VARS_TO_PROPAGATE, "TRAIN_DRIVER_ENV: no longer passed on"
    assert constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR == "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    assert constants.ENABLE_PRINT_PATCH_ENV_VAR == "RAY_TRAIN_ENABLE_PRINT_PATCH"


def test_the_train_driver_env_keeps_what_the_user_set(monkeypatch):
    from simgan_ray.runtime.rayinternals import TRAIN_DRIVER_ENV, set_train_driver_env

    for name in TRAIN_DRIVER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.5")
    set_train_driver_env()
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5"
    assert os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"


def test_a_local_ray_runs_no_preemption_watcher_unless_the_user_asks(monkeypatch):
    from ray.train.v2._internal import constants

    assert constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR == rayinternals.PREEMPTION_WATCHER_VAR
    assert rayinternals.PREEMPTION_WATCHER_VAR in constants.ENV_VARS_TO_PROPAGATE  # a user's value wins
    monkeypatch.delenv(rayinternals.PREEMPTION_WATCHER_VAR, raising=False)
    assert rayinternals.local_ray_env(8265) == {rayinternals.API_SERVER_VAR: "http://127.0.0.1:8265",
                                                rayinternals.PREEMPTION_WATCHER_VAR: "0"}
    monkeypatch.setenv(rayinternals.PREEMPTION_WATCHER_VAR, "1")
    assert rayinternals.PREEMPTION_WATCHER_VAR not in rayinternals.local_ray_env(8265)


def test_train_still_leaves_its_sigint_handler_behind():
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    source = inspect.getsource(DataParallelTrainer._register_sigint_handler)
    assert "signal.signal(signal.SIGINT" in source and "controller" in source, "train_sigint_scope: Train changed"


def test_autoscaler_records_are_where_autoscaler_running_looks():
    import ray._private.ray_constants as ray_constants
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    assert "fetch_from_server" in inspect.signature(is_autoscaler_v2).parameters, "autoscaler_running: v2 flag"
    assert ray_constants.DEBUG_AUTOSCALING_STATUS == "__autoscaling_status", "autoscaler_running: v1 record"
    assert callable(_internal_kv_get)


def test_a_joining_driver_hands_on_the_api_server_of_the_ray_it_joins(ray_session, monkeypatch):
    """The dashboard address the session's Ray recorded in its GCS, where Ray's State API client
    (Train's placement-group cleaner) reads the variable; a value the user set is handed on as it is."""
    from ray.dashboard.utils import get_address_for_submission_client

    monkeypatch.delenv(rayinternals.API_SERVER_VAR, raising=False)
    gcs = ray_session.get_runtime_context().gcs_address
    url = rayinternals.api_server_env(gcs)[rayinternals.API_SERVER_VAR]
    assert url == f"http://{ray_session._private.worker.get_dashboard_url()}"
    monkeypatch.setenv(rayinternals.API_SERVER_VAR, url)
    assert get_address_for_submission_client(None) == url, "api_server_env: the variable the State API reads"
    monkeypatch.setenv(rayinternals.API_SERVER_VAR, "http://127.0.0.1:1")
    assert rayinternals.api_server_env(gcs) == {rayinternals.API_SERVER_VAR: "http://127.0.0.1:1"}
    assert rayinternals.api_server_env("ray://127.0.0.1:10001") == {}


def test_train_report_logger_is_named_by_its_file():
    from ray.train.v2._internal.execution import context

    assert "logging.getLogger(__file__)" in inspect.getsource(context), "quiet_train_reports: logger renamed"


def test_data_context_fields_and_executor_internals_idle_backoff_uses():
    import ray.data
    from ray.data._internal.execution import streaming_executor, streaming_executor_state
    from ray.data._internal.execution.interfaces.op_runtime_metrics import OpRuntimeMetrics

    ctx = ray.data.DataContext.get_current()
    for field in ("custom_execution_callback_classes", "_max_num_blocks_in_streaming_gen_buffer"):
        assert hasattr(ctx, field), f"streaming_reads: DataContext field {field}"
    from ray.data._internal.execution.operators import task_pool_map_operator

    assert "ctx._max_num_blocks_in_streaming_gen_buffer is not None" in \
        inspect.getsource(task_pool_map_operator).replace("self.data_context", "ctx"), \
        "streaming_reads: no generator backpressure where the buffer is None"
    assert "self._topology" in inspect.getsource(streaming_executor.StreamingExecutor), "IdleBackoff: _topology"
    for name in ("total_enqueued_input_blocks", "total_enqueued_output_blocks"):
        assert hasattr(streaming_executor_state.OpState, name), f"IdleBackoff: OpState.{name}"
    fields = inspect.getsource(OpRuntimeMetrics)
    assert "num_tasks_submitted" in fields and "num_tasks_finished" in fields, "IdleBackoff: op metrics"
    assert "on_execution_step" in dir(rayinternals.IdleBackoff.__mro__[1]), "IdleBackoff: callback hook"
    from ray.data._internal.execution import resource_manager

    assert "self._resource_manager" in inspect.getsource(streaming_executor.StreamingExecutor), \
        "KnownLimits: _resource_manager"
    manager = inspect.getsource(resource_manager.ResourceManager.get_global_limits)
    assert "self._global_limits_last_update_time" in manager and "self._global_limits" in manager, \
        "KnownLimits: ResourceManager's cached limits"


def test_nothing_else_touches_ray_internals():
    for path in (ROOT / "simgan_ray").rglob("*.py"):
        if path.name == "rayinternals.py":
            continue
        text = path.read_text()
        for private in ("._private", "._internal", "._topology", "DataContext", "_internal_kv"):
            assert private not in text, f"{path.name} uses {private}: move it to rayinternals.py"

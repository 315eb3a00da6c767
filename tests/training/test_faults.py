"""Faults survived, nothing lost: an S3 outage then a killed worker, a killed driver, a run folder
taken over by another job, non-finite losses.

Each test checks the invariant that matters after the fault: the run reaches its last step with a
metric log that has every report exactly once, optimizer step counts equal to the updates the
schedule makes (no step run twice, none skipped), and full history-buffer shards (no reset).
"""

import io
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from ray.train import TrainingFailedError, UserCallback

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.storage import S3Options, lock
from simgan_ray.training.config import load_config
from simgan_ray.training.train import TRAIN_SNAPSHOT, fit
from tests.conftest import BIN, kill_session, small_run
from tests.tcpproxy import TcpProxy


def settings(data: dict, storage_uri: str, name: str, steps: int, **extra) -> dict:
    return small_run(data, storage_uri, name, **{
        "run.num_workers": 2, "run.report_every": 10, "run.checkpoint_every": 20, "history_size": 32,
        "schedule.pretrain_refiner_steps": 10, "schedule.pretrain_discriminator_steps": 10, "schedule.steps": steps,
        **extra})


def checkpoint_dirs(run_uri: str, s3: S3Options = S3Options()) -> list[str]:
    fs, path = storage.resolve(run_uri, s3)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path))
    except FileNotFoundError:
        return []
    return sorted(i.base_name for i in infos if i.base_name.startswith("checkpoint_2"))


def committed(run_uri: str, s3: S3Options = S3Options()) -> list[dict]:
    """Train's record of the checkpoints it registered, oldest first (a checkpoint uploaded but not
    yet registered when a worker or the driver dies is not resumed from)."""
    try:
        doc = json.loads(storage.read_bytes(storage.join(run_uri, TRAIN_SNAPSHOT), s3))
    except (SimganError, OSError, ValueError):
        return []
    return [r for _, r in sorted(zip(doc["checkpoint_report_indices"], doc["checkpoint_results"], strict=True),
                                 key=lambda p: p[0])]


def wait_for(condition, what: str, timeout: float = 300, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def assert_complete(run_uri: str, metrics: list[dict], total: int, steps: int, s3: S3Options = S3Options()) -> None:
    """Every report once; Adam step counts = the schedule's updates; history shards full."""
    assert [m["step"] for m in metrics] == list(range(10, total + 1, 10))
    latest = storage.join(run_uri, checkpoint_dirs(run_uri, s3)[-1])
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(latest, "state.pt"), s3)), weights_only=True)
    assert state["step"] == total
    assert state["optimizer_r"]["state"][0]["step"].item() == 10 + 2 * steps  # pretrain + K_g=2 per step
    assert state["optimizer_d"]["state"][0]["step"].item() == 10 + steps
    for rank in (0, 1):
        blob = storage.read_bytes(storage.join(latest, f"history-rank{rank:05d}.pt"), s3)
        shard = torch.load(io.BytesIO(blob), weights_only=True)["history"]
        assert len(shard["images"]) == shard["capacity"] == 16


@pytest.mark.slow
def test_killed_driver_then_resume_skips_a_damaged_newest_checkpoint_on_s3(s3_server, digit_sets, tmp_path,
                                                                           joined_ray):
    """The console script on S3 storage, killed with its local Ray once two checkpoints are committed,
    then its newest checkpoint cut short (a crash or a full disk while it was written): --resume (on
    the session's Ray) goes on from the newest intact one, saying so, to the same end, every report once."""
    s3 = S3Options(endpoint_url=s3_server.endpoint)
    root = s3_server.make_bucket("simgan-resume-s3") + "/runs"
    overrides = settings(digit_sets, root, "driver", 100, **{"data.s3.endpoint_url": s3_server.endpoint})
    args = [str(BIN), "train", *(f"--set={k}={json.dumps(v)}" for k, v in overrides.items())]
    run = storage.join(root, "driver")

    # A session of its own: the kill takes the CLI and every process of the local Ray it started.
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(committed(run, s3)) >= 2 or proc.poll() is not None, "two committed checkpoints", every=0.1)
    kill_session(proc)
    assert not storage.exists(storage.join(run, "export", "refiner.pt"), s3)
    newest = committed(run, s3)[-1]["checkpoint_dir_name"]
    state = storage.join(run, newest, "state.pt")
    storage.write_bytes(state, storage.read_bytes(state, s3)[:1000], s3)

    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **joined_ray})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"checkpoint {newest} is damaged (state.pt: " in done.stderr and "resumed at step" in done.stderr
    assert "done: step 120" in done.stdout
    metrics = [json.loads(line) for line in storage.read_bytes(storage.join(run, "metrics.jsonl"), s3).splitlines()]
    assert_complete(run, metrics, 120, 100, s3)


def test_an_s3_outage_then_a_killed_worker_lose_nothing(ray_session, s3_server, digit_sets, tmp_path):
    """Data and checkpoints on S3 behind a proxy that goes offline for 4 s after the first committed
    checkpoint: the run rides it out (each S3 request retried with backoff, `data.s3.retries`), its
    workers the same processes after it (a run that failed and restarted instead fails this test).
    Then rank 1's process is killed: Train replaces the worker group from the last committed
    checkpoint (`run.max_failures`) and the run finishes, every report once, its checkpoints loadable."""
    proxy = TcpProxy(s3_server.port)
    try:
        direct = S3Options(endpoint_url=s3_server.endpoint)
        bucket = s3_server.make_bucket("simgan-faults")
        for name in ("synthetic", "real"):
            for f in Path(digit_sets[name]).iterdir():
                storage.write_bytes(f"{bucket}/{name}/{f.name}", f.read_bytes(), direct)
        data = {"synthetic": f"{bucket}/synthetic", "real": f"{bucket}/real"}
        cfg = load_config(None, settings(data, f"{bucket}/runs", "faults", 100, **{
            "data.s3.endpoint_url": proxy.endpoint, "data.s3.retries": 10, "run.max_failures": 1}))
        run = f"{bucket}/runs/faults"
        outcome: dict = {}

        def train() -> None:
            try:
                outcome["result"] = fit(cfg)
            except (TrainingFailedError, SimganError) as e:
                outcome["error"] = e

        def pids() -> list[int]:
            return [w["pid"] for w in json.loads(storage.read_bytes(storage.join(run, "workers.json"), direct))]

        thread = threading.Thread(target=train)
        thread.start()
        wait_for(lambda: committed(run, direct) or not thread.is_alive(), "a first committed checkpoint", every=0.1)
        first = pids()
        proxy.cut()
        time.sleep(4)
        proxy.restore()
        wait_for(lambda: len(committed(run, direct)) >= 2 or not thread.is_alive(), "a checkpoint after the outage",
                 every=0.1)
        assert "error" not in outcome, f"the outage stopped the run: {outcome.get('error')}"
        assert pids() == first, "the run restarted during the outage instead of riding it out"
        os.kill(first[1], signal.SIGKILL)  # rank 1's Ray Train worker process, mid-run
        thread.join(timeout=600)
        assert "error" not in outcome, f"the run did not survive its killed worker: {outcome.get('error')}"
        assert outcome["result"].step == 120
        assert pids()[1] != first[1]  # Train restarted the worker group: rank 1 is a new process
        assert_complete(run, outcome["result"].metrics, 120, 100, direct)
    finally:
        proxy.stop()


def test_a_run_whose_folder_another_job_took_over_writes_nothing_more_there(ray_session, digit_sets, tmp_path):
    """Another job takes the run folder over mid-run, as it would once the run's driver looked gone
    while its workers still trained: from then on nothing of the run writes there (neither the
    workers' reports and checkpoints nor the driver's heartbeat), and the run stops naming the job."""
    run = tmp_path / "taken"
    lock_file = run / ".simgan-ray" / "lock.json"
    other = {"format": lock.LOCK_FORMAT, "command": "train", "id": "y" * 32, "host": "elsewhere", "pid": 1,
             "since": "2026-01-01T00:00:00Z", "heartbeat": time.time() + 3600}

    class TakeOver(UserCallback):  # in Train's controller, after the first report it sees
        def after_report(self, run_context, metrics, checkpoint) -> None:
            if json.loads(lock_file.read_text())["id"] != other["id"]:
                lock_file.with_suffix(".new").write_text(json.dumps(other))
                os.replace(lock_file.with_suffix(".new"), lock_file)  # as a claim writes it: whole
                (run.parent / "metrics-when-taken").write_bytes((run / "metrics.jsonl").read_bytes())

    cfg = load_config(None, settings(digit_sets, str(tmp_path), "taken", 100, **{"run.num_workers": 1}))
    with pytest.raises(TrainingFailedError, match=r"taken: no longer this `simgan-ray train`'s to write "
                                                  r"\(`simgan-ray train` \(lock y{32}, pid 1 on elsewhere"):
        fit(cfg, callbacks=[TakeOver()])
    assert json.loads(lock_file.read_text()) == other
    taken = (run.parent / "metrics-when-taken").read_bytes()
    assert taken and (run / "metrics.jsonl").read_bytes() == taken  # no report written after the takeover
    assert not (run / "export").exists()


def test_non_finite_loss_stops_the_run_before_a_checkpoint(ray_session, digit_sets, tmp_path):
    # lambda = 1e300 is inf in float32: the self-regularization loss is inf at the first update.
    cfg = load_config(None, settings(digit_sets, str(tmp_path), "nan", 20, **{"loss.lam": 1e300}))
    with pytest.raises(TrainingFailedError, match=r"step 10: non-finite loss_r_reg.*; stopping before checkpointing"):
        fit(cfg)
    assert checkpoint_dirs(str(tmp_path / "nan")) == []

"""A real two-node Ray cluster on loopback for tests: `ray start --head` and `ray start --address`
on free ports, each node in its own process group, stopped by exactly those groups.

`ray start --block` keeps the node's processes (GCS, raylet, dashboard, workers) children of the
command, in a new session, so stopping the cluster kills those process groups and nothing else:
`ray stop` would also kill any other Ray on the machine (the test session's own).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from simgan_ray import storage
from simgan_ray.runtime.session import free_port
from simgan_ray.storage import S3Options
from tests.conftest import TINY


def node_ports() -> list[str]:
    ports = {name: free_port() for name in ("node-manager-port", "object-manager-port", "metrics-export-port",
                                            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                            "runtime-env-agent-port")}
    return [f"--{name}={port}" for name, port in ports.items()]


class LocalCluster:
    """nodes: {node name: CPUs}; the first is the head. Each node also gets a custom resource
    named after it, so tests can tell nodes apart."""

    def __init__(self, nodes: dict[str, int], log_dir: Path) -> None:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[subprocess.Popen] = []
        self.log_dir = log_dir
        bin_dir = str(Path(sys.executable).parent)
        # The nodes run job entrypoints (`python -m simgan_ray`) with this virtualenv's Python; no
        # RAY_ADDRESS of the test session leaks into them.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        self.env["PATH"] = bin_dir + os.pathsep + self.env.get("PATH", "")
        # As a real cluster's nodes: token auth, one token for all (the session's, tests/conftest.py),
        # which this process's State API calls send too (Ray reads the same environment).
        assert self.env["RAY_AUTH_MODE"] == "token" and self.env["RAY_AUTH_TOKEN_PATH"]
        self.ray = str(Path(bin_dir) / "ray")
        try:
            for i, (name, cpus) in enumerate(nodes.items()):
                self._start(name, cpus, head=i == 0)
                if i > 0:
                    self._wait_for_nodes(i + 1, retry=(name, cpus))
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, cpus: int, head: bool) -> None:
        common = [f"--num-cpus={cpus}", "--num-gpus=0", f"--resources={json.dumps({name: 1})}", f"--node-name={name}",
                  "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block", *node_ports()]
        if head:
            args = ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"]
        else:
            # Its own temp dir, as on its own machine: a worker node takes the head's unless told, and
            # on one filesystem its runtime-env agent would delete job files the head's workers use.
            args = [f"--address={self.address}", f"--temp-dir={Path(self.env['RAY_TMPDIR']) / name}"]
        log = open(self.log_dir / f"ray-{name}.log", "ab")
        self.procs.append(subprocess.Popen([self.ray, "start", *args, *common], env=self.env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))
        if head:
            self._wait_for_dashboard()

    def _wait_for_dashboard(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2)
                return
            except OSError as e:
                if getattr(e, "code", None):  # answered with an HTTP status (e.g. 401): it is up
                    return
                if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                    raise RuntimeError(f"Ray head did not come up; see {self.log_dir}/ray-*.log") from e
                time.sleep(0.5)

    def nodes(self) -> list:
        """The cluster's nodes as the State API lists them (node_id, node_name, state, ...)."""
        from ray.util.state import list_nodes

        return list_nodes(address=self.dashboard)

    def _wait_for_nodes(self, count: int, retry: tuple[str, int], timeout: float = 120) -> None:
        """Until `count` nodes are alive. `ray start` gives a raylet 30 s to register, which a
        loaded 2-core machine can miss: the node just started is then started once more."""
        deadline = time.monotonic() + timeout
        retried = False
        while len([n for n in self.nodes() if n.state == "ALIVE"]) < count:
            if self.procs[-1].poll() is not None and not retried:
                try:  # what that attempt left running (a raylet that registered too late)
                    os.killpg(self.procs.pop().pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._start(*retry, head=False)
                retried = True
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                raise RuntimeError(f"{count} Ray nodes did not come up; see {self.log_dir}/ray-*.log")
            time.sleep(0.5)

    def node_names(self) -> dict[str, str]:
        """Ray node id -> the --node-name it was started with."""
        return {n.node_id: n.node_name for n in self.nodes()}

    def stop(self) -> None:
        """SIGTERM each node's process group (the `ray start --block` session), then SIGKILL what is left."""
        for proc in reversed(self.procs):  # workers before the head
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)  # a node drains for up to 30 s first; not needed here
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything of that group still alive
            except ProcessLookupError:
                pass
            proc.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def upload_digit_sets(digit_sets: dict, bucket: str, s3: S3Options) -> None:
    """The `digit_sets` fixture's synthetic and real sets to bucket/synthetic and bucket/real: a
    cluster reads its data from S3, not from this machine."""
    for name in ("synthetic", "real"):
        for f in Path(digit_sets[name]).iterdir():
            storage.write_bytes(f"{bucket}/{name}/{f.name}", f.read_bytes(), s3)


def two_node_run(bucket: str, endpoint: str, name: str) -> list[str]:
    """`--set` options of a short train run (tiny model, 8 steps) on the uploaded sets, run bucket/runs/name:
    2 workers of 2 CPUs, which cannot share a node of 3 CPUs."""
    overrides = {
        **TINY, "batch_size": 8, "history_size": 16, "data.synthetic": f"{bucket}/synthetic",
        "data.real": f"{bucket}/real", "data.s3.endpoint_url": endpoint,
        "run.storage": f"{bucket}/runs", "run.name": name, "run.num_workers": 2, "run.cpus_per_worker": 2,
        "run.report_every": 2, "run.checkpoint_every": 4,
        "schedule.pretrain_refiner_steps": 2, "schedule.pretrain_discriminator_steps": 2, "schedule.steps": 4,
    }
    return [f"--set={k}={json.dumps(v)}" for k, v in overrides.items()]


def tokenless_shell(env: dict, home: Path) -> dict:
    """`env` as a user's shell that holds no Ray token: no RAY_AUTH_* variable, and HOME an empty
    folder `home` (made here), so that no ~/.ray/auth_token is found."""
    home.mkdir()
    return {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(home)}


def check_submissions(cli: list[str], shell: dict, token_path: str, dashboard: str, bucket: str, s3: S3Options,
                      local_real: str) -> None:
    """What the CLI does with a cluster besides a run, checked on a running cluster of `token_path`'s
    token whose Jobs API is at `dashboard`: `cli` is `python -m simgan_ray train --cluster YAML` and
    `shell` a user's environment that holds no token (`tokenless_shell`).
    Without the token or with another, refused in one line that names the fix, nothing submitted; a
    dry run asks the Jobs API, submits nothing and notes the local paths the nodes will not see;
    `--no-wait` submits and detaches (simulate, its options passed through), the job id alone on
    stdout; a bad config never leaves this machine."""
    token = Path(token_path).read_text()
    sets = two_node_run(bucket, s3.endpoint_url, "never-run")
    for no_entry, why in ((shell, "the cluster wants an auth token"),
                          (shell | {"RAY_AUTH_TOKEN": "not-the-token"}, "the cluster refused the token sent")):
        refused = subprocess.run([*cli, *sets], env=no_entry, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and why in refused.stderr, refused.stderr
        assert "submitted" not in refused.stderr
        assert "RAY_AUTH_TOKEN" in refused.stderr.strip().splitlines()[-1]  # one line, naming the fix
    env = shell | {"RAY_AUTH_TOKEN": token}
    dry = subprocess.run([*cli, *sets, "--dry-run", "--set", f"data.real={local_real}"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"note: data.real {local_real} is a local path" in dry.stderr
    assert f"as a Ray Job on the cluster at {dashboard}; nothing started" in dry.stderr
    # The token this time from RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH.
    sim = subprocess.run([sys.executable, "-m", "simgan_ray", "simulate", "--address", dashboard, "--no-wait",
                          "--count", "20", "--shard-size", "10", "--out", f"{bucket}/sim", "--s3-endpoint",
                          s3.endpoint_url], env=shell | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path},
                         capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0 and "ray job logs --follow" in sim.stderr, sim.stderr[-2000:]
    job_id = sim.stdout.strip()  # the job id alone on stdout: JOB=$(simgan-ray ... --no-wait)
    assert f"submitted job {job_id} " in sim.stderr
    client = JobSubmissionClient(dashboard)
    wait = time.monotonic() + 180
    while not client.get_job_status(job_id).is_terminal():
        assert time.monotonic() < wait
        time.sleep(0.5)
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-2000:]
    assert json.loads(storage.read_bytes(f"{bucket}/sim/manifest.json", s3))["count"] == 20
    bad = subprocess.run([*cli, "--set", "loss.lam=-1"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "loss.lam" in bad.stderr and "submitted" not in bad.stderr
    assert not storage.exists(f"{bucket}/runs/never-run", s3)

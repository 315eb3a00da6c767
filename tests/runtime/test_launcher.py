"""`ray up` for real: cluster/onprem.yaml, pointed at two loopback 'machines' (tests/machines.py),
brought up by Ray's own launcher, trained on with `simgan-ray train --cluster` (and the rest of what
the CLI does with a cluster: tests/raycluster.py check_submissions), torn down by `ray down`."""

import getpass
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from simgan_ray import storage
from simgan_ray.runtime.cluster import jobs_address
from simgan_ray.runtime.session import free_port
from simgan_ray.storage import S3Options
from tests import machines
from tests.raycluster import check_submissions, node_ports, tokenless_shell, two_node_run, upload_digit_sets
from tests.s3server import FAKE_CREDENTIALS

ROOT = Path(__file__).resolve().parents[2]
# Not 127.0.0.1: `ray start` replaces that node address with the machine's routable one.
HEAD, WORKER = "127.0.0.2", "127.0.0.3"
WHY_NOT = machines.missing()


def onprem_on_loopback(m: machines.Machines, name: str) -> dict:
    """cluster/onprem.yaml with what differs on one machine: addresses, the SSH user and key, ports
    (two Ray nodes share the machine), 3 CPUs per node, each node's temp dir (a worker node takes
    the head's unless told: on one filesystem, the worker's runtime-env agent would delete the
    head's job files it no longer uses), and this test's venv in place of scripts/setup.sh (which
    would build one from PyPI on each node)."""
    cfg = yaml.safe_load((ROOT / "cluster" / "onprem.yaml").read_text())
    gcs, dashboard = free_port(), free_port()

    def node(command: str, name: str, address: str, first_worker_port: int, extra: list[str]) -> str:
        if "ray start" not in command:
            return command
        shipped_values = {"6379": str(gcs)}  # the GCS port; the head's also: dashboard port and host
        if "--head" in command:
            shipped_values.update({"8265": str(dashboard), "0.0.0.0": HEAD})
        for shipped, here in shipped_values.items():
            assert shipped in command, f"{shipped} no longer in onprem.yaml's {command!r}"
            command = command.replace(shipped, here)
        return " ".join([command, f"--node-ip-address={address}", "--num-cpus=3", "--num-gpus=0",
                         "--disable-usage-stats", *node_ports(), f"--min-worker-port={first_worker_port}",
                         f"--max-worker-port={first_worker_port + 499}", f"--temp-dir={m.homes[name] / 'tmp' / 'ray'}",
                         *extra])

    setup = cfg["setup_commands"]
    assert "scripts/setup.sh" in setup[0]
    # The token: the test session's (tests/conftest.py) in place of the user's ~/.ray/auth_token.
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    return {
        **cfg, "cluster_name": name,
        "file_mounts": {**cfg["file_mounts"], "~/.ray/auth_token": os.environ["RAY_AUTH_TOKEN_PATH"]},
        "provider": {**cfg["provider"], "head_ip": HEAD, "worker_ips": [WORKER]},
        "auth": {"ssh_user": getpass.getuser(), "ssh_private_key": str(m.key)},
        "setup_commands": [f"ln -sfn {sys.prefix} ~/simgan-ray/.venv", *setup[1:]],
        "head_start_ray_commands": [node(c, "head", HEAD, 21000, [f"--ray-client-server-port={free_port()}"])
                                    for c in cfg["head_start_ray_commands"]],
        "worker_start_ray_commands": [node(c, "worker", WORKER, 21500, []) for c in cfg["worker_start_ray_commands"]],
    }


def launcher(m: machines.Machines, *args: str, log: Path) -> None:
    """`ray ARGS` (the venv's, from the repository root as the README says), its output to `log`."""
    with open(log, "ab") as out:
        done = subprocess.run([str(Path(sys.executable).with_name("ray")), *args], cwd=ROOT, env=m.env,
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    assert done.returncode == 0, f"ray {' '.join(args)}: exit {done.returncode}\n" + log.read_text()[-4000:]


def alive_nodes(dashboard: str) -> dict[str, str]:
    """Node id -> IP of the cluster's live nodes."""
    from ray.util.state import list_nodes

    return {n.node_id: n.node_ip for n in list_nodes(address=dashboard) if n.state == "ALIVE"}


@pytest.mark.slow
@pytest.mark.skipif(WHY_NOT is not None, reason=f"no loopback machines here: {WHY_NOT}")
def test_ray_up_onprem_then_train_on_both_nodes_then_ray_down(tmp_path, s3_server, digit_sets):
    t0 = time.monotonic()
    s3 = S3Options(endpoint_url=s3_server.endpoint)
    bucket = s3_server.make_bucket("simgan-launcher")
    upload_digit_sets(digit_sets, bucket, s3)
    root = Path(tempfile.mkdtemp(prefix="sg", dir="/tmp"))  # short: Ray's socket paths go under it
    try:
        with machines.Machines({"head": HEAD, "worker": WORKER}, root, FAKE_CREDENTIALS) as m:
            m.env.update(RAY_TMPDIR=str(root / "client"), TMPDIR=str(root / "client"))  # the launcher's own files
            (root / "client").mkdir()
            cfg = onprem_on_loopback(m, "simgan-loopback")
            cluster_yaml = tmp_path / "cluster.yaml"
            cluster_yaml.write_text(yaml.safe_dump(cfg))
            launcher(m, "up", "-y", "--disable-usage-stats", str(cluster_yaml), log=tmp_path / "ray-up.log")
            up = time.monotonic()

            # At once, as a user would: the head's autoscaler is still starting the worker over SSH, and
            # the job waits for it. --cluster finds the head from the YAML; the job runs on the head.
            cli = [sys.executable, "-m", "simgan_ray", "train", "--cluster", str(cluster_yaml)]
            try:
                done = subprocess.run([*cli, *two_node_run(bucket, s3_server.endpoint, "ray-up")],
                                      capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired as e:
                pytest.fail(f"train --cluster still running after 300 s: {e.stderr[-3000:]}{e.stdout[-3000:]}")
            assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
            dashboard = jobs_address(cluster_yaml, None)
            assert f"to {dashboard}" in done.stderr and "done: step 8" in done.stdout + done.stderr
            assert FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr
            nodes = alive_nodes(dashboard)
            assert sorted(nodes.values()) == [HEAD, WORKER]
            workers = json.loads(storage.read_bytes(f"{bucket}/runs/ray-up/workers.json", s3))
            assert sorted(nodes[w["node_id"]] for w in workers) == [HEAD, WORKER]  # one rank on each node
            # The shipped commands did it: the checkout on both machines, the venv first on their PATH.
            assert (root / "worker" / "simgan-ray" / "simgan_ray" / "runtime" / "cluster.py").exists()
            assert "simgan-ray/.venv/bin" in (root / "worker" / ".bashrc").read_text()
            # Token auth as shipped: the token on both machines; a request without it is refused.
            token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text()
            assert all((root / name / ".ray" / "auth_token").read_text() == token for name in ("head", "worker"))
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{dashboard}/api/jobs/", timeout=10)
            assert refused.value.code == 401
            # The rest of what the CLI does with a cluster, from a user's shell that holds no token.
            check_submissions(cli, tokenless_shell(os.environ, tmp_path / "home"), os.environ["RAY_AUTH_TOKEN_PATH"],
                              dashboard, bucket, s3, digit_sets["real"])
            trained = time.monotonic()

            launcher(m, "down", "-y", str(cluster_yaml), log=tmp_path / "ray-down.log")
            down = time.monotonic()
            # `ray down` ran `ray stop` on the head: what is left there is its sshd. (The worker's raylet
            # exits once it loses the head, its log monitor does not: stopping the machine ends them.)
            assert [c for c in m.processes("head") if c and not c.startswith((machines.SSHD, "sshd"))] == []
        for name in m.namespaces:
            assert m.processes(name) == [], f"left running on {name}"
        deadline = time.monotonic() + 15  # `ray up`'s SSH connections (ControlPersist) end with their server
        while left := [c for c in map(machines.cmdline, machines.pids()) if str(root) in c]:
            assert time.monotonic() < deadline, left
            time.sleep(0.5)
        print(f"ray up {up - t0:.0f} s, worker up and train {trained - up:.0f} s, ray down {down - trained:.0f} s, "
              f"stop {time.monotonic() - down:.0f} s")
    except BaseException:  # each node's logs, for the cause
        for name in ("head", "worker"):
            for logs in (root / name / "tmp" / "ray").glob("session_2*/logs"):
                shutil.copytree(logs, tmp_path / "ray-logs" / name, dirs_exist_ok=True)
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)

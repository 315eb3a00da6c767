"""Clusters: the shipped configs validate, bad ones are refused by name, and `simgan-ray train
--cluster` runs for real on a two-node Ray cluster (two `ray start` nodes on loopback) with its
data and run on a moto S3 server."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from simgan_ray import storage
from simgan_ray.cluster import dashboard_port, jobs_address, load_cluster
from simgan_ray.errors import SimganError
from simgan_ray.storage import S3Options

from .conftest import TINY
from .raycluster import LocalCluster
from .s3server import FAKE_CREDENTIALS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "onprem.yaml"])
def test_shipped_launcher_configs_validate(name):
    cfg = load_cluster(ROOT / "cluster" / name)
    assert dashboard_port(cfg) == 8265
    assert any("pip install -e" in c or "scripts/setup.sh" in c for c in cfg["setup_commands"])
    if cfg["provider"]["type"] == "aws":
        gpu_types = [t for t in cfg["available_node_types"].values() if t["resources"].get("GPU")]
        assert gpu_types and all(t["min_workers"] == 0 for t in gpu_types)  # GPU nodes autoscale from 0
    else:
        assert jobs_address(ROOT / "cluster" / name, None) == "http://10.0.0.10:8265"


def test_bad_cluster_configs_are_refused_by_name(tmp_path):
    good = yaml.safe_load((ROOT / "cluster" / "onprem.yaml").read_text())

    def refused(cfg: dict | str, match: str) -> None:
        path = tmp_path / "c.yaml"
        path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
        with pytest.raises(SimganError, match=match):
            jobs_address(path, None)

    refused({**good, "provider": {"type": "local", "worker_ips": []}}, r"provider.head_ip: .*needs its head")
    refused({**good, "head_start_ray_commands": []}, "head_start_ray_commands: no `ray start --head`")
    refused({**good, "head_node_type": "boss"}, "head_node_type: 'boss' is not one of available_node_types")
    refused({**good, "max_wrokers": 3}, r"\(top level\): Additional properties are not allowed \('max_wrokers'")
    refused({k: v for k, v in good.items() if k != "provider"}, "'provider' is a required property")
    refused("cluster_name: [", "not valid YAML")
    with pytest.raises(SimganError, match="cluster config not found"):
        jobs_address(tmp_path / "missing.yaml", None)
    with pytest.raises(SimganError, match="expected http://HOST:PORT"):
        jobs_address(None, "10.0.0.1:8265")


def test_train_with_cluster_runs_on_two_nodes(tmp_path, s3_server, digit_sets):
    s3 = S3Options(endpoint_url=s3_server.endpoint)
    bucket = s3_server.make_bucket("simgan-cluster")
    for name in ("synthetic", "real"):  # the cluster reads its data from S3, not from this machine
        for f in Path(digit_sets[name]).iterdir():
            storage.write_bytes(f"{bucket}/{name}/{f.name}", f.read_bytes(), s3)
    (tmp_path / "logs").mkdir()
    # 3 CPUs per node and 2 per training worker: the two workers cannot share a node.
    with LocalCluster({"head": 3, "second": 3}, tmp_path / "logs") as cluster:
        cluster_yaml = tmp_path / "cluster.yaml"
        cluster_yaml.write_text(yaml.safe_dump({
            "cluster_name": "test", "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": ["127.0.0.1"]},
            "auth": {"ssh_user": "nobody"},
            "head_start_ray_commands": [f"ray start --head --port={cluster.gcs_port} "
                                        f"--dashboard-port={cluster.dashboard_port}"],
            "worker_start_ray_commands": [f"ray start --address={cluster.address}"],
        }))
        overrides = {
            **TINY, "batch_size": 8, "history_size": 16, "data.synthetic": f"{bucket}/synthetic",
            "data.real": f"{bucket}/real", "data.s3.endpoint_url": s3_server.endpoint,
            "run.storage": f"{bucket}/runs", "run.name": "on-cluster", "run.num_workers": 2, "run.cpus_per_worker": 2,
            "run.report_every": 2, "run.checkpoint_every": 4,
            "schedule.pretrain_refiner_steps": 2, "schedule.pretrain_discriminator_steps": 2, "schedule.steps": 4,
        }
        sets = [f"--set={k}={json.dumps(v)}" for k, v in overrides.items()]
        cli = [sys.executable, "-m", "simgan_ray", "train", "--cluster", str(cluster_yaml), *sets]
        # A user's shell: no RAY_AUTH_MODE; the CLI sends the token it finds in ~/.ray/auth_token.
        env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
        done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
        assert f"to http://127.0.0.1:{cluster.dashboard_port}" in done.stderr and "succeeded" in done.stderr
        assert "done: step 8" in done.stdout + done.stderr  # the job's own output, followed live
        assert FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr

        workers = json.loads(storage.read_bytes(f"{bucket}/runs/on-cluster/workers.json", s3))
        names = cluster.node_names()
        assert sorted(names[w["node_id"]] for w in workers) == ["head", "second"]
        run_cfg = yaml.safe_load(storage.read_bytes(f"{bucket}/runs/on-cluster/config.yaml", s3))
        assert run_cfg["run"]["num_workers"] == 2 and run_cfg["data"]["synthetic"] == f"{bucket}/synthetic"
        assert storage.exists(f"{bucket}/runs/on-cluster/export/refiner.pt", s3)

        # --no-wait: submitted and detached; the job (simulate, options passed through) runs on its own.
        sim = subprocess.run([sys.executable, "-m", "simgan_ray", "simulate", "--address", cluster.dashboard,
                              "--no-wait", "--count", "20", "--shard-size", "10", "--out", f"{bucket}/sim",
                              "--s3-endpoint", s3_server.endpoint],
                             env=env, capture_output=True, text=True, timeout=120)
        assert sim.returncode == 0 and "ray job logs --follow" in sim.stderr, sim.stderr[-2000:]
        job_id = sim.stderr.split("submitted job ")[1].split()[0]
        client = JobSubmissionClient(cluster.dashboard)
        wait = time.monotonic() + 180
        while not client.get_job_status(job_id).is_terminal():
            assert time.monotonic() < wait
            time.sleep(0.5)
        assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-2000:]
        assert json.loads(storage.read_bytes(f"{bucket}/sim/manifest.json", s3))["count"] == 20

        # A bad config never leaves this machine: refused before submission, exit 2, one line.
        bad = subprocess.run([*cli[:-len(sets)], "--set", "loss.lam=-1"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert bad.returncode == 2 and "loss.lam" in bad.stderr and "submitted" not in bad.stderr
    procs = cluster.procs
    assert all(p.poll() is not None for p in procs)


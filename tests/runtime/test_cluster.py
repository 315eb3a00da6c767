"""Clusters: the shipped configs validate, bad ones are refused by name, and `simgan-ray train
--cluster` runs for real on a two-node Ray cluster with its data and run on a moto S3 server: the
one `ray up` starts (tests/runtime/test_launcher.py) or, where that cannot run, two `ray start`
nodes on loopback (here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.runtime.cluster import auth_headers, dashboard_port, jobs_address, load_cluster
from simgan_ray.storage import S3Options
from tests.conftest import pinned_image
from tests.machines import missing
from tests.raycluster import LocalCluster, check_submissions, tokenless_shell, two_node_run, upload_digit_sets
from tests.s3server import FAKE_CREDENTIALS

ROOT = Path(__file__).resolve().parents[2]
WHY_NOT = missing()  # why `ray up` cannot bring up loopback machines here, or None


# The launcher configs: every cluster/*.yaml that is not a Kubernetes manifest (those live in cluster/kuberay/).
LAUNCHER_CONFIGS = [p.name for p in sorted((ROOT / "cluster").glob("*.yaml"))
                    if not all("apiVersion" in doc for doc in yaml.safe_load_all(p.read_text()))]


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_configs_pass_the_checks_of_ray_up(name, capsys):
    """What `ray up` runs on a config before it starts anything (Ray 2.60, commands.py
    _bootstrap_config), called directly: nothing here contacts a cloud."""
    from ray.autoscaler._private.commands import warn_about_bad_start_command
    from ray.autoscaler._private.providers import _get_node_provider_cls
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load((ROOT / "cluster" / name).read_text()))
    if cfg["provider"]["type"] == "local":  # a cloud provider's fillout and bootstrap call its API
        provider = _get_node_provider_cls(cfg["provider"])
        cfg = provider.bootstrap_config(provider.fillout_available_node_types_resources(cfg))
    validate_config(cfg)
    warn_about_bad_start_command(cfg["head_start_ray_commands"])  # e.g. "will not launch any workers"
    assert capsys.readouterr().err == ""


def test_shipped_launcher_configs_validate():
    assert LAUNCHER_CONFIGS == ["aws-gpu.yaml", "onprem-docker.yaml", "onprem.yaml"]
    for name in LAUNCHER_CONFIGS:
        cfg = load_cluster(ROOT / "cluster" / name)
        assert dashboard_port(cfg) == 8265
        # Token auth on every node, set the way Ray documents it, and your token copied to each.
        starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
        assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c or "RAY_AUTH_MODE=token RAY_" in c
                                        for c in starts), starts
        assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
        setup = cfg["setup_commands"] + cfg["head_setup_commands"] + cfg["worker_setup_commands"]
        if cfg.get("docker", {}).get("image"):  # the one image: nothing installed (none of Ray's default pip lines)
            assert pinned_image(cfg["docker"]["image"]) and setup == [], (cfg["docker"], setup)
        else:
            assert any("scripts/setup.sh" in c for c in cfg["setup_commands"])
        if cfg["provider"]["type"] == "aws":
            gpu_types = [t for t in cfg["available_node_types"].values() if t["resources"].get("GPU")]
            assert gpu_types and all(t["min_workers"] == 0 for t in gpu_types)  # GPU nodes autoscale from 0
        else:
            assert jobs_address(ROOT / "cluster" / name, None) == "http://10.0.0.10:8265"
            # `ray up` put the worker_ips into the one node type of an on-prem cluster: all start
            (node_type,) = cfg["available_node_types"].values()
            assert node_type["min_workers"] == node_type["max_workers"] == len(cfg["provider"]["worker_ips"])


def test_aws_roles_allow_what_the_launcher_and_the_nodes_do():
    """cluster/aws/: the head's role covers the EC2 calls Ray's AWS node provider makes and passes
    exactly the workers' role; both roles reach the bucket and pull the image; the person running
    `ray up` passes the head's role. Profiles are named as the roles (cluster/README.md makes them so)."""
    cfg = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in cfg["available_node_types"].items()}
    assert profiles == {"head": "simgan-ray-head", "gpu_g5": "simgan-ray-worker", "gpu_p4d": "simgan-ray-worker"}
    account, region = "123456789012", cfg["provider"]["region"]
    assert cfg["docker"]["image"].startswith(f"{account}.dkr.ecr.{region}.amazonaws.com/simgan-ray:")

    def allowed(doc: str) -> dict[str, set[str]]:
        """action -> resources a policy document allows it on."""
        policy = json.loads((ROOT / "cluster" / "aws" / doc).read_text())
        assert policy["Version"] == "2012-10-17"
        grants: dict[str, set[str]] = {}
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow" and set(statement) <= {"Sid", "Effect", "Action", "Resource"}
            actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
            for action in actions:
                grants.setdefault(action, set()).add(statement["Resource"])
        return grants

    head, worker, launcher = (allowed(f"{n}-policy.json") for n in ("head", "worker", "launcher"))
    trust = json.loads((ROOT / "cluster" / "aws" / "ec2-trust.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    # The calls of ray/autoscaler/_private/aws/node_provider.py (Ray 2.60) on a running cluster.
    provider_calls = {"ec2:RunInstances", "ec2:CreateTags", "ec2:StartInstances", "ec2:StopInstances",
                      "ec2:TerminateInstances", "ec2:DescribeInstances", "ec2:DescribeInstanceTypes",
                      "ec2:DescribeImages"}
    assert provider_calls <= set(head) and provider_calls <= set(launcher)
    assert head["iam:PassRole"] == {f"arn:aws:iam::{account}:role/simgan-ray-worker"}
    assert launcher["iam:PassRole"] == {f"arn:aws:iam::{account}:role/simgan-ray-head"}
    assert "iam:PassRole" not in worker and not any(a.startswith("ec2:") for a in worker)
    for role in (head, worker):
        assert role["s3:ListBucket"] == {"arn:aws:s3:::YOUR-BUCKET"}
        assert role["s3:GetObject"] == role["s3:PutObject"] == {"arn:aws:s3:::YOUR-BUCKET/*"}
        assert role["ecr:BatchGetImage"] == {f"arn:aws:ecr:{region}:{account}:repository/simgan-ray"}
        assert "ecr:GetAuthorizationToken" in role


def test_on_the_head_of_onprem_workers_still_starting_are_waited_for(tmp_path, monkeypatch):
    """A job started right after `ray up cluster/onprem.yaml`, while the head's autoscaler is still
    setting up the workers: it waits for them (check_resources) instead of being refused."""
    from simgan_ray.runtime import rayinternals
    from simgan_ray.runtime import session as runtime

    bootstrap = tmp_path / "ray_bootstrap_config.yaml"  # what `ray up` leaves on the head, as --cluster resolves it
    bootstrap.write_text(yaml.safe_dump(load_cluster(ROOT / "cluster" / "onprem.yaml")))
    monkeypatch.setattr(rayinternals, "BOOTSTRAP_CONFIG", bootstrap)
    monkeypatch.setattr(runtime, "_started_here", False)
    assert runtime._addable({"CPU": 2}, alive=1) is True  # the head alone: 3 workers to come
    assert runtime._addable({"CPU": 2}, alive=4) is False  # all 3 joined: no more to add


def test_bad_cluster_configs_are_refused_by_name(tmp_path):
    good = yaml.safe_load((ROOT / "cluster" / "onprem.yaml").read_text())

    def refused(cfg: dict | str, match: str) -> None:
        path = tmp_path / "c.yaml"
        path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
        with pytest.raises(SimganError, match=match):
            jobs_address(path, None)

    refused({**good, "provider": {"type": "local", "worker_ips": []}}, r"provider.head_ip: .*needs its head")
    refused({**good, "head_start_ray_commands": []}, "head_start_ray_commands: no `ray start --head`")
    # What Ray's launcher refuses, as `ray up` would: the file named, one line.
    refused({**good, "available_node_types": {"head": {"resources": {}, "node_config": {}}}},
            "`ray up` would refuse it: The field available_node_types is not supported for on-premise clusters")
    aws = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    refused({**aws, "head_node_type": "boss"}, "refuse it: `head_node_type` must be one of `available_node_types`")
    refused({**aws, "max_workers": 0, "available_node_types": {
        **aws["available_node_types"], "gpu_g5": {**aws["available_node_types"]["gpu_g5"], "min_workers": 1}}},
        "global `max_workers` is smaller than the sum of `min_workers`")
    refused({**good, "provider": {**good["provider"], "type": "onprem"}}, "Unsupported node provider: onprem")
    refused({**good, "max_wrokers": 3}, r"\(top level\): Additional properties are not allowed \('max_wrokers'")
    refused({k: v for k, v in good.items() if k != "provider"}, "'provider' is a required property")
    refused("cluster_name: [", "not valid YAML")
    with pytest.raises(SimganError, match="cluster config not found"):
        jobs_address(tmp_path / "missing.yaml", None)
    with pytest.raises(SimganError, match="expected http://HOST:PORT"):
        jobs_address(None, "10.0.0.1:8265")


def test_auth_headers_come_from_rays_documented_environment(tmp_path, monkeypatch):
    """RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token, in Ray's order."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_headers() == {}  # nothing anywhere: nothing sent
    with pytest.raises(SimganError, match="RAY_AUTH_MODE=token but no token"):
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        auth_headers()
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert auth_headers() == {"Authorization": "Bearer from-home"}
    (tmp_path / "file").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "file"))
    assert auth_headers() == {"Authorization": "Bearer from-path"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_headers() == {"Authorization": "Bearer from-env"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}
    monkeypatch.setenv("RAY_AUTH_MODE", "tokn")
    with pytest.raises(SimganError, match="RAY_AUTH_MODE='tokn'"):
        auth_headers()
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    for content, why in ((None, "No such file"), ("", "the file is empty")):
        target = tmp_path / ("missing" if content is None else "empty")
        if content is not None:
            target.write_text(content)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(target))
        with pytest.raises(SimganError, match=f"RAY_AUTH_TOKEN_PATH={target}: {why}"):
            auth_headers()


@pytest.mark.skipif(WHY_NOT is None, reason="tests/runtime/test_launcher.py runs it on two nodes that `ray up` starts")
def test_train_with_cluster_runs_on_two_nodes(tmp_path, s3_server, digit_sets):
    """Where no loopback machines can be made for `ray up` (tests/machines.py: root, sshd), the same
    on two `ray start` nodes: the run, a rank on each node, and check_submissions."""
    s3 = S3Options(endpoint_url=s3_server.endpoint)
    bucket = s3_server.make_bucket("simgan-cluster")
    upload_digit_sets(digit_sets, bucket, s3)
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
        cli = [sys.executable, "-m", "simgan_ray", "train", "--cluster", str(cluster_yaml)]
        # A user's shell: the cluster's token in RAY_AUTH_TOKEN, no RAY_AUTH_MODE, nothing in ~/.ray.
        shell = tokenless_shell(cluster.env, tmp_path / "home")
        token = Path(cluster.env["RAY_AUTH_TOKEN_PATH"]).read_text()
        done = subprocess.run([*cli, *two_node_run(bucket, s3_server.endpoint, "on-cluster")],
                              env=shell | {"RAY_AUTH_TOKEN": token}, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
        assert f"to {cluster.dashboard}" in done.stderr and "succeeded" in done.stderr
        assert "done: step 8" in done.stdout + done.stderr  # the job's own output, followed live
        assert FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr
        workers = json.loads(storage.read_bytes(f"{bucket}/runs/on-cluster/workers.json", s3))
        names = cluster.node_names()
        assert sorted(names[w["node_id"]] for w in workers) == ["head", "second"]
        run_cfg = yaml.safe_load(storage.read_bytes(f"{bucket}/runs/on-cluster/config.yaml", s3))
        assert run_cfg["run"]["num_workers"] == 2 and run_cfg["data"]["synthetic"] == f"{bucket}/synthetic"
        assert storage.exists(f"{bucket}/runs/on-cluster/export/refiner.pt", s3)
        check_submissions(cli, shell, cluster.env["RAY_AUTH_TOKEN_PATH"], cluster.dashboard, bucket, s3,
                          digit_sets["real"])
    procs = cluster.procs
    assert all(p.poll() is not None for p in procs)

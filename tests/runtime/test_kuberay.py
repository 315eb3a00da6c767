"""cluster/kuberay/: what the KubeRay operator (ray.io/v1) needs of each manifest, the one pinned
image, token auth, placeholder buckets, and entrypoints that the CLI itself parses."""

import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from simgan_ray.cli import app
from tests.conftest import pinned_image

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = ROOT / "cluster" / "kuberay" / "serviceaccount.yaml"
MANIFESTS = sorted(p for p in (ROOT / "cluster" / "kuberay").glob("*.yaml") if p != ACCOUNT)
def cluster_specs(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def test_the_service_account_the_pods_name_is_shipped():
    account = yaml.safe_load(ACCOUNT.read_text())
    assert account["kind"] == "ServiceAccount" and account["apiVersion"] == "v1"
    text = ACCOUNT.read_text()
    assert "eks.amazonaws.com/role-arn" in text and "iam.gke.io/gcp-service-account" in text  # IRSA, Workload Identity
    for path in MANIFESTS:
        names = re.findall(r"serviceAccountName: (\S+)", path.read_text())
        assert names and set(names) == {account["metadata"]["name"]}, path.name


def test_the_train_and_refine_jobs_chain_by_the_run_name():
    train, refine = (shlex.split(yaml.safe_load((ROOT / "cluster" / "kuberay" / f"rayjob-{n}.yaml").read_text())
                                 ["spec"]["entrypoint"]) for n in ("train", "refine"))
    storage = next(a.split("=", 1)[1] for a in train if a.startswith("run.storage="))
    assert f"{storage}/{train[train.index('--name') + 1]}" == refine[refine.index("--model") + 1]
    assert "/app/jobs/digits-long.yaml" in train  # the recommended recipe


def test_there_is_an_interactive_cluster_and_a_job_per_command():
    kinds = {p.name: yaml.safe_load(p.read_text())["kind"] for p in MANIFESTS}
    assert kinds == {"raycluster.yaml": "RayCluster", "rayjob-refine.yaml": "RayJob", "rayjob-train.yaml": "RayJob",
                     "rayjob-tune.yaml": "RayJob"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_has_what_the_operator_needs(path):
    import ray

    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"].startswith("simgan-ray")
    spec = cluster_specs(doc)
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token"}  # the operator makes the token and hands it to Ray
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    containers = [head["template"]["spec"]["containers"][0]]
    for group in spec["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers.append(container)
    for container in containers:  # the one image, pinned: never :latest
        assert pinned_image(container["image"]), container["image"]
    assert "registry.example.com" in path.read_text()  # an obvious placeholder, no real registry


@pytest.mark.parametrize("path", [p for p in MANIFESTS if p.name.startswith("rayjob")], ids=lambda p: p.name)
def test_job_entrypoint_is_a_command_line_the_cli_accepts(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "simgan-ray"
    group = typer.main.get_command(app)
    ctx = group.make_context("simgan-ray", argv[1:])
    name, command, args = group.resolve_command(ctx, argv[1:])
    params = command.make_context(name, args, parent=ctx).params  # parses as the CLI would: UsageError if not
    config = ROOT / str(params["config"]).removeprefix("/app/")  # the image's copy of jobs/
    assert config.exists(), config
    for uri in re.findall(r"s3://[^\s/]+", path.read_text() + config.read_text()):
        assert uri == "s3://YOUR-BUCKET", uri  # placeholders only: no bucket the user does not own
    if name == "train":  # a retried pod continues the run instead of "already holds a run"
        assert params["auto_resume"] and params["name"]
    if doc["spec"]["backoffLimit"] > 0:
        assert name in ("train", "refine")  # the commands whose rerun continues the work

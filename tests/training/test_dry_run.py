"""--dry-run of train, refine and tune: the real command's checks, one line saying what would run,
exit 0, and nothing written or started (ray.init is made to fail); and resuming a run with another
architecture, refused before Ray starts."""

import pytest
import ray
import yaml
from typer.testing import CliRunner

from simgan_ray.cli import app
from simgan_ray.common.errors import SimganError
from simgan_ray.model.export import write_export
from simgan_ray.model.networks import Refiner, RefinerConfig
from simgan_ray.storage import ownership
from simgan_ray.training.config import dump_config, load_config
from simgan_ray.training.train import TRAIN_SNAPSHOT, fit, preflight
from tests.conftest import TINY, checkpoint_list, fake_checkpoint


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run started Ray")

    monkeypatch.setattr(ray, "init", refuse)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def sets(digit_sets) -> list[str]:
    overrides = {**TINY, "data.synthetic": digit_sets["synthetic"], "data.real": digit_sets["real"]}
    return [f"--set={k}={v}" for k, v in overrides.items()]


def test_train_dry_run_checks_everything_and_starts_nothing(digit_sets, tmp_path, no_ray):
    args = ["train", "--dry-run", "--storage", str(tmp_path / "runs"), "--name", "dry", *sets(digit_sets)]
    done = invoke(*args)
    assert done.exit_code == 0, done.output
    assert "dry run: start run" in done.output and "256 synthetic and 256 real 1x28x28 images" in done.output
    assert not (tmp_path / "runs").exists()
    too_big = invoke(*args, "--set", "batch_size=1000")  # the set holds fewer images than one batch
    assert isinstance(too_big.exception, SimganError) and "batch" in str(too_big.exception)
    bad_cluster = tmp_path / "cluster.yaml"
    bad_cluster.write_text("cluster_name: x\nprovider: {type: local}\n")
    refused = invoke(*args, "--cluster", str(bad_cluster))  # the cluster file is checked too (offline)
    assert isinstance(refused.exception, SimganError) and "provider.head_ip" in str(refused.exception)


def test_refine_dry_run_checks_everything_and_writes_nothing(digit_sets, tmp_path, no_ray):
    write_export(tmp_path / "export", Refiner(RefinerConfig(features=8, blocks=1)),
                             {"step": 0, "image_shape": [1, 28, 28]})
    args = ["refine", "--dry-run", "--model", str(tmp_path / "export"), "--input", digit_sets["synthetic"],
            "--output", str(tmp_path / "out")]
    done = invoke(*args)
    assert done.exit_code == 0, done.output
    assert "dry run: refine 4 of 4 shards (256 images in all)" in done.output
    assert not (tmp_path / "out").exists()
    wrong = invoke(*args[:-4], "--input", digit_sets["synthetic"], "--output", digit_sets["synthetic"] + "/inside")
    assert isinstance(wrong.exception, SimganError) and "overlap" in str(wrong.exception)


def test_tune_dry_run_checks_everything_and_starts_nothing(digit_sets, tmp_path, no_ray):
    cfg = load_config(None, {**TINY, "data.synthetic": digit_sets["synthetic"], "data.real": digit_sets["real"]})
    (tmp_path / "base.yaml").write_text(dump_config(cfg))
    spec = {"base": "base.yaml", "search": {"loss.lam": {"loguniform": [0.01, 0.1]}}, "num_samples": 2,
            "storage": str(tmp_path / "sweeps"), "name": "t",
            "probe": {"uri": str(tmp_path / "probe"), "real_train": digit_sets["synthetic"],
                      "reference": digit_sets["real"]}}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    done = invoke("tune", "--dry-run", "--config", str(tmp_path / "tune.yaml"))
    assert done.exit_code == 0, done.output
    assert f"dry run: sweep 2 trials (asha, by probe_fd) into {tmp_path}/sweeps/t" in done.output
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "probe").exists()
    spec["probe"]["reference"] = str(tmp_path / "missing")  # the probe could not be built
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    refused = invoke("tune", "--dry-run", "--config", str(tmp_path / "tune.yaml"))
    assert isinstance(refused.exception, SimganError) and "missing" in str(refused.exception)


def test_resume_with_another_architecture_is_refused_before_ray(digit_sets, tmp_path, no_ray):
    given = {**TINY, "data.synthetic": digit_sets["synthetic"], "data.real": digit_sets["real"],
             "run.storage": str(tmp_path), "run.name": "r"}
    with ownership.claimed(str(tmp_path / "r"), "train") as run:  # as after a committed checkpoint
        run.write({"config.yaml": dump_config(load_config(None, given)).encode()})
        fake_checkpoint(run, "checkpoint_a")
        run.write({TRAIN_SNAPSHOT: checkpoint_list("checkpoint_a")})
    changed = load_config(None, {**given, "refiner.features": 16, "discriminator.widths": [8, 8, 8, 16]})
    with pytest.raises(SimganError, match=r"refiner.features: 8 in the run, 16 now; discriminator.widths: "
                                          r"\[8, 8, 8, 8\] in the run, \[8, 8, 8, 16\] now"):
        fit(changed, resume="auto")
    # Learning rates and the length may change on resume (`--resume --set optimizer_r.lr=...`)...
    assert preflight(load_config(None, {**given, "optimizer_r.lr": 0.01, "schedule.steps": 99}), resume=True).resumes
    # ... the loss, the data, the history or the workers only when asked.
    changed = load_config(None, {**given, "loss.lam": 0.5, "history_size": 128, "run.num_workers": 1})
    with pytest.raises(SimganError, match=r"resuming with other settings than the run's \(history_size: 6400 in the "
                       r"run, 128 now; loss.lam: 0.1 in the run, 0.5 now; run.num_workers: 2 in the run, 1 now\): "
                       r"pass --allow-changes"):
        preflight(changed, resume=True)
    assert preflight(changed, resume=True, allow_changes=True).resumes


def test_a_dry_run_says_where_it_would_run_and_refuses_what_the_run_would(digit_sets, tmp_path, no_ray,
                                                                           monkeypatch):
    import socket

    import torch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ["train", "--dry-run", "--storage", str(tmp_path / "runs"), "--name", "dry", *sets(digit_sets)]
    here = invoke(*args)
    assert here.exit_code == 0 and "on a local Ray (" in here.output, here.output
    if not torch.cuda.is_available():
        gpu = invoke(*args, "--gpus-per-worker", "1")
        assert isinstance(gpu.exception, SimganError), gpu.output
        assert "run.gpus_per_worker" in str(gpu.exception) and "0 GPU" in str(gpu.exception)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing answers there
    gone = invoke(*args, "--address", f"http://127.0.0.1:{port}")
    assert isinstance(gone.exception, SimganError) and "no Ray Jobs API there" in str(gone.exception)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    joined = invoke(*args)
    assert isinstance(joined.exception, SimganError) and "no Ray answers there" in str(joined.exception)
    assert not (tmp_path / "runs").exists()

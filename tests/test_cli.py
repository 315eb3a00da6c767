"""The real console script, as a user runs it: exit codes and one-line errors."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).with_name("simgan-ray")
pytestmark = pytest.mark.slow  # every test here runs the console script in a subprocess


def run(*args, cwd=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def listed_commands(help_text: str) -> list[str]:
    """The names in the Commands panel of a help text: the first word of each entry's first line."""
    panel = help_text.split("Commands")[1]
    return [line.strip("│ ").split()[0] for line in panel.splitlines()
            if line.startswith("│ ") and not line.startswith("│  ")]


def test_help_lists_every_command():
    import typer

    from simgan_ray.cli import app

    group = typer.main.get_command(app)
    out = run("--help")
    assert out.returncode == 0
    assert listed_commands(out.stdout) == list(group.commands)  # all 8, in the app's order
    assert list(group.commands) == ["train", "refine", "evaluate", "probe", "tune", "simulate", "ingest", "data"]
    sub = run("data", "--help")
    assert listed_commands(sub.stdout) == ["fetch-mnist"]
    for command in group.commands:  # each command's own help works from the console script
        assert run(command, "--help").returncode == 0


def test_negative_lambda_is_refused_naming_the_field(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loss:\n  lam: -0.5\n")
    out = run("train", "--config", str(cfg))
    assert out.returncode == 2
    assert "loss.lam" in out.stderr and str(cfg) in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unknown_field_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("refiner:\n  widht: 3\n")
    out = run("train", "--config", str(cfg))
    assert out.returncode == 2 and "refiner.widht" in out.stderr


def test_missing_dataset_is_one_line(tmp_path):
    out = run("train", "--set", f"data.synthetic={tmp_path}/nothing", "--storage", str(tmp_path / "runs"))
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "nothing: dataset not found" in last
    assert "Traceback" not in out.stderr


def test_a_run_inside_its_input_is_refused(tmp_path, digit_sets):
    out = run("train", "--set", f"data.synthetic={digit_sets['synthetic']}", "--set", f"data.real={digit_sets['real']}",
              "--storage", digit_sets["synthetic"], "--name", "oops")
    assert out.returncode == 2 and "overlaps data.synthetic" in out.stderr.strip().splitlines()[-1]
    assert not (Path(digit_sets["synthetic"]) / "oops").exists()


def test_ray_address_names_where_to_submit_as_ray_tools_do(tmp_path):
    """RAY_ADDRESS=http://... (the Ray Jobs CLI's convention) is where commands are submitted, before
    --cluster; it never reaches a local ray.init (which cannot join a Jobs API)."""
    from simgan_ray.runtime import free_port

    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "RAY_ADDRESS": address}
    out = subprocess.run([str(BIN), "train", "--cluster", "cluster/onprem.yaml"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"note: RAY_ADDRESS={address} comes before --cluster" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {address}: no Ray Jobs API there")
    direct = subprocess.run([sys.executable, "-c", "from simgan_ray.runtime import ensure_ray; ensure_ray()"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert "RAY_ADDRESS=http://127.0.0.1" in direct.stderr and "names a Ray Jobs API" in direct.stderr


def test_a_cloud_cluster_without_its_sdk_is_one_line_naming_the_install(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['boto3'] = None\n")  # boto3 not installed
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([str(BIN), "train", "--cluster", "cluster/aws-gpu.yaml"], capture_output=True, text=True,
                         timeout=120, env={**env, "PYTHONPATH": str(site)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "requires the AWS SDK for Python (Boto3)" in last and "pip install 'simgan-ray[aws]'" in last


def test_a_cluster_that_does_not_answer_is_one_line_within_the_bound():
    from simgan_ray.runtime import free_port

    address = f"127.0.0.1:{free_port()}"  # a GCS address nothing listens on
    code = ("from simgan_ray import runtime\nruntime._wait_for_answer.__defaults__ = (3.0,)\n"
            "runtime.ensure_ray()")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RAY_ADDRESS": address})
    assert time.monotonic() - start < 30
    assert f"RAY_ADDRESS={address}: no Ray answers there (Connection refused for 3 s)" in out.stderr

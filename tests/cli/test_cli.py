"""The real console script, as a user runs it: exit codes and one-line errors."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BIN

pytestmark = pytest.mark.slow  # every test here runs the console script in a subprocess


def run(*args, cwd=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def listed_commands(help_text: str) -> list[str]:
    """The names under "Commands:" in click's help text: the first word of each entry's first line."""
    section = help_text.split("Commands:\n")[1]
    return [line.split()[0] for line in section.splitlines() if line.startswith("  ") and not line.startswith("   ")]


def test_help_lists_every_command():
    import typer

    from simgan_ray.cli import app

    group = typer.main.get_command(app)
    out = run("--help")
    assert out.returncode == 0
    assert listed_commands(out.stdout) == list(group.commands)  # all 8, in the order the data flows
    assert list(group.commands) == ["simulate", "ingest", "probe", "train", "tune", "refine", "evaluate", "data"]
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
    from simgan_ray.runtime.session import free_port

    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "RAY_ADDRESS": address}
    out = subprocess.run([str(BIN), "train", "--cluster", "cluster/onprem.yaml"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"note: RAY_ADDRESS={address} comes before --cluster" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {address}: no Ray Jobs API there")
    direct = subprocess.run([sys.executable, "-c", "from simgan_ray.runtime.session import ensure_ray; ensure_ray()"],
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
    from simgan_ray.runtime.session import free_port

    address = f"127.0.0.1:{free_port()}"  # a GCS address nothing listens on
    code = ("from simgan_ray.runtime import session as runtime\nruntime._wait_for_answer.__defaults__ = (3.0,)\n"
            "runtime.ensure_ray()")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RAY_ADDRESS": address})
    assert time.monotonic() - start < 30
    assert f"RAY_ADDRESS={address}: no Ray answers there (Connection refused for 3 s)" in out.stderr


USAGE_ERRORS = [  # (argv, what click's "Error:" line says)
    (["trian"], "No such command 'trian'. Did you mean 'train'?"),
    (["train", "--confg", "x"], "--confg"),
    (["train", "--num-workers", "two"], "Invalid value for '--num-workers'"),
    (["simulate"], "Missing option '--out'"),
    (["simulate", "--out", "x", "--style", "gray"], "Invalid value for '--style'"),
    (["refine", "--format", "jpeg"], "Invalid value for '--format'"),
    (["data", "fetch"], "No such command 'fetch'"),
]


def _usage_errors(env=None) -> None:
    for argv, needle in USAGE_ERRORS:
        out = subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **(env or {})})
        assert out.returncode == 2, (argv, out.stderr)
        assert out.stderr.startswith("Usage: simgan-ray") and "Traceback" not in out.stderr, (argv, out.stderr)
        error = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
        assert len(error) == 1 and needle in error[0], (argv, out.stderr)
    bare = subprocess.run([str(BIN)], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert bare.returncode == 2 and "Commands:" in bare.stdout + bare.stderr


def test_usage_errors_are_clicks_with_exit_2():
    _usage_errors()


def test_help_shows_flags_and_choices_as_click_does():
    for flag in ("-h", "--help"):
        assert run("train", flag).stdout.startswith("Usage: simgan-ray train [OPTIONS]")
    text = {c: run(*c.split(), "-h").stdout for c in ("train", "refine", "evaluate", "simulate", "ingest")}
    assert "<bool>" not in "".join(text.values()) and "--resume / --no-resume" in text["train"]
    assert "--set FIELD=VALUE" in text["train"]
    for command, choices in (("refine", "--format [parquet|png]"), ("evaluate", "--task [classification|regression]"),
                             ("simulate", "--style [mnist|color]"), ("ingest", "--fit [resize|crop|pad]"),
                             ("ingest", "--kind [real|synthetic|dev|val|test]")):
        name, _, values = choices.partition(" ")  # typer 0.2x's own click writes <a|b>, click [a|b]
        assert f"{name} [{values[1:-1]}]" in text[command] or f"{name} <{values[1:-1]}>" in text[command], choices


def test_version_is_the_installed_package():
    from importlib import metadata

    out = run("--version")
    assert out.returncode == 0 and out.stdout == f"simgan-ray {metadata.version('simgan-ray')}\n"


@pytest.mark.network
def test_usage_errors_with_the_lowest_typer_the_range_allows(tmp_path):
    """pyproject's lower bound of typer, installed beside the locked one (first on PYTHONPATH)."""
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["dependencies"]
    (typer,) = [Requirement(d) for d in deps if Requirement(d).name == "typer"]
    lowest = next(s.version for s in typer.specifier if s.operator == ">=")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp_path),
                    f"typer=={lowest}"], check=True, timeout=300)
    env = {"PYTHONPATH": str(tmp_path)}
    version = subprocess.run([sys.executable, "-c", "import typer; print(typer.__version__)"], capture_output=True,
                             text=True, env={**os.environ, **env}, check=True).stdout.strip()
    assert version == lowest
    _usage_errors(env)


def test_a_small_run_prints_one_line_per_report_and_its_result_alone_on_stdout(digit_sets, tmp_path):
    import json

    from tests.conftest import TINY

    sets = [f"--set={k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in {
        **TINY, "data.synthetic": digit_sets["synthetic"], "data.real": digit_sets["real"], "batch_size": 8,
        "history_size": 40, "schedule.pretrain_refiner_steps": 10, "schedule.pretrain_discriminator_steps": 10,
        "schedule.steps": 20, "run.report_every": 10, "run.checkpoint_every": 20}.items()]
    out = subprocess.run([str(BIN), "train", *sets, "--storage", str(tmp_path), "--name", "r", "--num-workers", "2",
                          "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)  # stdout: the result alone
    assert summary["step"] == 40 and summary["export"] == f"{tmp_path}/r/export"
    reports = [line for line in out.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in reports] == ["10/40", "20/40", "30/40", "40/40"]
    assert "adversarial | " in reports[-1] and " elapsed, ETA 0:00 | " in reports[-1] and "images/s" in reports[-1]
    assert "loss_r_adv=" in reports[-1] and "d_acc_real=" in reports[-1]
    assert len(out.stderr.splitlines()) <= len(reports) + 3, out.stderr  # Ray's own output stays in its logs
    assert "Started a local Ray" not in out.stderr
    assert (tmp_path / "r" / "config.yaml").exists() and "# resolved config" not in out.stderr


def test_verbose_brings_rays_own_output_back(tmp_path):
    # Without it, Ray's own lines stay in Ray's logs: the small run above asserts so of a command that
    # starts a local Ray.
    loud = run("simulate", "--count", "8", "--out", str(tmp_path / "b"), "--verbose")
    assert loud.returncode == 0 and "Started a local Ray instance" in loud.stderr
    assert loud.stdout.startswith("wrote 8 images in 1 shard to ")  # stdout: the result alone still

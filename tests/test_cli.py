"""The real console script, as a user runs it: exit codes and one-line errors."""

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).with_name("simgan-ray")


def run(*args, cwd=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in ("train", "simulate", "data"):
        assert command in out.stdout
    sub = run("data", "--help")
    assert "fetch-mnist" in sub.stdout


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

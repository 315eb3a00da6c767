"""Runs: `--resume` continues only a folder whose owner record says it is a simgan-ray training run;
the refusal for any other folder never suggests it; resuming with changed data, loss, history or
workers lists the differences and refuses unless --allow-changes (steps, report and checkpoint
intervals and learning rates may change)."""

from __future__ import annotations

import pytest

from simgan_ray import ownership
from simgan_ray.config import dump_config, load_config
from simgan_ray.train import TRAIN_SNAPSHOT

from .conftest import TINY, console, one_line_refusal, snapshot


@pytest.mark.slow
def test_resume_continues_only_a_run_and_shows_what_changed(tmp_path, digit_sets):
    given = {**TINY, "data.synthetic": digit_sets["synthetic"], "data.real": digit_sets["real"]}
    with ownership.claimed(str(tmp_path / "run"), "train") as run:  # a run with a committed checkpoint
        run.write({"config.yaml": dump_config(load_config(None, given)).encode(), TRAIN_SNAPSHOT: b"{}"})
    with ownership.claimed(str(tmp_path / "refined"), "refine") as out:
        out.write({"manifest.json": b"{}"})
    sets = [f"--set={k}={v}" for k, v in given.items()]
    before = snapshot(str(tmp_path))

    def train(name: str, *args: str):
        return console("train", *sets, "--storage", str(tmp_path), "--name", name, "--dry-run", *args)

    one_line_refusal(train("run"), "already holds a simgan-ray training run: continue it with --resume")
    line = one_line_refusal(train("refined", "--resume"), "belongs to `simgan-ray refine`")
    assert "--resume" not in line
    line = one_line_refusal(train("run", "--resume", "--set", "loss.lam=0.5", "--set", "run.num_workers=1"),
                            "resuming with other settings than the run's (loss.lam: 0.1 in the run, 0.5 now; "
                            "run.num_workers: 2 in the run, 1 now): pass --allow-changes")
    done = train("run", "--resume", "--set", "loss.lam=0.5", "--allow-changes")
    assert done.returncode == 0 and "dry run: resume run" in done.stderr, done.stderr[-2000:]
    done = train("run", "--resume", "--set", "schedule.steps=7", "--set", "optimizer_r.lr=0.0005")
    assert done.returncode == 0, done.stderr[-2000:]
    assert snapshot(str(tmp_path)) == before

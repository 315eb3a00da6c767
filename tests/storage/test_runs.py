"""Runs: `--resume` continues only a folder whose owner record says it is a simgan-ray training run;
the refusal for any other folder never suggests it; resuming with changed data, loss, history or
workers lists the differences and refuses unless --allow-changes (steps, report and checkpoint
intervals and learning rates may change); the checkpoint list a resume reads is checked: a damaged
newest checkpoint is skipped with a note, a name outside the run folder refused."""

from __future__ import annotations

import pytest

from simgan_ray.common.errors import SimganError
from simgan_ray.storage import ownership
from simgan_ray.training.config import dump_config, load_config
from simgan_ray.training.train import TRAIN_SNAPSHOT, preflight
from tests.conftest import TINY, checkpoint_list, console, fake_checkpoint, one_line_refusal, snapshot


@pytest.mark.slow
def test_resume_continues_only_a_run_and_shows_what_changed(tmp_path, digit_sets):
    given = {**TINY, "data.synthetic": digit_sets["synthetic"], "data.real": digit_sets["real"]}
    with ownership.claimed(str(tmp_path / "run"), "train") as run:  # a run with a committed checkpoint
        run.write({"config.yaml": dump_config(load_config(None, given)).encode()})
        fake_checkpoint(run, "checkpoint_a")
        run.write({TRAIN_SNAPSHOT: checkpoint_list("checkpoint_a")})
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


def test_resume_skips_a_damaged_newest_checkpoint_and_refuses_one_outside_the_run(tmp_path, digit_sets, capsys):
    given = {**TINY, "data.synthetic": digit_sets["synthetic"], "data.real": digit_sets["real"],
             "run.storage": str(tmp_path), "run.name": "run"}
    cfg = load_config(None, given)
    with ownership.claimed(str(tmp_path / "run"), "train") as run:
        run.write({"config.yaml": dump_config(cfg).encode()})
        fake_checkpoint(run, "checkpoint_a")
        fake_checkpoint(run, "checkpoint_b", intact=False)  # the newest, cut short
        run.write({TRAIN_SNAPSHOT: checkpoint_list("checkpoint_a", "checkpoint_b")})
    checked = preflight(cfg, resume=True)
    assert checked.snapshot["latest_checkpoint_result"]["checkpoint_dir_name"] == "checkpoint_a"
    assert [r["checkpoint_dir_name"] for r in checked.snapshot["checkpoint_results"]] == ["checkpoint_a"]
    assert "checkpoint checkpoint_b is damaged (state.pt: " in capsys.readouterr().err
    with ownership.claimed(str(tmp_path / "run"), "train", resume=True) as run:
        fake_checkpoint(run, "checkpoint_a", intact=False)  # now every one is
    with pytest.raises(SimganError, match="no intact checkpoint to resume from"):
        preflight(cfg, resume=True)
    for hostile in ("../elsewhere", "/etc", "a/../../b"):
        with ownership.claimed(str(tmp_path / "run"), "train", resume=True) as run:
            run.write({TRAIN_SNAPSHOT: checkpoint_list("checkpoint_a", latest=hostile)})
        with pytest.raises(SimganError, match=r"checkpoint_manager_snapshot.json: checkpoint .* is not a folder of "
                                              "this run: refusing to resume from it"):
            preflight(cfg, resume=True)

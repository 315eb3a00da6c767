import csv
import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from simgan_ray.common.errors import SimganError
from simgan_ray.model.export import load_export
from simgan_ray.sweeps.results import Trial, rank, spearman
from simgan_ray.sweeps.spec import load_spec
from simgan_ray.sweeps.tune import run_sweep
from simgan_ray.training.config import load_config
from tests.conftest import BIN, TINY, console


def write_spec(tmp_path, digit_sets, labelled_real_sets, run=None, **extra) -> str:
    base = {
        "batch_size": 8, "history_size": 16,
        "refiner": {"features": 8, "blocks": 1}, "discriminator": {"widths": [8, 8, 8, 8]},
        "schedule": {"pretrain_refiner_steps": 2, "pretrain_discriminator_steps": 2, "steps": 4},
        "data": {"synthetic": digit_sets["synthetic"], "real": digit_sets["real"]},
        "run": run or {"num_workers": 1, "report_every": 2, "checkpoint_every": 4},
        "probe": {"images": 64},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "base": "base.yaml",
        "search": {"loss.lam": {"loguniform": [0.01, 1.0]}, "optimizer_r.lr": {"choice": [0.001, 0.0003]}},
        "probe": {"uri": str(tmp_path / "probe"), "real_train": labelled_real_sets["dev"],
                  "reference": digit_sets["real"], "train_images": 200, "epochs": 1},
        "num_samples": 2, "grace_period": 4, "storage": str(tmp_path / "runs"), "name": "sweep", **extra,
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "tune.yaml")


@pytest.mark.slow  # the console script: its own local Ray, then the session's
def test_a_sweep_stopped_part_way_continues_with_resume_and_ranks_by_the_probe(digit_sets, labelled_real_sets,
                                                                               tmp_path, joined_ray):
    # Two trials of 20 steps, one at a time; ASHA prunes nothing (its first rung is the last step).
    path = write_spec(tmp_path, digit_sets, labelled_real_sets, grace_period=20, max_concurrent_trials=1,
                      run={"num_workers": 1, "report_every": 2, "checkpoint_every": 4})
    assert load_spec(path)[1].refiner.features == TINY["refiner.features"]
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base["schedule"]["steps"] = 16
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "runs" / "sweep"
    sweep = subprocess.Popen([str(BIN), "tune", "--config", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 300
    while not list((out / "trials").glob("*/checkpoint_*")):  # the first trial checkpointed: stop the sweep
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.2)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 128 + signal.SIGTERM and "run the same command with --resume" in err, err
    assert not (out / "results.csv").exists()
    again = subprocess.run([str(BIN), "tune", "--config", path, "--resume"], capture_output=True, text=True,
                           timeout=600, env={**os.environ, **joined_ray})  # on the session's Ray
    assert again.returncode == 0, again.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok"] and {r["step"] for r in rows} == {"20"}
    # A stopped trial went on from its Train run's checkpoint: every report once, in order.
    for row in rows:
        steps = [m["step"] for m in map(json.loads, open(out / "trials" / row["run"] / "metrics.jsonl"))]
        assert steps == list(range(2, 21, 2)), steps
    # Ranked by the probe: the best trial's config and export beside the table.
    fds = [float(r["probe_fd"]) for r in rows]
    assert fds == sorted(fds) and "| trial |" in (out / "results.md").read_text()
    assert load_config(out / "best.yaml").loss.lam == pytest.approx(float(rows[0]["loss.lam"]))
    assert load_export(str(out / "best" / "export"))[1]["step"] == 20
    twice = console("tune", "--config", path, timeout=120)
    assert twice.returncode == 2 and ("already holds a simgan-ray sweep: continue it with --resume, or pick another "
                                      "name") in twice.stderr, twice.stderr
    fresh = console("tune", "--config", path, "--resume", "--name", "never-run", timeout=120)
    assert fresh.returncode == 2 and "no simgan-ray sweep to continue there" in fresh.stderr


def test_spearman_ranks_ties_and_needs_three_pairs():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 6, 7]) == pytest.approx(0.866, abs=1e-3)  # the tie shares rank 0.5
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_ranking_puts_finished_trials_first_whatever_a_pruned_one_scored(tmp_path, digit_sets, labelled_real_sets):
    spec, _ = load_spec(write_spec(tmp_path, digit_sets, labelled_real_sets))
    trials = [Trial("a", "ok", step=8, metrics={"probe_fd": 5.0}),
              Trial("pruned", "ok", step=4, metrics={"probe_fd": 0.1}),  # better, but at rung 4 of 8
              Trial("failed", "error: boom"),
              Trial("b", "ok", step=8, metrics={"probe_fd": 2.0})]
    ranked = rank(trials, spec, total=8)
    assert [t.trial for t in ranked] == ["b", "a", "pruned", "failed"]
    assert ranked[2].status == "stopped by ASHA at step 4"
    maximise = spec.model_copy(update={"metric": "probe_label_acc", "mode": "max"})
    trials = [Trial(t, "ok", step=8, metrics={"probe_label_acc": acc}) for t, acc in (("lo", 0.2), ("hi", 0.9))]
    assert [t.trial for t in rank(trials, maximise, total=8)] == ["hi", "lo"]


def test_spec_errors_name_the_field(tmp_path, digit_sets, labelled_real_sets):
    path = write_spec(tmp_path, digit_sets, labelled_real_sets, num_samples=0)
    with pytest.raises(SimganError, match="num_samples"):
        load_spec(path)
    spec = yaml.safe_load(open(path))
    spec["num_samples"] = 2
    spec["search"]["refiner.nope"] = {"choice": [1]}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SimganError, match=r"search.refiner.nope: refiner.nope"):
        load_spec(path)
    spec["search"] = {"loss.lam": {"choice": [1], "uniform": [0, 1]}}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SimganError, match="exactly one of grid, choice"):
        load_spec(path)


def test_a_grid_runs_every_combination(tmp_path, digit_sets, labelled_real_sets):
    path = write_spec(tmp_path, digit_sets, labelled_real_sets, num_samples=2)
    spec = yaml.safe_load(open(path))
    spec["search"] = {"loss.lam": {"grid": [0.05, 0.07]}, "batch_size": {"grid": [8, 16, 32]},
                      "optimizer_r.lr": {"choice": [0.001, 0.0003]}}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    loaded, _ = load_spec(path)
    assert loaded.trials == 2 * 2 * 3  # num_samples times over the grid
    assert loaded.search["batch_size"].to_tune() == {"grid_search": [8, 16, 32]}
    spec["search"]["batch_size"] = {"grid": []}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SimganError, match="search.batch_size.grid"):
        load_spec(path)
    spec["search"] = {"loss.lam": {"grid": [0.05, 0.07]}}
    spec.update(scheduler="pbt", overrides={"run.report_every": 4})
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SimganError, match="search.loss.lam: PBT perturbs values drawn from a distribution"):
        load_spec(path)


def test_pbt_sweep_restarts_trials_from_checkpoints(ray_session, digit_sets, labelled_real_sets, tmp_path):
    # One trial at a time: synch PBT pauses each trial at step 4 and, once both got there, restarts
    # them from checkpoints; the bottom half from the top trial's checkpoint, with mutated values.
    # Both finished trials are then evaluated on val and ranked by it (rank_by: val).
    validation = {"real_train": labelled_real_sets["dev"], "real_test": labelled_real_sets["val"],
                "real_pool": digit_sets["real"], "seeds": 1, "train_images": 128, "test_images": 100, "epochs": 1}
    path = write_spec(tmp_path, digit_sets, labelled_real_sets, scheduler="pbt", perturbation_interval=4,
                      quantile_fraction=0.5, run={"num_workers": 1, "report_every": 4, "checkpoint_every": 4},
                      validation=validation, rank_by="val")
    spec, base = load_spec(path)
    summary = run_sweep(spec, base)
    out = tmp_path / "runs" / "sweep"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok"] and {r["step"] for r in rows} == {"8"}
    for row in rows:
        assert row["run"].startswith(row["trial"] + "-")  # its last Train run resumed a checkpoint
        steps = [m["step"] for m in map(json.loads, open(out / "trials" / row["run"] / "metrics.jsonl"))]
        assert steps == [4, 8]  # the history of the checkpoint it started from, then its own step
    refiner, meta = load_export(str(out / "best" / "export"))
    assert meta["step"] == 8 and summary.best.run == rows[0]["run"]
    errors = [float(r["val_error"]) for r in rows]
    assert errors == sorted(errors) and all(0 <= e <= 1 for e in errors)  # ranked by val error
    assert summary.rank_correlation is None  # two trials: no rank correlation to speak of
    assert "Rank correlation (Spearman) of probe_fd and val error" in (out / "results.md").read_text()
    for row in rows:
        assert (out / "val" / row["run"] / "report.json").exists()


def test_pbt_spec_refuses_what_pbt_cannot_mutate(tmp_path, digit_sets, labelled_real_sets):
    path = write_spec(tmp_path, digit_sets, labelled_real_sets, scheduler="pbt")
    with pytest.raises(SimganError, match="checkpoint_every == run.report_every"):
        load_spec(path)
    spec = yaml.safe_load(open(path))
    spec["search"]["refiner.features"] = {"choice": [8, 16]}
    spec["overrides"] = {"run.report_every": 4}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SimganError, match="search.refiner.features: PBT can only mutate"):
        load_spec(path)

"""benchmarks/screen.py (the GPU screen of recipe ideas on val) on this CPU with --quick: every
(idea, seed) a row with val scores, the table by idea; a test set refused as --val."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simgan_ray.measures.probe import ProbeSpec, build_probe

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # worker processes
def test_screen_quick_scores_every_idea_and_seed_on_val(digit_sets, labelled_real_sets, tmp_path):
    probe = str(tmp_path / "probe")
    build_probe(ProbeSpec(real_train=labelled_real_sets["dev"], reference=digit_sets["real"], out=probe,
                          train_images=200, reference_images=200, epochs=1))
    rows = tmp_path / "screen" / "rows.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks/screen.py"), "--device", "cpu", "--quick", "--procs", "2",
           "--probe", probe, "--real-train", labelled_real_sets["dev"], "--val", labelled_real_sets["val"],
           "--set", f"data.synthetic={digit_sets['synthetic']}", "--set", f"data.real={digit_sets['real']}",
           "--set", "guard.min_label_acc=null",  # the tiny probe cannot read these digits
           "--set", "run.precision=fp32",  # the recipe's bf16 is emulated, several times slower, on CPUs without it
           "--idea", "base", "--idea", "lam: loss.lam=0.07; schedule.k_d=1", "--seeds", "0", "1", "--json", str(rows)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    got = [json.loads(line) for line in rows.read_text().splitlines()]
    # Seed-major: every idea's seed 0 before any seed 1.
    assert [(r["idea"], r["seed"]) for r in got] == [("base", 0), ("lam", 0), ("base", 1), ("lam", 1)]
    assert got[1]["overrides"] == {"loss.lam": 0.07, "schedule.k_d": 1}
    for r in got:
        assert 0 <= r["val_error"] <= 1 and len(r["val_errors"]) == 1
        assert 0 <= r["labels_kept"] <= 1 and 0 <= r["two_sample"] <= 1
        assert r["weights_step"] > 0 and r["weights_probe_fd"] > 0
    table = rows.with_suffix(".md").read_text()
    assert "| raw synthetic |" in table and "| base | [0, 1] |" in table and "| lam | [0, 1] |" in table

    # A set of manifest kind "test" is never screened on; a bad override fails before any run.
    for bad, message in (([*cmd[:-2], "--val", labelled_real_sets["test"]], "a test set"),
                         ([*cmd, "--idea", "oops: schedule.k_d=0"], "k_d")):
        run = subprocess.run(bad, capture_output=True, text=True, timeout=120)
        assert run.returncode != 0 and message in run.stderr, run.stderr[-2000:]
        assert "Traceback" not in run.stderr

"""A resumed sweep's ASHA decides as an uninterrupted one: the rungs are rebuilt from the trials'
own reports when Tune re-adds them (Tune's restored scheduler is the one pickled at the start)."""

import json
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from simgan_ray.storage import S3Options
from simgan_ray.sweeps.asha import ReplayedASHA


def scheduler(tmp_path) -> ReplayedASHA:
    asha = ReplayedASHA(str(tmp_path), S3Options(), time_attr="step", max_t=3000, grace_period=500,
                        reduction_factor=3)
    asha.set_search_properties("probe_fd", "min")
    return asha


def reported(tmp_path, trial: str, *reports: tuple[int, float]) -> SimpleNamespace:
    (tmp_path / trial).mkdir()
    lines = [json.dumps({"step": step, "phase": "adversarial", "probe_fd": fd}) for step, fd in reports]
    (tmp_path / trial / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return SimpleNamespace(trial_id=trial)


def test_the_rungs_come_back_from_the_trials_reports(tmp_path):
    # Before the stop: a and b passed the rung at 500 (60 and 50); c had reported only before it.
    a = reported(tmp_path, "a", (250, 90.0), (500, 60.0), (750, 45.0))
    b = reported(tmp_path, "b", (250, 95.0), (500, 50.0))
    c = reported(tmp_path, "c", (250, 99.0))
    resumed = scheduler(tmp_path)
    for trial in (a, b, c):
        resumed.on_trial_add(None, trial)
    # c reaches the rung after the resume: compared with a's and b's scores at 500, as without the stop.
    assert resumed.on_trial_result(None, c, {"step": 500, "probe_fd": 58.0}) == TrialScheduler.STOP
    # a's rung decision was made before the stop: its next report goes on whatever it scores.
    assert resumed.on_trial_result(None, a, {"step": 800, "probe_fd": 99.0}) == TrialScheduler.CONTINUE

    # Without the replay (Tune's own restore), c would be the first at the rung and go on.
    fresh = scheduler(tmp_path)
    fresh.on_trial_add(None, SimpleNamespace(trial_id="new"))  # no reports: nothing to replay
    assert fresh.on_trial_result(None, SimpleNamespace(trial_id="new"), {"step": 500, "probe_fd": 58.0}) \
        == TrialScheduler.CONTINUE

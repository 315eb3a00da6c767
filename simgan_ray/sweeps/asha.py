"""ASHA that keeps its rungs across a stop: Ray Tune rebuilds a restored sweep's scheduler from the
copy it pickled when the sweep started, so every score recorded at the rungs would be lost, and the
first trial to report after the resume would be compared with nothing while the next were compared
with it at another step. Here each trial that joins the sweep (on `Tuner.restore`, every trial it
had) first replays its own recorded reports (its Train run's metrics.jsonl, every report once) into
the rungs, so a resumed sweep stops the trials an uninterrupted one would have stopped.
"""

from __future__ import annotations

from ray.tune.schedulers import AsyncHyperBandScheduler

from simgan_ray import storage
from simgan_ray.runtime.progress import read_reports
from simgan_ray.storage import S3Options


class ReplayedASHA(AsyncHyperBandScheduler):
    """ASHA over `time_attr` (a report field); `trials_storage`: where each trial's Train run
    `<trial id>/metrics.jsonl` is (the sweep names a trial's run by its id)."""

    def __init__(self, trials_storage: str, s3: S3Options, **asha) -> None:
        super().__init__(**asha)
        self.trials_storage, self.s3 = trials_storage, s3

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        for report in read_reports(storage.join(self.trials_storage, trial.trial_id), self.s3):  # none for a new trial
            self.on_trial_result(tune_controller, trial, report)  # records each rung's first score; no action taken

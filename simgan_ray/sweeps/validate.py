"""A sweep's finished trials evaluated on val: the `evaluate` protocol on each trial's export, so
that the sweep's report gives every finished trial's val error beside its probe score, and a sweep
may rank by val error instead of the probe (`rank_by: val`). Never the test set: evaluate refuses
one without --final, and a sweep has none."""

from __future__ import annotations

from simgan_ray import storage
from simgan_ray.apply.evaluate import EvalConfig, evaluate
from simgan_ray.sweeps.results import Trial
from simgan_ray.sweeps.spec import Validation
from simgan_ray.training.config import TrainConfig


def validate_trials(trials: list[Trial], validation: Validation, base: TrainConfig, sweep: str,
                    trials_storage: str) -> None:
    """Evaluate each trial that ran every step on val, its report in <sweep>/val/<run>; its refined
    images' error (mean over seeds) and relative error reduction go into its metrics as val_error and
    val_reduction."""
    for trial in trials:
        if trial.status != "ok":
            continue
        report = evaluate(EvalConfig(
            synthetic=base.data.synthetic, refiner=storage.join(trials_storage, trial.run),
            out=storage.join(sweep, "val", trial.run), s3=base.data.s3,
            **validation.model_dump(),  # every field of it is one of EvalConfig's
        ))
        trial.metrics["val_error"] = report.test_error["refined"].mean
        trial.metrics["val_reduction"] = report.relative_error_reduction

"""A sweep's finished trials evaluated on val: the `evaluate` protocol on each trial's export, so
that the sweep's report gives every finished trial's val error beside its probe score, and a sweep
may rank by val error instead of the probe (`rank_by: val`). Never the test set: evaluate refuses
one without --final, and a sweep has none."""

from __future__ import annotations

from pydantic import Field

from simgan_ray import storage
from simgan_ray.apply.evaluate import EvalConfig, evaluate
from simgan_ray.common.settings import Section
from simgan_ray.storage.fields import Location
from simgan_ray.sweeps.results import Trial
from simgan_ray.training.config import TrainConfig


class Validation(Section):
    """`validation` of a tune spec: the sets and sizes of the evaluation of each finished trial."""

    real_train: Location
    """labelled real set of the ceiling classifier (digits: mnist/dev)"""
    real_test: Location
    """the labelled val set the errors are measured on (digits: mnist/val; a test set is refused)"""
    real_pool: Location
    """unlabelled real images for the two-sample test (digits: mnist/real)"""
    seeds: int = Field(2, ge=1)
    """classifier seeds per training source"""
    train_images: int = Field(20_000, ge=1)
    """training images per classifier"""
    test_images: int = Field(10_000, ge=1)
    """val images the errors are measured on"""
    epochs: int = Field(3, ge=1)
    """classifier epochs"""
    label_key: str = "digit"
    """the class field of the labels"""
    num_classes: int = Field(10, ge=2)
    """number of classes"""


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

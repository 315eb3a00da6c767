"""A sweep's spec file (`simgan-ray tune --config`): the base train config every trial starts from,
what to search (a distribution per dotted train-config key), the scheduler (ASHA or PBT), the probe
that ranks the trials, and the optional evaluation of the finished trials on val; `load_spec`
reads and checks it against the base config before anything runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from simgan_ray.common.errors import SimganError, format_errors
from simgan_ray.common.settings import Section
from simgan_ray.common.yamlfiles import read_yaml
from simgan_ray.storage.fields import Location
from simgan_ray.training.config import TrainConfig, load_config, with_overrides

# Fields PBT may change when it restarts a trial from another's checkpoint: nothing that changes a
# tensor's shape (network sizes, history capacity) or the data.
PBT_MUTABLE = ("loss.lam", "optimizer_r.lr", "optimizer_d.lr", "schedule.k_g", "schedule.k_d")


class Dist(Section):
    """One search dimension: exactly one of the keys."""

    grid: list[Any] | None = Field(None, min_length=1)  # every value: each combination of the grid keys is a trial
    choice: list[Any] | None = Field(None, min_length=1)  # one value drawn at random per trial
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None  # [low, high)

    @model_validator(mode="after")
    def _one(self) -> Dist:
        given = [k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of grid, choice, uniform, loguniform, randint")
        if self.loguniform is not None and min(self.loguniform) <= 0:
            raise ValueError("loguniform bounds must be > 0")
        return self

    def to_tune(self):
        from ray import tune  # at use: a spec is read and checked without Ray

        if self.grid is not None:
            return tune.grid_search(self.grid)
        if self.choice is not None:
            return tune.choice(self.choice)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        return tune.randint(*self.randint)


class ProbeSource(Section):
    uri: Location  # where the probe lives; built from the two sets below if missing
    real_train: Location
    reference: Location  # real images apart from the test set (digits: the real pool)
    train_images: int = Field(10_000, ge=100)  # build_probe holds out a tenth, >= 10, for the probe's error
    epochs: int = Field(3, ge=1)


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


class TuneSpec(Section):
    base: str  # train config YAML, relative to the spec file
    overrides: dict[str, Any] = {}  # dotted train-config keys applied to every trial
    search: dict[str, Dist]  # dotted train-config key -> distribution
    probe: ProbeSource
    scheduler: Literal["asha", "pbt"] = "asha"
    metric: Literal["probe_fd", "probe_label_acc"] = "probe_fd"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(8, ge=1)  # trials drawn; with grid keys, times over the whole grid
    # Trials at once. On a local Ray their workers share the cores where they exceed them (logical CPUs
    # may); ASHA compares a trial at a rung with those that reached it before, so one at a time the
    # first trial never stops early.
    max_concurrent_trials: int = Field(1, ge=1)
    grace_period: int = Field(100, ge=1)  # steps every trial runs before ASHA may stop it
    reduction_factor: int = Field(2, ge=2)
    # PBT: every `perturbation_interval` steps, a trial in the bottom `quantile_fraction` restarts
    # from a top trial's latest checkpoint with that trial's hyperparameters perturbed (x0.8 / x1.2)
    # or, with `resample_probability`, drawn again from `search`.
    perturbation_interval: int = Field(200, ge=1)
    # synch: trials wait for each other at every perturbation (paused, resumed from checkpoints), so
    # PBT compares the whole population even when the machine runs one trial at a time.
    synch: bool = True
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)
    storage: Location = "runs"
    name: str = Field("tune", pattern=r"^[A-Za-z0-9._-]+$")
    # After the sweep, each finished trial evaluated on val (the evaluate protocol), reported beside its
    # probe score with the rank correlation of the two; rank_by: val ranks the finished trials by it.
    validation: Validation | None = None
    rank_by: Literal["probe", "val"] = "probe"

    @property
    def trials(self) -> int:
        """How many trials the sweep runs: num_samples, times the grid's combinations."""
        return self.num_samples * math.prod(len(d.grid) for d in self.search.values() if d.grid is not None)

    @model_validator(mode="after")
    def _val_ranking_needs_validation(self) -> TuneSpec:
        if self.rank_by == "val" and self.validation is None:
            raise ValueError("rank_by: val needs a validation section (the val set the trials are evaluated on)")
        return self


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None,
              base_overrides: dict[str, Any] | None = None) -> tuple[TuneSpec, TrainConfig]:
    """The sweep spec (`overrides`: its own fields) and the base train config every trial starts
    from: its file < the spec's `overrides` < `base_overrides` ({'dotted.key': value}, `tune --set`)."""
    path = Path(path)
    raw = read_yaml(path, "tune spec")
    for key, value in (overrides or {}).items():
        raw[key] = value
    try:
        spec = TuneSpec.model_validate(raw)
    except ValidationError as e:
        raise SimganError(format_errors(str(path), e, model=TuneSpec)) from None
    base = load_config(path.parent / spec.base,
                       {**spec.overrides, **(base_overrides or {}), "probe.uri": spec.probe.uri})
    for key, dist in spec.search.items():  # every searched key must be a valid train-config field
        example = (dist.grid or dist.choice or dist.uniform or dist.loguniform or dist.randint)[0]
        with_overrides(base, {key: example}, f"{path}: search.{key}")
    if spec.scheduler == "pbt":
        if grid := [key for key, dist in spec.search.items() if dist.grid is not None]:
            raise SimganError(f"{path}: search.{grid[0]}: PBT perturbs values drawn from a distribution; give "
                              "choice, uniform, loguniform or randint, or sweep a grid with scheduler: asha")
        fixed = [key for key in spec.search if key not in PBT_MUTABLE]
        if fixed:
            raise SimganError(f"{path}: search.{fixed[0]}: PBT can only mutate {', '.join(PBT_MUTABLE)} "
                              "mid-run; set the others in overrides or sweep them with scheduler: asha")
        if base.run.checkpoint_every != base.run.report_every:
            # PBT clones the checkpoint of a trial's latest report, so every report must carry one.
            raise SimganError(f"{path}: scheduler pbt needs run.checkpoint_every == run.report_every "
                              f"(got {base.run.checkpoint_every} and {base.run.report_every})")
    return spec, base

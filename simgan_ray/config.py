"""Typed, validated run configuration.

One resolve order: defaults (the field defaults below) < YAML file < CLI overrides. Every section
forbids unknown keys, so a typo is an error naming the field, never a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    ValidationError,
    model_validator,
)

from simgan_ray.errors import SimganError, first_line, format_errors
from simgan_ray.losses import Psi, Reduction
from simgan_ray.networks import DiscriminatorConfig, RefinerConfig
from simgan_ray.storage import S3Options, join, normalize


def _location(uri: str) -> str:
    try:
        return normalize(uri)
    except SimganError as e:
        raise ValueError(str(e)) from None  # pydantic then names the field


# A local path or s3:// URI, made absolute when the config is resolved: Ray Train workers and Tune
# trials run in other working directories, so a relative path would point elsewhere there.
Location = Annotated[str, AfterValidator(_location)]


class Section(BaseModel):
    # No inf or NaN in any number: `lr: .inf` validated as a positive float and failed in the workers.
    # validate_default: a default location is made absolute too, as one given in a file is.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)


def from_options(model: type[Section], **options) -> Section:
    """A section from a command's options; a bad one -> SimganError naming the option (--test-images)."""
    try:
        return model(**options)
    except ValidationError as e:
        raise SimganError("; ".join(f"--{'.'.join(map(str, x['loc'])).replace('_', '-')}: {x['msg']}"
                                    for x in e.errors())) from None


class OptimizerConfig(Section):
    name: Literal["adam", "sgd"] = "adam"
    lr: PositiveFloat = 1e-3
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.999)  # adam
    momentum: NonNegativeFloat = 0.0  # sgd only
    weight_decay: NonNegativeFloat = 0.0


class LossConfig(Section):
    # Weight of the self-regularization term lambda * ||psi(R(x)) - psi(x)||_1.
    lam: NonNegativeFloat = 0.1
    psi: Psi = "identity"
    # How the adversarial loss reduces over the w x h patch map and the self-regularization over
    # pixels: "sum" per image then mean over the batch (paper), or "mean" over everything.
    reduction: Reduction = "sum"
    # R1 gradient penalty on D's real inputs, gamma/2 * E||d D(y)/d y||^2 (losses.R1Penalty); 0: off.
    # Why: a D that cannot grow steep around the real images gives R gradients that point towards
    # them rather than along D's latest edge.
    r1_gamma: NonNegativeFloat = 0.0


class ScheduleConfig(Section):
    """Phases run in order: pretrain R (self-regularization only), pretrain D, then `steps`
    adversarial steps of `k_g` refiner updates followed by `k_d` discriminator updates."""

    pretrain_refiner_steps: int = Field(1000, ge=0)
    pretrain_discriminator_steps: int = Field(200, ge=0)
    steps: int = Field(10000, ge=0)
    k_g: int = Field(2, ge=1)
    k_d: int = Field(1, ge=1)
    # Adversarial steps over which both learning rates ramp linearly up to their set values (lr/n,
    # 2lr/n, ..., lr). Why: Adam's second-moment estimate for R was built on self-regularization
    # gradients alone, far smaller than the adversarial gradients that start with this phase, so
    # R's first full-lr adversarial updates are many times lr in size and can kill the refiner.
    warmup_steps: int = Field(0, ge=0)
    # After the warm-up, both learning rates fall from their set values to `lr_final` times them at
    # the last adversarial step ("none": they stay). Why: late in a run R and D chase each other
    # around an equilibrium at full step size; smaller steps let both settle nearer it.
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    lr_final: float = Field(0.1, ge=0, le=1)
    # Half-life, in adversarial steps, of an exponential moving average of R's weights; the average
    # (not the last R) is what is exported, probed and sampled. 0: no average. Why: a GAN's refiner
    # oscillates around its equilibrium from report to report (the digits probe's Frechet distance
    # swings 38-65 between reports 50 steps apart late in a run), and the last iterate is a random
    # draw from that swing; the average sits nearer its centre (Yazici et al., ICLR 2019; StyleGAN's
    # G_ema). R itself keeps training and refining the images D sees. The half-life ramps in as
    # min(ema_half_life, t/2) over the first t adversarial steps, so early averages forget the
    # pretrained R quickly.
    ema_half_life: int = Field(0, ge=0)

    @property
    def total_steps(self) -> int:
        return self.pretrain_refiner_steps + self.pretrain_discriminator_steps + self.steps


class DataConfig(Section):
    synthetic: Location = "data/digits/synthetic"  # shard directory/prefix (see docs/storage.md, data format)
    real: Location = "data/digits/mnist/real"  # the unlabelled real pool `data fetch-mnist` writes
    s3: S3Options = S3Options()
    shuffle_files: bool = True  # new shard order on every pass over a set
    local_shuffle_buffer: int = Field(0, ge=0)  # images mixed per worker before batching; 0 = off
    # Ray Data hands blocks out in a fixed order (ExecutionOptions.preserve_order): the streaming
    # split then deals them to the workers by count, not to whichever asks first, so a rerun on the
    # same machine with the same worker count sees the same images in the same order (tested).
    # Off: a block may wait for an earlier, slower one.
    preserve_order: bool = False
    strict: bool = False  # a corrupt image fails the run instead of being skipped and counted


class ProbeConfig(Section):
    """Real-data score during training (`simgan-ray probe` makes one): at every report, rank 0
    refines the first `images` synthetic images and reports probe_fd (Frechet distance of the
    probe classifier's features to its reference real images, kept apart from the test set; lower =
    more real) and probe_label_acc."""

    uri: Location | None = None
    images: int = Field(1000, ge=2)
    # What the export holds: R's weights (or their average) at the last step, or at the healthy report
    # with the lowest probe_fd ("best": chosen on the probe, never on a test set; the export records
    # that report's step and score). Why: late in a run the refiner can drift away from its best.
    export: Literal["last", "best"] = "last"


class ConsistencyConfig(Section):
    """Label consistency (beyond the paper: CyCADA's semantic consistency). A small classifier (the
    fixed recipe) trained on the synthetic set's own labels, no real labels, so still S+U; frozen.
    In R's adversarial updates R also pays `weight` x the cross-entropy of the classifier's logits on
    R(x) against its predicted class on x (per image, averaged over the batch): refining must not
    change what the digit reads as. The driver trains it when the run starts (seed: the run's) on
    the first `images` synthetic images less a held-out tenth, and keeps it in <run>/consistency/,
    where a resumed run finds it."""

    weight: NonNegativeFloat = 0.0  # 0: off
    images: int = Field(10_000, ge=100)
    label_key: str = "digit"  # class = int(label_json[label_key]) of the synthetic set
    num_classes: int = Field(10, ge=2)
    epochs: int = Field(2, ge=1)


class AugmentConfig(Section):
    """DiffAugment of everything D judges (augment.py); fractions of the image side, 0 = off."""

    translation: float = Field(0.0, ge=0, le=0.5)  # largest shift either way
    cutout: float = Field(0.0, ge=0, le=1)  # side of the blanked square


class GuardConfig(Section):
    """Collapse guard (needs probe.uri). A GAN can collapse in a few updates: D wins outright and the
    refiner's output saturates into blobs that carry no label. At a report where the probe's label
    accuracy on refined images is below `min_label_acc`, every rank rolls R, D, both optimizers and
    its history shard back to the last report that passed, the learning rates are multiplied by
    `lr_factor` from then on, and training goes on with fresh batches; after `max_rollbacks` the
    run fails. The collapsed stretch is neither checkpointed nor logged."""

    min_label_acc: float | None = Field(None, ge=0, le=1)  # None: no guard
    lr_factor: float = Field(0.7, gt=0, le=1)
    max_rollbacks: int = Field(3, ge=0)


class TrackingConfig(Section):
    """Where a run is logged besides its own directory (metrics.jsonl, tensorboard/, samples/ are
    always written): an MLflow tracking server, by rank 0, as Ray's MLflow integration does. Needs
    the mlflow (or mlflow-skinny) package on the workers."""

    mlflow_uri: str | None = None  # e.g. http://mlflow.internal:5000, or file:///path (a local file store)
    mlflow_experiment: str = "simgan-ray"


class RunConfig(Section):
    storage: Location = "runs"  # local dir or s3:// prefix; the run lives in <storage>/<name>
    name: str = Field("simgan", pattern=r"^[A-Za-z0-9._-]+$")
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    # bf16: forward passes autocast to bfloat16, channels_last weights; weights, optimizer state and
    # losses stay float32. ~2x the digits step on a CPU with AVX512-BF16 (benchmarks/RESULTS.md).
    precision: Literal["fp32", "bf16"] = "fp32"
    cpus_per_worker: PositiveFloat = 1.0
    report_every: int = Field(10, ge=1)  # steps between metric reports
    checkpoint_every: int = Field(100, ge=1)  # steps between checkpoints (and always at the end)
    keep_checkpoints: int = Field(3, ge=1)
    max_failures: int = Field(0, ge=0)  # worker failures survived by restoring the last checkpoint


class TrainConfig(Section):
    seed: int = Field(0, ge=0, lt=2**32)  # per-rank streams derive from it, and Ray Data's shuffle takes 32 bits
    batch_size: int = Field(64, ge=2, description="images per worker per update (D: b real + b refined)")
    history_size: int = Field(6400, ge=0, description="refined images kept for D, over all ranks")
    refiner: RefinerConfig = RefinerConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    loss: LossConfig = LossConfig()
    optimizer_r: OptimizerConfig = OptimizerConfig()
    optimizer_d: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    data: DataConfig = DataConfig()
    probe: ProbeConfig = ProbeConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    augment: AugmentConfig = AugmentConfig()
    guard: GuardConfig = GuardConfig()
    tracking: TrackingConfig = TrackingConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.refiner.channels != self.discriminator.channels:
            raise ValueError(
                f"refiner.channels ({self.refiner.channels}) != discriminator.channels "
                f"({self.discriminator.channels})"
            )
        if self.probe.export == "best" and not self.probe.uri:
            raise ValueError("probe.export: best needs probe.uri: the best report is the one with the lowest probe_fd")
        if self.guard.min_label_acc is not None and not self.probe.uri:
            raise ValueError("guard.min_label_acc needs probe.uri: the guard reads the probe's label accuracy")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @property
    def run_uri(self) -> str:
        """The run directory: run.storage / run.name."""
        return join(normalize(self.run.storage), self.run.name)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise SimganError(f"override {dotted}: {key} is not a section")
        tree = node
    tree[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'schedule.steps=20' -> ('schedule.steps', 20); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SimganError(f"override {text!r}: expected KEY=VALUE, e.g. schedule.steps=20")
    try:
        return key.strip(), load_yaml(value)
    except yaml.YAMLError as e:
        shown = text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"
        raise SimganError(f"override {shown!r}: the value is not YAML ({_yaml_problem(e)})") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message in one line: what went wrong and where (its own spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    what = getattr(error, "problem", None) or first_line(error)
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else what


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """YAML text -> its value, duplicate keys refused; nesting beyond Python's stack is a YAMLError."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deep") from None


def read_yaml(path: str | Path, what: str) -> dict:
    """The mapping in the YAML file at `path` ({} if empty); errors name the file and say what it
    should have been (`what`: "config file", "tune spec", ...)."""
    try:
        loaded = load_yaml(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SimganError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise SimganError(f"{path}: a directory, not a {what}") from None
    except OSError as e:
        raise SimganError(f"{path}: cannot read the {what} ({e.strerror or first_line(e)})") from None
    except UnicodeDecodeError as e:
        raise SimganError(f"{path}: not UTF-8 text (byte {e.start}), so not a {what}") from None
    except yaml.YAMLError as e:
        raise SimganError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise SimganError(f"{path}: expected a mapping at the top level ({what})")
    return loaded or {}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """defaults < YAML file at `path` < `overrides` ({'dotted.key': value})."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        tree = read_yaml(path, "config file")
        if {"base", "search"} <= set(tree):
            raise SimganError(f"{path}: a tune spec (it has base and search), not a train config: run it with "
                              f"`simgan-ray tune --config {path}`")
        if len(tree) >= 3 and not set(tree) & set(TrainConfig.model_fields):
            raise SimganError(f"{path}: not a simgan-ray config file: none of its {len(tree)} top-level keys is a "
                              "config field (seed, batch_size, refiner, data, run, ...; see jobs/digits.yaml)")
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    if overrides:
        source += " + overrides"
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        raise SimganError(format_errors(source, e, model=TrainConfig)) from None


def with_overrides(cfg: TrainConfig, overrides: dict[str, Any], source: str = "overrides") -> TrainConfig:
    """A copy of `cfg` with {'dotted.key': value} applied, validated again."""
    tree = cfg.to_dict()
    for key, value in overrides.items():
        _set_dotted(tree, key, value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        raise SimganError(format_errors(source, e, model=TrainConfig)) from None


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

"""Typed, validated run configuration.

One resolve order: defaults (the field defaults below) < YAML file < CLI overrides. Every section
forbids unknown keys, so a typo is an error naming the field, never a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    ValidationError,
    model_validator,
)

from simgan_ray.common.errors import SimganError, format_errors
from simgan_ray.common.settings import Section
from simgan_ray.common.yamlfiles import read_yaml
from simgan_ray.model.losses import Psi, Reduction
from simgan_ray.model.networks import DiscriminatorConfig, RefinerConfig
from simgan_ray.storage import S3Options, join, normalize
from simgan_ray.storage.fields import Location


class OptimizerConfig(Section):
    name: Literal["adam", "sgd"] = "adam"
    """`adam` or `sgd`"""
    lr: PositiveFloat = 1e-3
    """learning rate (the warm-up, decay and collapse guard scale it)"""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.5, 0.999)
    """Adam's betas"""
    momentum: NonNegativeFloat = 0.0
    """SGD's momentum"""
    weight_decay: NonNegativeFloat = 0.0
    """L2 weight decay"""


class LossConfig(Section):
    lam: NonNegativeFloat = 0.1
    """lambda, the weight of the self-regularization term lambda * ||psi(R(x)) - psi(x)||_1"""
    psi: Psi = "identity"
    """the feature map of the self-regularization: `identity`, `channel_mean` or `downsample2` (2x2
    average pool)"""
    reduction: Reduction = "sum"
    """how the adversarial loss reduces over the w x h patch map and the self-regularization over
    pixels: `sum` per image, then the mean over the batch (the paper), or `mean` over everything"""
    r1_gamma: NonNegativeFloat = 0.0
    """R1 gradient penalty on D's real inputs, gamma/2 * E||d D(y)/d y||^2 (Mescheder et al. 2018;
    a double backward per D update); 0: off. Why: a D that cannot grow steep around the real images
    gives R gradients that point towards them rather than along D's latest edge"""


class ScheduleConfig(Section):
    """Phases run in order: pretrain R (self-regularization only), pretrain D, then `steps`
    adversarial steps of `k_g` refiner updates followed by `k_d` discriminator updates."""

    pretrain_refiner_steps: int = Field(1000, ge=0)
    """R-only steps (self-regularization)"""
    pretrain_discriminator_steps: int = Field(200, ge=0)
    """D-only steps"""
    steps: int = Field(10000, ge=0)
    """adversarial steps T"""
    k_g: int = Field(2, ge=1)
    """refiner updates per adversarial step"""
    k_d: int = Field(1, ge=1)
    """discriminator updates per adversarial step"""
    warmup_steps: int = Field(0, ge=0)
    """adversarial steps over which both learning rates ramp linearly up to their set values (lr/n,
    2lr/n, ..., lr). Why: Adam's second-moment estimate for R was built on self-regularization
    gradients alone, far smaller than the adversarial gradients that start with this phase, so R's
    first full-lr adversarial updates are many times lr in size and can kill the refiner"""
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    """after the warm-up, both learning rates fall (`linear`, `cosine`) from their set values to
    `lr_final` times them at the last adversarial step (`none`: they stay). Why: late in a run R and
    D chase each other around an equilibrium at full step size; smaller steps let both settle nearer it"""
    lr_final: float = Field(0.1, ge=0, le=1)
    """the fraction of the learning rates that `lr_decay` ends at"""
    ema_half_life: int = Field(0, ge=0)
    """half-life, in adversarial steps, of an exponential moving average of R's weights; the average
    (not the last R) is what is exported, probed and sampled; 0: no average. Why: a GAN's refiner
    oscillates around its equilibrium from report to report, and the last iterate is a random draw
    from that swing; the average sits nearer its centre (Yazici et al., ICLR 2019; StyleGAN's G_ema).
    It ramps in as min(ema_half_life, t/2) over the first t adversarial steps"""

    @property
    def total_steps(self) -> int:
        return self.pretrain_refiner_steps + self.pretrain_discriminator_steps + self.steps


class DataConfig(Section):
    synthetic: Location = "data/digits/synthetic"
    """the labelled synthetic image set: a folder, `s3://` prefix or other fsspec location (docs/storage.md)"""
    real: Location = "data/digits/mnist/real"
    """the unlabelled real image set (`data fetch-mnist` writes MNIST's real pool here)"""
    s3: S3Options = S3Options()
    """how to reach S3 (credentials come from the AWS chain, never from a config)"""
    shuffle_files: bool = True
    """a new shard order on every pass over a set, reproducible from `seed`"""
    local_shuffle_buffer: int = Field(0, ge=0)
    """each worker's shuffle window, in images: every batch is drawn at random from the last N images
    the worker read (seeded per rank; `sets/window.py`); 0: batches in the order read"""
    preserve_order: bool = True
    """Ray Data hands blocks out in a fixed order: the streaming split deals them to the workers by
    count, not to whichever asks first, so a rerun on the same machine with the same worker count
    sees the same images in the same order and reports the same numbers (tested). Off: no block
    waits for an earlier, slower one, and a rerun draws other batches"""
    strict: bool = False
    """a corrupt image or shard fails the run instead of being skipped and counted (skipped.txt)"""


class ProbeConfig(Section):
    """Real-data score during training (`simgan-ray probe` makes one): at every report, rank 0
    refines the first `images` synthetic images and reports probe_fd (Frechet distance of the
    probe classifier's features to its reference real images, kept apart from the test set; lower =
    more real) and probe_label_acc."""

    uri: Location | None = None
    """a probe folder (`simgan-ray probe`): rank 0 reports probe_fd and probe_label_acc at every report"""
    images: int = Field(1000, ge=2)
    """synthetic images the probe scores"""
    export: Literal["last", "best"] = "last"
    """what the export holds: R's weights (or their average) at the last step, or (`best`) at the
    healthy report with the lowest probe_fd, chosen on the probe, never on a test set (refiner.json
    records its step and score). Why: late in a run the refiner can drift away from its best"""


class ConsistencyConfig(Section):
    """Label consistency (beyond the paper: CyCADA's semantic consistency). A small classifier (the
    fixed recipe) trained on the synthetic set's own labels, no real labels, so still S+U; frozen.
    In R's adversarial updates R also pays `weight` x the cross-entropy of the classifier's logits on
    R(x) against its predicted class on x (per image, averaged over the batch): refining must not
    change what the digit reads as. The driver trains it when the run starts (seed: the run's) on
    the first `images` synthetic images less a held-out tenth, and keeps it in <run>/consistency/,
    where a resumed run finds it."""

    weight: NonNegativeFloat = 0.0
    """the weight of the label-consistency cross-entropy in R's adversarial updates; 0: off"""
    images: int = Field(10_000, ge=100)
    """synthetic images the classifier learns from (a tenth held out)"""
    label_key: str = "digit"
    """the label field: class = int(label_json[label_key]) of the synthetic set"""
    num_classes: int = Field(10, ge=2)
    """classes"""
    epochs: int = Field(2, ge=1)
    """the classifier's passes over its images"""


class AugmentConfig(Section):
    """DiffAugment of everything D judges (augment.py); fractions of the image side, 0 = off."""

    translation: float = Field(0.0, ge=0, le=0.5)
    """the largest shift either way"""
    cutout: float = Field(0.0, ge=0, le=1)
    """the side of the blanked square"""


class GuardConfig(Section):
    """Collapse guard (needs probe.uri). A GAN can collapse in a few updates: D wins outright and the
    refiner's output saturates into blobs that carry no label. At a report where the probe's label
    accuracy on refined images is below `min_label_acc`, every rank rolls R, D, both optimizers and
    its history shard back to the last report that passed, the learning rates are multiplied by
    `lr_factor` from then on, and training goes on with fresh batches; after `max_rollbacks` the
    run fails. The collapsed stretch is neither checkpointed nor logged."""

    min_label_acc: float | None = Field(None, ge=0, le=1)
    """roll back when R's probe label accuracy falls below this; null: no guard"""
    lr_factor: float = Field(0.7, gt=0, le=1)
    """both learning rates are multiplied by this at each rollback"""
    max_rollbacks: int = Field(3, ge=0)
    """rollbacks before the run fails"""


class TrackingConfig(Section):
    """Where a run is logged besides its own directory (metrics.jsonl, tensorboard/, samples/ are
    always written): an MLflow tracking server, by rank 0, as Ray's MLflow integration does. Needs
    the mlflow (or mlflow-skinny) package on the workers."""

    mlflow_uri: str | None = None
    """an MLflow tracking server (http://mlflow.internal:5000) or file store (file:///path); null: none"""
    mlflow_experiment: str = "simgan-ray"
    """the MLflow experiment the run is logged in"""


class RunConfig(Section):
    storage: Location = "runs"
    """where runs live (a folder, `s3://` prefix or writable fsspec location): a run is <storage>/<name>"""
    name: str = Field("simgan", pattern=r"^[A-Za-z0-9._-]+$")
    """the run's name"""
    num_workers: int = Field(2, ge=1)
    """Ray Train workers"""
    gpus_per_worker: int = Field(0, ge=0, le=1)
    """GPUs per worker: 1, one each (NCCL; each rank drives one device, so no fraction); 0: CPU (gloo)"""
    precision: Literal["fp32", "bf16"] = "fp32"
    """`bf16`: forward passes autocast to bfloat16, channels_last weights; weights, optimizer state,
    losses and history stay float32 (~2x the digits step on a CPU with AVX512-BF16, benchmarks/RESULTS.md)"""
    cpus_per_worker: PositiveFloat = 1.0
    """CPUs reserved per worker (also its torch threads on a CPU)"""
    report_every: int = Field(10, ge=1)
    """steps between metric reports (each holds the step until Ray Train's controller takes it: up to
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 0.25 s unless set)"""
    checkpoint_every: int = Field(100, ge=1)
    """steps between checkpoints (and always at the last step)"""
    keep_checkpoints: int = Field(3, ge=1)
    """checkpoints kept"""
    max_failures: int = Field(0, ge=0)
    """worker failures survived by restarting from the last checkpoint"""
    portable_export: bool = True
    """the export also holds the refiner as TorchScript, a torch.export program and ONNX, each loadable
    without simgan_ray (seconds at the end of a run); off: refiner.pt and refiner.json only, which is
    what `refine`, `evaluate`, a sweep's validation and the Python API load"""


class TrainConfig(Section):
    seed: int = Field(0, ge=0, lt=2**32)
    """weight init (the same on all ranks); per-rank streams derive from it (32 bits: Ray Data's shuffle takes them)"""
    batch_size: int = Field(64, ge=2)
    """images per worker per update (D sees b real + b refined)"""
    history_size: int = Field(6400, ge=0)
    """refined images kept for D, over all ranks (each keeps 1/N)"""
    refiner: RefinerConfig = RefinerConfig()
    """the refiner R"""
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    """the local patch discriminator D"""
    loss: LossConfig = LossConfig()
    """the losses"""
    optimizer_r: OptimizerConfig = OptimizerConfig()
    """R's optimizer"""
    optimizer_d: OptimizerConfig = OptimizerConfig()
    """D's optimizer"""
    schedule: ScheduleConfig = ScheduleConfig()
    """the phases and learning-rate schedule"""
    data: DataConfig = DataConfig()
    """the two image sets and how they stream"""
    probe: ProbeConfig = ProbeConfig()
    """the real-data score at every report"""
    consistency: ConsistencyConfig = ConsistencyConfig()
    """label consistency"""
    augment: AugmentConfig = AugmentConfig()
    """DiffAugment of what D judges"""
    guard: GuardConfig = GuardConfig()
    """the collapse guard"""
    tracking: TrackingConfig = TrackingConfig()
    """logging beside the run's own record"""
    run: RunConfig = RunConfig()
    """where and how the run runs"""

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

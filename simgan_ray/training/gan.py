"""The SimGAN of the paper as plain PyTorch: R and D with their optimizers and losses, the two
updates (Algorithm 1's refiner and discriminator steps), the schedule as a table of phases whose
records name the update they run, R's weight average and the learning-rate arithmetic. No Ray and
no config parsing: Ray Train's workers (`worker.train_func`) and the benchmarks both run these, the
latter on machines with torch alone.

The schedule; one *step* (`run_step`) runs every update of its phase, each `repeats` times, then
updates R's average:
    pretrain_refiner        R on self-regularization only       x pretrain_refiner_steps
    pretrain_discriminator  D                                   x pretrain_discriminator_steps
    adversarial             K_g R updates, then K_d D updates   x steps
Every update draws fresh mini-batches of `batch_size` per worker.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from simgan_ray.model.augment import DiffAugment
from simgan_ray.model.history import ImageHistory
from simgan_ray.model.losses import (
    REAL,
    REFINED,
    LabelConsistency,
    LocalAdversarialLoss,
    R1Penalty,
    SelfRegularization,
    patch_accuracy,
)
from simgan_ray.model.networks import LocalDiscriminator, Refiner
from simgan_ray.training.ddp import frozen, unwrap

if TYPE_CHECKING:  # config needs pydantic, which nothing here does
    from simgan_ray.training.config import OptimizerConfig, ScheduleConfig, TrainConfig


def make_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass
class Gan:
    """What the updates act on. `refiner`/`discriminator` may be DDP-wrapped."""

    refiner: nn.Module
    discriminator: nn.Module
    opt_r: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    adversarial: LocalAdversarialLoss
    self_reg: SelfRegularization
    history: ImageHistory
    # Autocast dtype of the forward passes (torch.bfloat16), or None for float32. Weights, optimizer
    # state, losses and the history buffer stay float32 either way.
    amp: torch.dtype | None = None
    # A bare copy of R holding the moving average of its weights (schedule.ema_half_life), or None.
    ema: nn.Module | None = None
    # The label-consistency term of R's adversarial updates (config.ConsistencyConfig), or None.
    consistency: LabelConsistency | None = None
    # DiffAugment of every input of D (config.AugmentConfig), or None.
    augment: DiffAugment | None = None
    # The R1 penalty of D's updates (config.LossConfig.r1_gamma), or None.
    r1: R1Penalty | None = None

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, self.amp or torch.bfloat16, enabled=self.amp is not None)

    @property
    def exported(self) -> nn.Module:
        """The refiner that is exported, probed and sampled: R's weight average if kept, else R."""
        return self.ema if self.ema is not None else unwrap(self.refiner)

    def judged(self, images: torch.Tensor) -> torch.Tensor:
        """What D sees of `images`: them, or their augmentation."""
        return images if self.augment is None else self.augment(images)


def make_gan(cfg: TrainConfig, history: ImageHistory, prepare=lambda model: model,
             label_net: nn.Module | None = None) -> Gan:
    """R, D (each passed through `prepare`, e.g. Ray Train's DDP wrapping), their optimizers and
    losses as `cfg` says; `label_net`: the frozen synthetic-label classifier when
    cfg.consistency.weight > 0. Seed torch first: this draws the initial weights."""
    bf16 = cfg.run.precision == "bf16"
    # bf16: channels_last weights too (the layout bf16 convolution kernels want, on CPU and GPU).
    layout = torch.channels_last if bf16 else torch.contiguous_format
    refiner = prepare(Refiner(cfg.refiner).to(memory_format=layout))
    discriminator = prepare(LocalDiscriminator(cfg.discriminator).to(memory_format=layout))
    ema = None
    if cfg.schedule.ema_half_life:
        ema = copy.deepcopy(unwrap(refiner)).eval().requires_grad_(False)
    return Gan(
        refiner=refiner,
        discriminator=discriminator,
        opt_r=make_optimizer(refiner.parameters(), cfg.optimizer_r),
        opt_d=make_optimizer(discriminator.parameters(), cfg.optimizer_d),
        adversarial=LocalAdversarialLoss(cfg.loss.reduction),
        self_reg=SelfRegularization(cfg.loss.lam, cfg.loss.psi, cfg.loss.reduction),
        history=history,
        amp=torch.bfloat16 if bf16 else None,
        ema=ema,
        consistency=LabelConsistency(label_net, cfg.consistency.weight) if cfg.consistency.weight else None,
        augment=DiffAugment(cfg.augment.translation, cfg.augment.cutout)
        if cfg.augment.translation or cfg.augment.cutout else None,
        r1=R1Penalty(cfg.loss.r1_gamma, cfg.loss.reduction) if cfg.loss.r1_gamma else None,
    )


def lr_scale(step: int, s: ScheduleConfig) -> float:
    """Factor on both learning rates at 0-based global `step`: 1 while pretraining; over the first
    `s.warmup_steps` adversarial steps it ramps 1/n, 2/n, ..., 1; then 1, or with `s.lr_decay` a
    linear or cosine fall from 1 to `s.lr_final` at the last adversarial step."""
    adversarial = step - s.pretrain_refiner_steps - s.pretrain_discriminator_steps
    if adversarial < 0:
        return 1.0
    if adversarial < s.warmup_steps:
        return (adversarial + 1) / s.warmup_steps
    if s.lr_decay == "none":
        return 1.0
    progress = (adversarial - s.warmup_steps) / max(1, s.steps - 1 - s.warmup_steps)  # 0 .. 1
    fall = progress if s.lr_decay == "linear" else 0.5 * (1 - math.cos(math.pi * progress))
    return 1.0 - (1.0 - s.lr_final) * fall


def ema_beta(step: int, s: ScheduleConfig) -> float:
    """Weight of the old average in the update after 0-based global `step`: 0 (the average is a copy
    of R) until the adversarial phase, then 0.5 ** (1 / h), h = min(s.ema_half_life, t / 2) with t
    adversarial steps done."""
    t = step + 1 - s.pretrain_refiner_steps - s.pretrain_discriminator_steps
    if s.ema_half_life == 0 or t <= 0:
        return 0.0
    return 0.5 ** (1 / min(s.ema_half_life, t / 2))


@torch.no_grad()
def ema_update(gan: Gan, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * R for weights; buffers (norm statistics) are copied."""
    if gan.ema is None:
        return
    source = unwrap(gan.refiner)
    for avg, p in zip(gan.ema.parameters(), source.parameters(), strict=True):
        avg.lerp_(p, 1.0 - beta)
    for avg, b in zip(gan.ema.buffers(), source.buffers(), strict=True):
        avg.copy_(b)


def set_lrs(gan: Gan, cfg: TrainConfig, scale: float) -> None:
    for opt, opt_cfg in ((gan.opt_r, cfg.optimizer_r), (gan.opt_d, cfg.optimizer_d)):
        for group in opt.param_groups:
            group["lr"] = opt_cfg.lr * scale


def refiner_update(gan: Gan, synthetic: torch.Tensor, with_adversary: bool) -> dict[str, torch.Tensor]:
    """One R step: L_R = l_real(D(R(x))) + lambda*||psi(R(x)) - psi(x)||_1 on (b, C, H, W), plus the
    label-consistency term against the adversary when the run has one."""
    with gan.autocast(synthetic.device):
        refined = gan.refiner(synthetic).float()
        reg = gan.self_reg(refined, synthetic)
        out = {"loss_r_reg": reg.detach()}
        loss = reg
        if with_adversary:
            # Through the bare D: its weights are not trained here, so no DDP gradient sync for it.
            with frozen(unwrap(gan.discriminator)) as disc:
                adv = gan.adversarial(disc(gan.judged(refined)), REAL)
            loss = loss + adv
            out["loss_r_adv"] = adv.detach()
            if gan.consistency is not None:
                label, kept = gan.consistency(refined, synthetic)
                loss = loss + label
                out["loss_r_label"], out["label_kept"] = label.detach(), kept
    gan.opt_r.zero_grad(set_to_none=True)
    loss.backward()
    gan.opt_r.step()
    out["mean_abs_change"] = (refined.detach() - synthetic).abs().mean()
    return out


def discriminator_update(gan: Gan, synthetic: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """One D step on b real + b refined images, the refined half being b/2 refined now and b/2
    drawn from this rank's history buffer (all current while the buffer is empty)."""
    with torch.no_grad(), gan.autocast(synthetic.device):
        refined = unwrap(gan.refiner)(synthetic).float()
    half = len(refined) // 2
    past = gan.history.sample(len(refined) - half).to(refined.device)
    fake = torch.cat([refined[: len(refined) - len(past)], past])
    gan.history.push(refined[:half])
    if gan.r1 is not None:
        real = real.detach().requires_grad_(True)  # the penalty's gradient is taken w.r.t. it
    with gan.autocast(synthetic.device):
        # One forward over [real; fake] so DDP sees a single forward per backward.
        logits = gan.discriminator(gan.judged(torch.cat([real, fake]))).float()
        logits_real, logits_fake = logits[: len(real)], logits[len(real) :]
        loss = gan.adversarial(logits_real, REAL) + gan.adversarial(logits_fake, REFINED)
    out, total = {}, loss
    if gan.r1 is not None:
        # Only the input's gradient here (no parameter's .grad, so no DDP hook fires); the penalty's
        # own parameter gradients come with total.backward() through the graph it keeps.
        penalty = gan.r1(logits_real, real)
        total = loss + penalty
        out["loss_d_r1"] = penalty.detach()
    gan.opt_d.zero_grad(set_to_none=True)
    total.backward()
    gan.opt_d.step()
    return {
        "loss_d": loss.detach(),  # the adversarial loss alone, comparable with and without R1
        "d_acc_real": patch_accuracy(logits_real.detach(), REAL),
        "d_acc_refined": patch_accuracy(logits_fake.detach(), REFINED),
        **out,
    }


Batches = Iterator[torch.Tensor]  # endless (b, C, H, W) batches in [-1, 1]


def pretrain_refiner(gan: Gan, synthetic: Batches, real: Batches) -> dict[str, torch.Tensor]:
    """R on self-regularization alone (the paper's R pre-training)."""
    return refiner_update(gan, next(synthetic), with_adversary=False)


def train_refiner(gan: Gan, synthetic: Batches, real: Batches) -> dict[str, torch.Tensor]:
    """R against D plus self-regularization."""
    return refiner_update(gan, next(synthetic), with_adversary=True)


def train_discriminator(gan: Gan, synthetic: Batches, real: Batches) -> dict[str, torch.Tensor]:
    return discriminator_update(gan, next(synthetic), next(real))


@dataclass(frozen=True)
class Update:
    """One update of a phase: the network it trains (with that network's optimizer, Gan.opt_r or
    Gan.opt_d), the function that runs it, how many images it draws per batch size, and how many
    times a step runs it."""

    network: str  # "refiner" | "discriminator"
    run: Callable[[Gan, Batches, Batches], dict[str, torch.Tensor]]
    reads: tuple[str, ...]  # the streams it draws a batch from per run: R's ("synthetic",), D's both
    repeats: int


@dataclass(frozen=True)
class Phase:
    name: str
    updates: tuple[Update, ...]  # in order
    steps: int
    adversarial: bool = False  # whether R has an adversary (what the collapse guard watches)


SYNTHETIC, BOTH = ("synthetic",), ("synthetic", "real")


def phase_table(s: ScheduleConfig) -> list[Phase]:
    return [
        Phase("pretrain_refiner", (Update("refiner", pretrain_refiner, SYNTHETIC, 1),), s.pretrain_refiner_steps),
        Phase("pretrain_discriminator", (Update("discriminator", train_discriminator, BOTH, 1),),
              s.pretrain_discriminator_steps),
        Phase("adversarial", (Update("refiner", train_refiner, SYNTHETIC, s.k_g),
                              Update("discriminator", train_discriminator, BOTH, s.k_d)), s.steps, adversarial=True),
    ]


def images_per_rank(table: list[Phase], batch_size: int) -> dict[str, int]:
    """{"synthetic": n, "real": n}: the images one rank draws from each stream over the whole table."""
    drawn = {"synthetic": 0, "real": 0}
    for phase in table:
        for update in phase.updates:
            for stream in update.reads:
                drawn[stream] += phase.steps * update.repeats * batch_size
    return drawn


def phase_at(step: int, table: list[Phase]) -> Phase:
    """The phase that 0-based global `step` belongs to."""
    for phase in table:
        if step < phase.steps:
            return phase
        step -= phase.steps
    raise IndexError("step past the end of the schedule")


def run_step(gan: Gan, cfg: TrainConfig, table: list[Phase], step: int, synthetic: Batches, real: Batches,
             lr_factor: float, seed: int, record: Callable[[dict[str, torch.Tensor], int], None]) -> Phase:
    """0-based global `step` of the schedule: every update of its phase, then R's average; -> the
    phase. `record(metrics, images)` gets each update's metrics and the images it drew; `seed`:
    this rank's stream, which DiffAugment's draws derive from with the step."""
    phase = phase_at(step, table)
    # From the config at every step, never from a checkpoint: a resumed run may change them
    # (`--resume --set optimizer_r.lr=...`, or PBT restarting a trial with mutated values).
    set_lrs(gan, cfg, lr_scale(step, cfg.schedule) * lr_factor)
    if gan.augment is not None:  # from the step, never a carried state: exact on resume
        gan.augment.reseed(seed * 1_000_003 + step)
    for update in phase.updates:
        for _ in range(update.repeats):
            record(update.run(gan, synthetic, real), len(update.reads) * cfg.batch_size)
    ema_update(gan, ema_beta(step, cfg.schedule))
    return phase

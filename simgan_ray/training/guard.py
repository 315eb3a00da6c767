"""The collapse guard (cfg.guard): rolls a run back to its last healthy report when the real-data
probe says the refiner has destroyed the labels, and cools the learning rates."""

from __future__ import annotations

import copy

import torch

from simgan_ray.common.errors import SimganError
from simgan_ray.training.config import GuardConfig
from simgan_ray.training.ddp import distributed, unwrap
from simgan_ray.training.gan import Gan, Phase


class CollapseGuard:
    """cfg.guard: rolls the GAN back to its last healthy report when the probe (rank 0) says the
    refiner has destroyed the labels. Every rank keeps the same in-memory snapshot of R, D and both
    optimizers, and its own history shard, taken at each report that passed."""

    def __init__(self, cfg: GuardConfig, loud: bool = True) -> None:
        self.cfg = cfg
        self.loud = loud  # print what it does (rank 0 only, not once per rank)
        self.rollbacks = 0  # so far in this run, restored on resume: they scale the learning rates
        self.saved: tuple[int, int, dict] | None = None  # (step, metric reports kept, states)

    @property
    def enabled(self) -> bool:
        return self.cfg.min_label_acc is not None

    @property
    def lr_factor(self) -> float:
        return self.cfg.lr_factor**self.rollbacks

    def snapshot(self, gan: Gan, step: int, reports: int) -> None:
        if not self.enabled:
            return
        states = {name: copy.deepcopy(obj.state_dict()) for name, obj in self._parts(gan)}
        self.saved = (step, reports, states)

    def collapsed(self, metrics: dict, phase: Phase, device: torch.device) -> bool:
        """Rank 0's verdict (only it runs the probe), the same on every rank."""
        if not self.enabled or not phase.adversarial:
            return False
        _, acc = self._watched(metrics)
        flag = torch.tensor([float(acc is not None and acc < self.cfg.min_label_acc)], device=device)
        if distributed():
            torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def rollback(self, gan: Gan, step: int, metrics: dict) -> tuple[int, int]:
        """Restore the snapshot; -> (its step, metric reports to keep). Raises past max_rollbacks."""
        key, acc = self._watched(metrics)
        acc = float("nan") if acc is None else acc
        if self.rollbacks >= self.cfg.max_rollbacks or self.saved is None:
            raise SimganError(
                f"step {step}: the refiner collapsed ({key} {acc:.3f} < guard.min_label_acc "
                f"{self.cfg.min_label_acc}) after {self.rollbacks} rollback(s), guard.max_rollbacks is "
                f"{self.cfg.max_rollbacks}: lower the learning rates or raise schedule.warmup_steps")
        saved_step, reports, states = self.saved
        for name, obj in self._parts(gan):
            obj.load_state_dict(copy.deepcopy(states[name]))
        self.rollbacks += 1
        if self.loud:
            print(f"step {step}: refiner collapsed ({key} {acc:.3f} < {self.cfg.min_label_acc}); "
                  f"rolled back to step {saved_step}, learning rates x{self.lr_factor:.3g} (rollback "
                  f"{self.rollbacks} of at most {self.cfg.max_rollbacks})")
        return saved_step, reports

    @staticmethod
    def _watched(metrics: dict) -> tuple[str, float | None]:
        """(key, value) of the label accuracy the guard watches: R's own when the run keeps a weight
        average (the average lags a collapse), else the exported refiner's. None off rank 0."""
        key = "probe_r_label_acc" if "probe_r_label_acc" in metrics else "probe_label_acc"
        return key, metrics.get(key)

    @staticmethod
    def _parts(gan: Gan):
        parts = [("refiner", unwrap(gan.refiner)), ("discriminator", unwrap(gan.discriminator)),
                 ("opt_r", gan.opt_r), ("opt_d", gan.opt_d), ("history", gan.history)]
        return parts + ([("ema", gan.ema)] if gan.ema is not None else [])

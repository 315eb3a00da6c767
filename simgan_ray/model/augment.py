"""Differentiable augmentation of D's inputs (DiffAugment, Zhao et al., NeurIPS 2020), pure torch.

D sees every image it judges, real or refined, through the same random translation and cutout,
in its own updates and in R's adversarial term alike, so D cannot memorise the few real images it
has seen and R still gets gradients through the augmentation. Both operations move or blank whole
pixels, so each of D's patch logits still depends only on one window of D's receptive field (a
shifted one): the patch loss stays local (tests/model/test_augment.py checks it).

Draws come from the augmenter's own generator, reseeded from (seed, step) before every step, so a
resumed run augments exactly as an uninterrupted one would.
"""

from __future__ import annotations

import torch


class DiffAugment:
    """(N, C, H, W) -> (N, C, H, W), differentiable in the input.

    translation: each image shifted by a whole number of pixels, up to `translation` x its height
    (rows) and width (columns) either way; edge pixels fill what the shift uncovers.
    cutout: a square of side `cutout` x the image side, at a random centre per image, set to 0 (the
    middle of [-1, 1]). 0 turns an operation off."""

    def __init__(self, translation: float, cutout: float) -> None:
        self.translation = translation
        self.cutout = cutout
        self.generator = torch.Generator()

    def reseed(self, seed: int) -> None:
        """Any integer: the worker derives it from the run's seed (< 2**32), the rank and the step,
        past the 64 bits a torch generator takes."""
        self.generator.manual_seed(seed % 2**63)

    def _draw(self, low: int, high: int, n: int, device: torch.device) -> torch.Tensor:
        """n integers in [low, high], (n, 1, 1), on `device`."""
        return torch.randint(low, high + 1, (n, 1, 1), generator=self.generator).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.translation:
            x = self._translate(x)
        if self.cutout:
            x = self._cutout(x)
        return x

    def _translate(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        sh, sw = int(h * self.translation + 0.5), int(w * self.translation + 0.5)
        rows = (torch.arange(h, device=x.device).view(1, h, 1) + self._draw(-sh, sh, n, x.device)).clamp(0, h - 1)
        cols = (torch.arange(w, device=x.device).view(1, 1, w) + self._draw(-sw, sw, n, x.device)).clamp(0, w - 1)
        index = (rows * w + cols).view(n, 1, h * w).expand(n, c, h * w)  # (N, C, H*W) source pixel
        return x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ch, cw = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
        top = self._draw(0, h, n, x.device) - ch // 2
        left = self._draw(0, w, n, x.device) - cw // 2
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        hole = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # (N, H, W)
        return x * (~hole).unsqueeze(1).to(x.dtype)

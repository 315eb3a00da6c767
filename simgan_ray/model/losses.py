"""SimGAN losses as small callables (pure torch).

Reduction semantics, the same for both losses and explicit in the config:
- "sum":  summed over every patch / pixel of an image, averaged over the batch
          (the paper sums over patches; averaging over the batch keeps lrs batch-size free).
- "mean": averaged over patches / pixels and the batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Reduction = Literal["sum", "mean"]
Psi = Literal["identity", "channel_mean", "downsample2"]

REAL, REFINED = 1, 0


def _reduce(per_element: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """per_element: (N, ...) -> scalar."""
    if reduction == "mean":
        return per_element.mean()
    return per_element.flatten(1).sum(1).mean()


class LocalAdversarialLoss:
    """Cross-entropy of a D patch map against one target class for all patches.

    logits: (N, L, h, w) with L=1 (sigmoid/BCE) or L=2 (softmax; index 1 = real).
    `target` is REAL or REFINED. For D: loss(D(y), REAL) + loss(D(R(x)), REFINED);
    for R: loss(D(R(x)), REAL).
    """

    def __init__(self, reduction: Reduction = "sum") -> None:
        self.reduction = reduction

    def __call__(self, logits: torch.Tensor, target: int) -> torch.Tensor:
        if logits.shape[1] == 1:
            labels = torch.full_like(logits, float(target))
            per_patch = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        else:
            labels = torch.full(
                (logits.shape[0], *logits.shape[2:]), target, dtype=torch.long, device=logits.device
            )
            per_patch = F.cross_entropy(logits, labels, reduction="none")
        return _reduce(per_patch, self.reduction)


def prob_real(logits: torch.Tensor) -> torch.Tensor:
    """(N, L, h, w) -> (N, h, w) probability that each patch is real."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, REAL]


def patch_accuracy(logits: torch.Tensor, target: int) -> torch.Tensor:
    """Fraction of patches classified as `target`."""
    predicted_real = prob_real(logits) > 0.5
    return (predicted_real == bool(target)).float().mean()


def psi(x: torch.Tensor, kind: Psi) -> torch.Tensor:
    """Feature transform of the self-regularization term. (N, C, H, W) -> features."""
    if kind == "identity":
        return x
    if kind == "channel_mean":
        return x.mean(dim=1, keepdim=True)
    # Fixed 2x2 average pooling: compares low frequencies only, leaving R free to change texture.
    return F.avg_pool2d(x, 2, ceil_mode=True)


class R1Penalty:
    """gamma/2 * E_batch || d score(y) / d y ||^2 on real images y (Mescheder et al. 2018, "R1"):
    D pays for a slope at the real data, so it cannot sharpen without bound around it. score is D's
    log-odds of "real" reduced over the patch map as the adversarial loss reduces it (summed per image,
    or averaged), so gamma means the same for either reduction relative to that loss."""

    def __init__(self, gamma: float, reduction: Reduction = "sum") -> None:
        self.gamma = gamma
        self.reduction = reduction

    def __call__(self, logits_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """logits_real: (N, L, h, w) of D on `real` (N, C, H, W), which must require grad."""
        log_odds = logits_real[:, 0] if logits_real.shape[1] == 1 else logits_real[:, REAL] - logits_real[:, REFINED]
        per_image = log_odds.flatten(1)
        score = per_image.sum(1) if self.reduction == "sum" else per_image.mean(1)
        (grad,) = torch.autograd.grad(score.sum(), real, create_graph=True)
        return 0.5 * self.gamma * grad.square().flatten(1).sum(1).mean()


class SelfRegularization:
    """lambda * || psi(R(x)) - psi(x) ||_1."""

    def __init__(self, lam: float, kind: Psi = "identity", reduction: Reduction = "sum") -> None:
        self.lam = lam
        self.kind = kind
        self.reduction = reduction

    def __call__(self, refined: torch.Tensor, synthetic: torch.Tensor) -> torch.Tensor:
        diff = (psi(refined, self.kind) - psi(synthetic, self.kind)).abs()
        return self.lam * _reduce(diff, self.reduction)


class LabelConsistency:
    """weight * cross-entropy of a frozen classifier's logits on R(x) against its predicted class on
    x, per image, averaged over the batch (config.ConsistencyConfig says why)."""

    def __init__(self, net: nn.Module, weight: float) -> None:
        self.net = net.eval().requires_grad_(False)
        self.weight = weight

    def __call__(self, refined: torch.Tensor, synthetic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) each -> (loss, fraction of images whose predicted class R kept)."""
        with torch.no_grad():
            target = self.net(synthetic).argmax(1)
        logits = self.net(refined).float()
        kept = (logits.detach().argmax(1) == target).float().mean()
        return self.weight * F.cross_entropy(logits, target), kept

import math

import pytest
import torch

from simgan_ray.measures.classifier import TaskNet
from simgan_ray.model.losses import (
    REAL,
    REFINED,
    LabelConsistency,
    LocalAdversarialLoss,
    R1Penalty,
    SelfRegularization,
    patch_accuracy,
    psi,
)

LOG2 = math.log(2.0)


def test_adversarial_loss_sums_over_patches():
    logits = torch.zeros(4, 1, 3, 5)  # p(real) = 0.5 everywhere: log 2 per patch
    assert LocalAdversarialLoss("sum")(logits, REAL).item() == pytest.approx(15 * LOG2)
    assert LocalAdversarialLoss("mean")(logits, REAL).item() == pytest.approx(LOG2)


def test_adversarial_loss_targets_and_two_logit_form():
    big = 20.0
    confident_real = torch.full((2, 1, 2, 2), big)
    assert LocalAdversarialLoss("sum")(confident_real, REAL).item() < 1e-6
    assert LocalAdversarialLoss("sum")(confident_real, REFINED).item() == pytest.approx(4 * big, rel=1e-4)
    # Two logits [refined, real]: same loss as one logit equal to their difference.
    two = torch.stack([torch.zeros(2, 2, 2), torch.full((2, 2, 2), 1.3)], dim=1)
    one = torch.full((2, 1, 2, 2), 1.3)
    for target in (REAL, REFINED):
        assert LocalAdversarialLoss("sum")(two, target).item() == pytest.approx(
            LocalAdversarialLoss("sum")(one, target).item(), rel=1e-6
        )


def test_adversarial_loss_mixed_patches_by_hand():
    logits = torch.tensor([[[[0.0, math.log(3.0)]]]])  # p(real) = 1/2 and 3/4
    expected = -math.log(0.5) - math.log(0.75)
    assert LocalAdversarialLoss("sum")(logits, REAL).item() == pytest.approx(expected)
    assert patch_accuracy(logits, REAL).item() == pytest.approx(0.5)  # 0.5 is not > 0.5


def test_self_regularization_by_hand():
    x = torch.zeros(2, 1, 2, 2)
    r = torch.zeros(2, 1, 2, 2)
    r[0, 0, 0, 0] = 0.5  # |diff| sums: image 0 -> 0.5, image 1 -> 0
    assert SelfRegularization(2.0, "identity", "sum")(r, x).item() == pytest.approx(2.0 * 0.5 / 2)
    assert SelfRegularization(2.0, "identity", "mean")(r, x).item() == pytest.approx(2.0 * 0.5 / 8)
    assert SelfRegularization(0.0)(r, x).item() == 0.0


def test_psi_variants():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(psi(x, "identity"), x)
    assert psi(x, "channel_mean").shape == (2, 1, 4, 4)
    assert torch.allclose(psi(x, "channel_mean")[:, 0], x.mean(1))
    down = psi(x, "downsample2")
    assert down.shape == (2, 3, 2, 2)
    assert down[0, 0, 0, 0].item() == pytest.approx(float((0 + 1 + 4 + 5) / 4))
    # A change that keeps 2x2 means costs nothing under downsampling, something under identity.
    y = x.clone()
    y[:, :, 0, 0] += 1
    y[:, :, 0, 1] -= 1
    assert SelfRegularization(1.0, "downsample2")(y, x).item() == pytest.approx(0.0)
    assert SelfRegularization(1.0, "identity")(y, x).item() > 0


def test_label_consistency_pays_for_a_changed_prediction_and_trains_only_the_refined_input():
    torch.manual_seed(0)
    net = TaskNet(1, 10)
    term = LabelConsistency(net, weight=2.0)
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    refined = x.clone().requires_grad_(True)
    loss, kept = term(refined, x)
    assert kept.item() == 1.0  # R(x) = x keeps every prediction
    target = net(x).argmax(1)
    assert loss.item() == pytest.approx(2.0 * torch.nn.functional.cross_entropy(net(x), target).item(), rel=1e-5)
    loss.backward()
    assert refined.grad is not None and refined.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())  # frozen
    other = torch.rand(16, 1, 28, 28) * 8 - 4
    _, kept = term(other, x)
    assert kept.item() == (net(other).argmax(1) == target).float().mean().item()


def test_r1_penalty_by_hand_for_a_linear_discriminator():
    """D's log-odds linear in the image, w . y per patch: the gradient of the per-image score is the
    sum of w over patches ("sum") or their mean ("mean"); the two-logit form uses real - refined."""
    y = torch.randn(3, 1, 4, 4, requires_grad=True)
    w = torch.randn(2, 1, 4, 4)  # two patches, each weighting the whole image
    logits = torch.einsum("pchw,nchw->np", w, y).reshape(3, 1, 1, 2)
    gamma = 0.3
    for reduction, slope in (("sum", w.sum(0)), ("mean", w.mean(0))):
        expected = 0.5 * gamma * slope.square().sum().item()
        assert R1Penalty(gamma, reduction)(logits, y).item() == pytest.approx(expected, rel=1e-5)
    two = torch.cat([torch.zeros_like(logits), logits], dim=1)  # [refined, real]
    assert R1Penalty(gamma, "sum")(two, y).item() == pytest.approx(R1Penalty(gamma, "sum")(logits, y).item(), rel=1e-6)
    # Differentiable w.r.t. D's parameters (create_graph): here through w.
    w.requires_grad_(True)
    logits = torch.einsum("pchw,nchw->np", w, y).reshape(3, 1, 1, 2)
    R1Penalty(gamma, "sum")(logits, y).backward()
    assert w.grad is not None and torch.allclose(w.grad, gamma * w.sum(0, keepdim=True).expand_as(w).detach())

"""DiffAugment of D's inputs: what it does to images, that D's patch loss stays local through it,
and that the same seed draws the same augmentation."""

import pytest
import torch

from simgan_ray.model.augment import DiffAugment
from simgan_ray.model.networks import DiscriminatorConfig, LocalDiscriminator


def test_translation_shifts_whole_images_by_at_most_its_fraction():
    aug = DiffAugment(translation=0.125, cutout=0)  # 28 px: shifts of up to 4 px
    aug.reseed(0)
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    out = aug(x)
    ys, xs = (out[:, 0] == 1).nonzero()[:, 1:].T
    assert ((ys - 14).abs() <= 4).all() and ((xs - 14).abs() <= 4).all()
    assert len(set(zip(ys.tolist(), xs.tolist(), strict=True))) > 20  # per image, not one shift for the batch
    assert torch.equal(out.sum((1, 2, 3)), torch.ones(64))  # moved, not blurred or lost
    # The uncovered border repeats the edge pixels.
    ramp = torch.arange(28.0).view(1, 1, 1, 28).expand(8, 1, 28, 28)
    shifted = aug(ramp)
    assert shifted.min() == 0 and shifted.max() == 27
    assert ((shifted[..., 1:] - shifted[..., :-1]) >= 0).all()


def test_cutout_blanks_one_square_per_image():
    aug = DiffAugment(translation=0, cutout=0.25)  # 7 x 7 px on 28 x 28
    aug.reseed(1)
    out = aug(torch.ones(32, 3, 28, 28))
    holes = (out == 0).all(1)  # every channel blanked together
    assert ((out == 0).any(1) == holes).all()
    sizes = holes.flatten(1).sum(1)
    assert (sizes <= 49).all() and (sizes > 0).any() and (sizes == 49).any()


def test_same_seed_same_draws_and_gradients_flow():
    aug = DiffAugment(translation=0.125, cutout=0.25)
    x = torch.randn(8, 1, 28, 28, requires_grad=True)
    aug.reseed(7)
    a = aug(x)
    aug.reseed(7)
    b = aug(x)
    assert torch.equal(a, b)
    aug.reseed(8)
    assert not torch.equal(aug(x), a)
    aug.reseed((2**32 - 1) * 100_003 * 1_000_003 + 6150)  # the worker's value for the largest run seed
    aug(x)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("translation,cutout", [(0, 0), (0.125, 0), (0.125, 0.25)])
def test_each_patch_logit_still_sees_one_window_of_the_input(translation, cutout):
    """The patch loss stays local: the input pixels one patch logit depends on lie within one
    receptive-field-sized window, with or without augmentation."""
    torch.manual_seed(0)
    d = LocalDiscriminator(DiscriminatorConfig(widths=(8, 8, 8, 8)))
    aug = DiffAugment(translation, cutout)
    window = 0
    for seed in range(8):
        aug.reseed(seed)
        x = torch.randn(1, 1, 28, 28, requires_grad=True)
        logits = d(aug(x) if translation or cutout else x)
        logits[0, 0, 2, 2].backward()
        rows, cols = (x.grad[0, 0] != 0).nonzero().T
        if len(rows):
            window = max(window, int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
    # D: conv3/s2, conv3/s2, maxpool3, conv3, 1x1s: 3 + 2*2 + 2*4 + 2*4 = 23 px at most.
    assert 0 < window <= 23

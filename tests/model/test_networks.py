import pytest
import torch
from torch import nn

from simgan_ray.model.networks import DiscriminatorConfig, LocalDiscriminator, Refiner, RefinerConfig


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 35, 55), (3, 17, 40), (3, 224, 224)])
def test_refiner_keeps_shape_and_range(shape):
    r = Refiner(RefinerConfig(channels=shape[0], features=8, blocks=2))
    x = torch.rand(2, *shape) * 2 - 1
    y = r(x)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1


def test_refiner_paper_defaults_and_no_striding_or_pooling():
    cfg = RefinerConfig()
    assert (cfg.features, cfg.blocks, cfg.kernel) == (64, 4, 3)
    r = Refiner(cfg)
    convs = [m for m in r.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 4 + 1  # stem, two per ResNet block, 1x1 head
    assert all(m.stride == (1, 1) for m in convs)
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 1
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in r.modules())


@pytest.mark.parametrize(("dilation", "expected"), [(1, 1 + 2 * 5), (2, 1 + 2 + 2 * 2 * 4)])
def test_refiner_receptive_field_is_local(dilation, expected):
    """Changing one input pixel changes exactly the outputs within the receptive field: five 3x3
    convs (the stem's and four in two blocks), the blocks' taps `dilation` pixels apart."""
    torch.manual_seed(0)
    r = Refiner(RefinerConfig(features=8, blocks=2, dilation=dilation)).double()
    rf = r.receptive_field
    assert rf == expected
    x = torch.rand(1, 1, 40, 40, dtype=torch.float64) * 2 - 1
    x2 = x.clone()
    x2[0, 0, 20, 20] += 0.5
    changed = (r(x2) - r(x)).abs()[0, 0] > 0
    rows, cols = changed.nonzero(as_tuple=True)
    half = rf // 2
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20 - half, 20 + half, 20 - half, 20 + half)
    assert changed[20, 20]


@pytest.mark.parametrize(("norm", "layer"), [("none", None), ("batch", torch.nn.BatchNorm2d),
                                             ("instance", torch.nn.InstanceNorm2d)])
def test_norm_options_build_that_norm_and_run(norm, layer):
    x = torch.rand(4, 1, 28, 28)
    r = Refiner(RefinerConfig(features=4, blocks=1, norm=norm))
    d = LocalDiscriminator(DiscriminatorConfig(widths=(4, 4, 4, 4), norm=norm))
    assert r(x).shape == x.shape and d(x).shape == (4, 1, 5, 5)
    norms = {type(m) for net in (r, d) for m in net.modules()
             if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d))}
    assert norms == ({layer} if layer else set())  # the norm asked for, in both nets, and no other
    if layer is torch.nn.BatchNorm2d:  # it acts: normalised per channel over the batch in training mode
        r.train()
        bn = next(m for m in r.modules() if isinstance(m, torch.nn.BatchNorm2d))
        before = bn.running_mean.clone()
        r(x)
        assert not torch.equal(bn.running_mean, before)


@pytest.mark.parametrize(("hw", "logits"), [((28, 28), 1), ((35, 55), 2), ((64, 96), 1)])
def test_discriminator_outputs_patch_map(hw, logits):
    d = LocalDiscriminator(DiscriminatorConfig(logits=logits))
    out = d(torch.rand(3, 1, *hw))
    assert out.shape == (3, logits, *d.output_shape(*hw))
    assert out.shape[2] > 1 and out.shape[3] > 1  # a map of local patches, not one global score


def test_discriminator_patches_are_local():
    """The bottom-right patch logit depends only on a bottom-right window of the input
    (receptive field of conv3/s2, conv3/s2, maxpool3, conv3 = 23 px)."""
    torch.manual_seed(0)
    d = LocalDiscriminator(DiscriminatorConfig(widths=(16, 16, 16, 16))).double()
    x = (torch.rand(1, 1, 64, 64, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    d(x)[0, 0, -1, -1].backward()
    rows, cols = (x.grad[0, 0] != 0).nonzero(as_tuple=True)
    assert len(rows) > 0
    assert rows.min() >= 64 - 23 and cols.min() >= 64 - 23


def test_multi_scale_discriminator_judges_wider_windows_with_its_own_weights():
    """scales=2: the full-resolution map (5x5 on 28x28) and a map of the 2x-pooled image (2x2),
    side by side as one row; a coarse patch sees a window twice as wide (pooling halves the image,
    so the 23-px receptive field covers ~46 px) and both nets learn from one loss."""
    torch.manual_seed(0)
    single = LocalDiscriminator(DiscriminatorConfig(widths=(8, 8, 8, 8)))
    d = LocalDiscriminator(DiscriminatorConfig(widths=(8, 8, 8, 8), scales=2)).double()
    assert d.output_shape(28, 28) == (1, 25 + 4) and d.output_shape(35, 55) == (1, 7 * 12 + 3 * 5)
    x = (torch.rand(2, 1, 64, 64, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    out = d(x)
    assert out.shape == (2, 1, *d.output_shape(64, 64))
    fine = single.output_shape(64, 64)[0] ** 2
    out[0, 0, 0, fine].backward()  # the first coarse patch (top left)
    rows, cols = (x.grad[0, 0] != 0).nonzero(as_tuple=True)
    assert rows.max() >= 23 and cols.max() >= 23 and rows.min() == 0  # wider than any fine patch, top left
    assert x.grad[1].abs().sum() == 0  # still one image's patch
    # The coarse patch's logit is the coarse net's alone.
    assert all(p.grad.abs().sum() == 0 for p in d.net.parameters())
    assert all(p.grad.abs().sum() > 0 for p in d.coarser.parameters() if p.dim() > 1)
    # One scale keeps the single net's parameter names: runs and checkpoints from before the option load.
    assert set(single.state_dict()) == {k for k in d.state_dict() if k.startswith("net.")}
    with pytest.raises(ValueError, match=r"at scale 3 \(4x pooled; discriminator.scales\)"):
        LocalDiscriminator(DiscriminatorConfig(scales=3)).output_shape(28, 28)
    with pytest.raises(ValueError, match="scales"):
        DiscriminatorConfig(scales=0)


def test_discriminator_rejects_tiny_images():
    with pytest.raises(ValueError, match="too small"):
        LocalDiscriminator(DiscriminatorConfig()).output_shape(4, 4)


def test_config_validation():
    with pytest.raises(ValueError, match="kernel"):
        RefinerConfig(kernel=4)
    with pytest.raises(ValueError):
        DiscriminatorConfig(widths=(0, 1, 1, 1))


def test_spectral_norm_bounds_every_discriminator_conv():
    torch.manual_seed(0)
    d = LocalDiscriminator(DiscriminatorConfig(widths=(8, 8, 8, 8), spectral_norm=True))
    for _ in range(30):  # power iterations run in training-mode forwards
        out = d(torch.rand(4, 1, 28, 28))
    assert out.shape == (4, 1, 5, 5)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)
    plain = LocalDiscriminator(DiscriminatorConfig(widths=(8, 8, 8, 8)))
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in plain.modules())

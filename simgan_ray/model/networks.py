"""SimGAN networks, pure PyTorch (no Ray, no training code).

Images are float tensors of shape (N, C, H, W) with values in [-1, 1]; the refiner's
output is in the same range (tanh). Both configs are plain dataclasses so that an export
can carry them as JSON and rebuild the network without any of the training stack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

Norm = Literal["none", "batch", "instance"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


@dataclass(frozen=True)
class RefinerConfig:
    """Refiner R: conv(k, C->F) + `blocks` ResNet blocks (two conv(k, F->F)) + conv1x1(F->C).

    Paper defaults for the eye-gaze refiner (55x35 grayscale): F=64, 4 blocks, 3x3 kernels.
    `dilation` spaces the blocks' kernel taps that many pixels apart: more reach (receptive field)
    for the same weights and compute (1: the paper's dense kernels).
    """

    channels: int = 1
    """image channels C"""
    features: int = 64
    """F, the width of every block"""
    blocks: int = 4
    """ResNet blocks N"""
    kernel: int = 3
    """odd size of the k x k convs"""
    norm: Norm = "none"
    """`none`, `batch` or `instance` normalisation in the blocks"""
    dilation: int = 1
    """spacing of the blocks' kernel taps: receptive field 1 + (k - 1)(1 + 2 blocks dilation) px for
    the same weights and compute"""

    # Read by pydantic when the dataclass is embedded in the validated run config (field docstrings:
    # their descriptions in the config reference).
    __pydantic_config__ = {"extra": "forbid", "use_attribute_docstrings": True}

    def __post_init__(self) -> None:
        # Messages start with "<field>: " so a config loader can name the field in full. The upper
        # bounds are far beyond any refiner worth training; past them, building one asks for
        # terabytes (an export claiming a million blocks, say) before any other check can speak.
        for name, low, high in (("channels", 1, 64), ("features", 1, 4096), ("blocks", 0, 512), ("dilation", 1, 16)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name}: must be in [{low}, {high}], got {getattr(self, name)}")
        if not 1 <= self.kernel <= 31 or self.kernel % 2 == 0:
            raise ValueError(f"kernel: must be odd and in [1, 31] so 'same' padding keeps H x W, got {self.kernel}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Local patch discriminator D (paper, Sec. 3.2 / appendix):

    conv3x3/s2/`widths[0]` - conv3x3/s2/`widths[1]` - maxpool3x3/s1 - conv3x3/`widths[2]`
    - conv1x1/`widths[3]` - conv1x1/`logits`. Paper widths: 96, 64, 32, 32; 2 logits.
    With `logits=1` each patch has one real-vs-refined logit (BCE); with 2, a softmax.
    `spectral_norm` divides every conv's weight by its largest singular value (Miyato et al., 2018),
    bounding D's Lipschitz constant so its gradients to R stay informative when D gets ahead.
    `scales` > 1 adds that many - 1 more such nets (own weights), each judging the image 2x, 4x, ...
    average-pooled: the same patch grid over ever larger windows (pix2pixHD's multi-scale D), so
    R is also judged on the shapes a 23-px patch cannot see whole. 1: the paper's single local D.
    """

    channels: int = 1
    """image channels: must equal refiner.channels"""
    widths: tuple[int, int, int, int] = (96, 64, 32, 32)
    """the four hidden widths"""
    kernel: int = 3
    """odd kernel of the first convs"""
    logits: Literal[1, 2] = 1
    """1 (sigmoid) or 2 (softmax) logits per patch"""
    norm: Norm = "none"
    """as for the refiner"""
    spectral_norm: bool = False
    """divide every conv's weight by its largest singular value (Miyato et al., 2018)"""
    scales: int = 1
    """multi-scale local D: this - 1 more nets of the same shape (own weights) judging the image 2x,
    4x, ... average-pooled, each patch of each scale counted once in the losses"""

    __pydantic_config__ = {"extra": "forbid", "use_attribute_docstrings": True}

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels: must be >= 1, got {self.channels}")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"widths: must all be >= 1, got {list(self.widths)}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel: must be odd and >= 1, got {self.kernel}")
        if not 1 <= self.scales <= 6:
            raise ValueError(f"scales: must be in [1, 6], got {self.scales}")
        object.__setattr__(self, "widths", tuple(self.widths))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


class ResnetBlock(nn.Module):
    """x + conv(relu(norm(conv(x)))), followed by ReLU; H x W preserved (stride 1, same padding)."""

    def __init__(self, features: int, kernel: int, norm: Norm, dilation: int = 1) -> None:
        super().__init__()
        pad = dilation * (kernel // 2)
        self.body = nn.Sequential(
            nn.Conv2d(features, features, kernel, padding=pad, dilation=dilation),
            _norm(norm, features),
            nn.ReLU(inplace=True),
            nn.Conv2d(features, features, kernel, padding=pad, dilation=dilation),
            _norm(norm, features),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class Refiner(nn.Module):
    """Fully convolutional refiner: no striding or pooling, so any H x W works and every output
    pixel depends only on a (1 + 2 * (k // 2) * (1 + 2 * blocks * dilation))-pixel neighbourhood of
    the input.
    (N, C, H, W) in [-1, 1] -> (N, C, H, W) in [-1, 1]."""

    def __init__(self, cfg: RefinerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        pad = cfg.kernel // 2
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.channels, cfg.features, cfg.kernel, padding=pad),
            _norm(cfg.norm, cfg.features),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(
            *[ResnetBlock(cfg.features, cfg.kernel, cfg.norm, cfg.dilation) for _ in range(cfg.blocks)]
        )
        self.head = nn.Conv2d(cfg.features, cfg.channels, 1)

    @property
    def receptive_field(self) -> int:
        """Side, in pixels, of the input window that one output pixel sees."""
        return 1 + (self.cfg.kernel - 1) * (1 + 2 * self.cfg.blocks * self.cfg.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.blocks(self.stem(x))))


def _patch_net(cfg: DiscriminatorConfig) -> nn.Sequential:
    """The paper's local D at one scale: (N, C, H, W) -> (N, logits, h, w)."""
    w1, w2, w3, w4 = cfg.widths
    k, pad = cfg.kernel, cfg.kernel // 2

    def conv(*args, **kwargs) -> nn.Module:
        layer = nn.Conv2d(*args, **kwargs)
        return nn.utils.parametrizations.spectral_norm(layer) if cfg.spectral_norm else layer

    return nn.Sequential(
        conv(cfg.channels, w1, k, stride=2, padding=pad),
        _norm(cfg.norm, w1),
        nn.ReLU(inplace=True),
        conv(w1, w2, k, stride=2, padding=pad),
        _norm(cfg.norm, w2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=1),
        conv(w2, w3, k, padding=pad),
        _norm(cfg.norm, w3),
        nn.ReLU(inplace=True),
        conv(w3, w4, 1),
        _norm(cfg.norm, w4),
        nn.ReLU(inplace=True),
        conv(w4, cfg.logits, 1),
    )


class LocalDiscriminator(nn.Module):
    """(N, C, H, W) -> (N, logits, h, w): one real-vs-refined prediction per local patch.

    With `scales` > 1 the patch maps of every scale are laid side by side as one row,
    (N, logits, 1, sum of h * w over scales), so every loss and accuracy counts each patch of
    each scale once, as it counts each patch of the single map."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = _patch_net(cfg)  # full resolution; the name keeps single-scale checkpoints loadable
        self.coarser = nn.ModuleList(_patch_net(cfg) for _ in range(cfg.scales - 1))

    def _scale_shape(self, height: int, width: int) -> tuple[int, int]:
        def conv_s2(n: int) -> int:
            return (n + 2 * (self.cfg.kernel // 2) - self.cfg.kernel) // 2 + 1

        return conv_s2(conv_s2(height)) - 2, conv_s2(conv_s2(width)) - 2

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the patch map for an H x W input; raises if the input is too small."""
        shapes = []
        for scale in range(self.cfg.scales):
            side = 2**scale
            h, w = self._scale_shape(-(-height // side), -(-width // side))  # ceil: pooling keeps the edges
            if h < 1 or w < 1:
                which = f" at scale {scale + 1} ({side}x pooled; discriminator.scales)" if scale else ""
                raise ValueError(f"images of {height}x{width} are too small for the local discriminator{which}")
            shapes.append((h, w))
        return shapes[0] if len(shapes) == 1 else (1, sum(h * w for h, w in shapes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.coarser:
            return self.net(x)
        maps = [self.net(x)] + [
            net(nn.functional.avg_pool2d(x, 2**scale, ceil_mode=True)) for scale, net in enumerate(self.coarser, 1)
        ]
        return torch.cat([m.flatten(2) for m in maps], 2).unsqueeze(2)

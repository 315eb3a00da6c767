"""The probe: a real-data yardstick cheap enough to use at every training report and to rank sweeps
by. A classifier (the fixed recipe) trained on real labelled images, and the mean / covariance of
its features on reference real images kept apart from the test set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field

from simgan_ray.common.errors import SimganError
from simgan_ray.measures.classifier import (
    Recipe,
    TaskNet,
    frechet_from_stats,
    predict,
    read_net,
    train_held_out,
    write_net,
)
from simgan_ray.sets import shards
from simgan_ray.sets.data import load_set
from simgan_ray.storage import S3Options, ownership

# 2: reference statistics from real images apart from the test set (1 took them from the test set).
PROBE_FORMAT = "simgan-ray-probe/2"


class ProbeSpec(Recipe):
    """`probe`: the labelled real set its classifier learns from, the real reference images (never
    the test set: runs and sweeps are selected by the probe), where it goes, the sizes."""

    real_train: str
    reference: str
    out: str
    train_images: int = Field(10_000, ge=1)  # labelled images read; a tenth is held out
    reference_images: int = Field(10_000, ge=1)
    overwrite: bool = False  # replace an earlier probe at `out` (only what its record lists: `ownership`)


@dataclass
class ProbeInfo:
    """`build_probe`'s result, kept as probe.json beside the weights."""

    format: str  # PROBE_FORMAT
    channels: int
    classes: int
    label_key: str  # the labels the classifier learned
    real_train: str  # the labelled real set it learned from
    reference: str  # the real images whose feature statistics probe_fd compares with
    train_images: int
    heldout_images: int  # the last tenth of what was read, not trained on
    heldout_error: float  # the classifier's error on them (a fraction)
    reference_images: int


@dataclass
class Probe:
    """A real-data yardstick cheap enough to use during training: a classifier trained on real
    labelled images, and the mean / covariance of its features on reference real images kept
    apart from the test set (runs and sweeps are ranked by it)."""

    net: TaskNet
    mu: torch.Tensor  # (128,)
    sigma: torch.Tensor  # (128, 128)
    meta: ProbeInfo

    def score(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Frechet distance of `images`' features to the reference real features, and the classifier's
        accuracy on them against `labels` (do refined images still show their labels?)."""
        feats = torch.from_numpy(predict(self.net, images, features=True)).double()
        head = self.net.head
        logits = head(feats.float().to(head.weight.device)).detach().cpu().numpy()
        return {
            "probe_fd": frechet_from_stats(feats.mean(0), torch.cov(feats.T), self.mu, self.sigma),
            "probe_label_acc": float((logits.argmax(1) == labels).mean()),
        }



def build_probe(cfg: ProbeSpec, dry_run: bool = False) -> ProbeInfo | ownership.Plan:
    """Train the probe classifier on the first `cfg.train_images` of `cfg.real_train` less their
    last tenth (seed 0, the evaluation recipe), report its error on that tenth, take the reference
    feature statistics from the first `cfg.reference_images` of `cfg.reference`, and write probe.pt
    / probe.json to `cfg.out`. The reference must not be the test set: runs and sweeps are selected
    by the probe (digits: the unlabelled real pool the GAN learns from, mnist/real). `dry_run`: the
    checks only -> what the claim of `cfg.out` would do."""
    real_train, reference, out, reference_images = cfg.real_train, cfg.reference, cfg.out, cfg.reference_images
    for option, prefix in (("--real-train", real_train), ("--reference", reference)):
        shards.refuse_test_set(option, prefix, cfg.s3, "never serves the probe: runs and sweeps are chosen by "
                               "it (use dev and the real pool)")
    inputs = {"--real-train": real_train, "--reference": reference}
    output = ownership.plan(out, "probe", cfg.s3, overwrite=cfg.overwrite, inputs=inputs)  # before the training
    if dry_run:
        return output
    x, y = load_set(real_train, cfg.train_images, cfg.s3, cfg.label_key)
    ref, _ = load_set(reference, reference_images, cfg.s3, None)
    if ref.shape[1:] != x.shape[1:]:
        raise SimganError(f"{reference}: images of shape {list(ref.shape[1:])}, {real_train} has {list(x.shape[1:])}")
    net, fit = train_held_out(x, y, cfg.num_classes, 0, cfg, real_train)
    feats = torch.from_numpy(predict(net, ref, features=True)).double()
    info = ProbeInfo(format=PROBE_FORMAT, channels=int(x.shape[1]), classes=cfg.num_classes, label_key=cfg.label_key,
                     real_train=real_train, reference=reference, **fit, reference_images=len(ref))
    with ownership.claimed(out, "probe", cfg.s3, overwrite=cfg.overwrite, inputs=inputs) as claim:
        write_net(claim, "probe", net, dataclasses.asdict(info), mu=feats.mean(0), sigma=torch.cov(feats.T))
    return info


def load_probe(uri: str, s3: S3Options) -> Probe:
    net, stats, meta = read_net(uri, "probe", "a probe", PROBE_FORMAT, s3,
                                " (make or rebuild it with `simgan-ray probe`; format 1 took its reference "
                                "statistics from the test set)")
    return Probe(net, stats["mu"].double(), stats["sigma"].double(), ProbeInfo(**meta))

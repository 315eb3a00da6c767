"""The label-consistency classifier (config.ConsistencyConfig): trained by the driver on the synthetic
set's own labels when a run starts, kept in <run>/consistency/ (net.pt + net.json), loaded frozen by
every worker. Synthetic labels only: the refiner still never sees a real label."""

from __future__ import annotations

import io
import json

import torch

from simgan_ray import checkpoints, storage
from simgan_ray.classifier import TaskNet, accuracy, train_classifier
from simgan_ray.config import TrainConfig
from simgan_ray.data import load_set
from simgan_ray.errors import SimganError

FORMAT = "simgan-ray-label-net/1"
DIR = "consistency"


def ensure_label_net(cfg: TrainConfig) -> dict | None:
    """Train and write the run's classifier unless the run already has one (a resume, a retry):
    -> its net.json, or None when cfg.consistency.weight is 0."""
    c, s3 = cfg.consistency, cfg.data.s3
    if not c.weight:
        return None
    out = storage.join(cfg.run_uri, DIR)
    meta_uri = storage.join(out, "net.json")
    if storage.exists(meta_uri, s3):
        return storage.read_json(meta_uri, s3, "a label-consistency classifier", FORMAT)
    x, y = load_set(cfg.data.synthetic, c.images, s3, c.label_key)
    held = len(x) // 10
    if held < 10:
        raise SimganError(f"{cfg.data.synthetic}: {len(x)} labelled images; consistency needs >= 100")
    if int(y.max()) >= c.num_classes or int(y.min()) < 0:
        raise SimganError(f"{cfg.data.synthetic}: labels {c.label_key!r} span {int(y.min())}..{int(y.max())}, "
                          f"outside consistency.num_classes ({c.num_classes})")
    net = train_classifier(x[:-held], y[:-held], c.num_classes, cfg.seed, c.epochs, 128, 1e-3)
    meta = {"format": FORMAT, "channels": int(x.shape[1]), "classes": c.num_classes, "label_key": c.label_key,
            "synthetic": cfg.data.synthetic, "train_images": len(x) - held, "heldout_images": held,
            "heldout_error": 1.0 - accuracy(net, x[-held:], y[-held:]), "seed": cfg.seed}
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    storage.make_dirs(out, s3)
    storage.write_bytes(storage.join(out, "net.pt"), buf.getvalue(), s3)
    storage.write_bytes(meta_uri, json.dumps(meta, indent=2).encode(), s3)
    return meta


def load_label_net(cfg: TrainConfig) -> TaskNet:
    """The run's classifier, frozen, on the CPU."""
    out, s3 = storage.join(cfg.run_uri, DIR), cfg.data.s3
    meta = storage.read_json(storage.join(out, "net.json"), s3, "a label-consistency classifier", FORMAT)
    weights = storage.join(out, "net.pt")
    net = TaskNet(meta["channels"], meta["classes"])
    net.load_state_dict(checkpoints.load_tensors(storage.read_bytes(weights, s3), weights))
    return net.eval().requires_grad_(False)

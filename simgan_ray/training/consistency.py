"""The label-consistency classifier (config.ConsistencyConfig): trained by the driver on the synthetic
set's own labels when a run starts, kept in <run>/consistency/ (net.pt + net.json, as
classifier.write_net writes them), loaded frozen by every worker. Synthetic labels only: the
refiner still never sees a real label."""

from __future__ import annotations

from simgan_ray import storage
from simgan_ray.measures.classifier import Recipe, TaskNet, read_net, train_held_out, write_net
from simgan_ray.sets.data import load_set
from simgan_ray.storage.ownership import Output
from simgan_ray.training.config import TrainConfig

FORMAT = "simgan-ray-label-net/2"  # 2: net.pt holds {"net": weights}, as the probe's
DIR = "consistency"


def ensure_label_net(cfg: TrainConfig, run: Output) -> dict | None:
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
    net, fit = train_held_out(x, y, c.num_classes, cfg.seed, Recipe(label_key=c.label_key, epochs=c.epochs),
                              cfg.data.synthetic)
    meta = {"format": FORMAT, "channels": int(x.shape[1]), "classes": c.num_classes, "label_key": c.label_key,
            "synthetic": cfg.data.synthetic, **fit, "seed": cfg.seed}
    write_net(run.at(DIR), "net", net, meta)
    return meta


def load_label_net(cfg: TrainConfig) -> TaskNet:
    """The run's classifier, frozen, on the CPU."""
    return read_net(storage.join(cfg.run_uri, DIR), "net", "a label-consistency classifier", FORMAT, cfg.data.s3)[0]

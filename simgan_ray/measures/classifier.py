"""The fixed classifier recipe behind every real-data figure (evaluate's Table 1, the probe): a
small CNN (2 conv + 2 FC layers, Adam, no augmentation), trained from uint8 (N, C, H, W) images in
[0, 255] scaled to [-1, 1]; its accuracy, its 128-d features and the Frechet distance between
feature sets."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from pydantic import Field, PositiveFloat
from torch import nn

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.common.settings import Section
from simgan_ray.model.export import load_tensors
from simgan_ray.sets import data
from simgan_ray.storage import S3Options
from simgan_ray.storage.ownership import Output


class Recipe(Section):
    """The fixed classifier recipe (Table 1's classifiers and the probe's) and where the sets live."""

    label_key: str = "digit"  # class = int(label_json[label_key])
    num_classes: int = Field(10, ge=2)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: PositiveFloat = 1e-3
    s3: S3Options = S3Options()


class TaskNet(nn.Module):
    """Small CNN classifier: (n, C, H, W) in [-1, 1] -> (n, classes) logits; `features` gives
    the 128-d penultimate activations used for the Frechet distance."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(x: np.ndarray, y: np.ndarray, classes: int, seed: int, epochs: int, batch_size: int,
                     lr: float, device: str | torch.device = "cpu") -> TaskNet:
    """The fixed recipe: Adam, `epochs` passes, shuffled mini-batches, no augmentation.
    x: uint8 (n, C, H, W); y: int64 (n,) class indices, or float32 (n, d) regression targets, which
    the same CNN with d outputs learns by mean squared error (`classes` is then d). The net is left
    on `device`; the shuffle is drawn on the CPU, so it is the same on any device."""
    torch.manual_seed(seed)
    net = TaskNet(x.shape[1], classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    # writable copies of Ray's arrays
    xt, yt = torch.from_numpy(np.array(x)).to(device), torch.from_numpy(np.array(y)).to(device)
    loss_fn = nn.functional.mse_loss if yt.is_floating_point() else nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            idx = idx.to(device)
            loss = loss_fn(net(data.unit_range(xt[idx])), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


def two_sample_accuracy(fake: np.ndarray, real: np.ndarray, seed: int, recipe: Recipe,
                        device: str | torch.device = "cpu") -> tuple[float, int]:
    """A classifier two-sample test: a fresh net (the recipe) learns to tell `fake` (label 0) from
    `real` (label 1), n = min(len) of each, on a random half of the 2n; -> (its accuracy on the
    other half: 0.5 = indistinguishable, n)."""
    n = min(len(fake), len(real))
    rng = np.random.default_rng(seed)
    x = np.concatenate([fake[:n], real[:n]])
    y = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    order = rng.permutation(len(x))
    train, held = order[: len(x) // 2], order[len(x) // 2 :]
    net = train_classifier(x[train], y[train], 2, seed, recipe.epochs, recipe.batch_size, recipe.lr, device)
    return accuracy(net, x[held], y[held]), n


def train_held_out(x: np.ndarray, y: np.ndarray, classes: int, seed: int, recipe: Recipe,
                   where: str) -> tuple[TaskNet, dict]:
    """The recipe on all but the last tenth of (x, y), scored on that tenth (`where` names the set
    in errors) -> (net, {"train_images", "heldout_images", "heldout_error"})."""
    held = len(x) // 10
    if held < 10:
        raise SimganError(f"{where}: {len(x)} labelled images; >= 100 needed (a tenth is held out)")
    if int(y.max()) >= classes or int(y.min()) < 0:
        raise SimganError(f"{where}: labels {recipe.label_key!r} span {int(y.min())}..{int(y.max())}, "
                          f"outside 0..{classes - 1} ({classes} classes)")
    net = train_classifier(x[:-held], y[:-held], classes, seed, recipe.epochs, recipe.batch_size, recipe.lr)
    return net, {"train_images": len(x) - held, "heldout_images": held,
                 "heldout_error": 1.0 - accuracy(net, x[-held:], y[-held:])}


def write_net(out: Output, name: str, net: TaskNet, meta: dict, **tensors: torch.Tensor) -> None:
    """<out>/<name>.pt ({"net": weights, **tensors}) and <out>/<name>.json (`meta`, which holds the
    format, "channels" and "classes"), the record last (it says the net is complete)."""
    buf = io.BytesIO()
    torch.save({"net": net.state_dict(), **tensors}, buf)
    out.write({f"{name}.pt": buf.getvalue(), f"{name}.json": json.dumps(meta, indent=2).encode()})


def read_net(out: str, name: str, what: str, fmt: str, s3: S3Options, hint: str = "") -> tuple[TaskNet, dict, dict]:
    """What write_net wrote -> (the net, frozen, on the CPU; its other tensors; its meta). A missing
    or foreign one is a SimganError naming the file (`what`: "a probe"; `hint` follows)."""
    meta_uri = storage.join(out, f"{name}.json")
    if not storage.exists(meta_uri, s3):
        raise SimganError(f"{meta_uri}: missing; {out} is not {what}{hint}")
    meta = storage.read_json(meta_uri, s3, what, fmt, hint)
    weights = storage.join(out, f"{name}.pt")
    state = load_tensors(storage.read_bytes(weights, s3), weights)
    net = TaskNet(meta["channels"], meta["classes"])
    net.load_state_dict(state.pop("net"))
    return net.eval().requires_grad_(False), state, meta


@torch.no_grad()
def predict(net: TaskNet, x: np.ndarray, features: bool = False) -> np.ndarray:
    """The net's logits (or 128-d features) for uint8 (n, C, H, W) images, computed on its device."""
    device = next(net.parameters()).device
    out = [(net.features if features else net)(data.unit_range(torch.tensor(x[i : i + 1024], device=device)))
           for i in range(0, len(x), 1024)]
    return torch.cat(out).cpu().numpy()


def accuracy(net: TaskNet, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(net, x).argmax(1) == y).mean())


def regression_errors(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """pred, y: (n, d). Mean absolute error (over all components), mean L2 error, and for d >= 2 the
    mean angle in degrees between the first min(d, 3) components of pred and y as directions (the
    paper's gaze metric; UnityEyes' look vector is (x, y, z, 0))."""
    diff = pred.astype(np.float64) - y
    out = {"mae": float(np.abs(diff).mean()), "l2": float(np.linalg.norm(diff, axis=1).mean())}
    if y.shape[1] >= 2:
        p, t = pred[:, :3].astype(np.float64), y[:, :3].astype(np.float64)
        cos = (p * t).sum(1) / np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1), 1e-12)
        out["angle_deg"] = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())
    return out


def primary_error(errors: dict[str, float]) -> str:
    """Which of `regression_errors` is the headline: the angle for directions, else the MAE."""
    return "angle_deg" if "angle_deg" in errors else "mae"


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (n, d) and b (m, d)."""
    a64, b64 = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    return frechet_from_stats(a64.mean(0), torch.cov(a64.T), b64.mean(0), torch.cov(b64.T))


def frechet_from_stats(mu_a: torch.Tensor, s_a: torch.Tensor, mu_b: torch.Tensor, s_b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), via symmetric eigendecompositions."""
    def sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
        w, v = torch.linalg.eigh((m + m.T) / 2)
        return (v * w.clamp(min=0).sqrt()) @ v.T

    root_a = sqrtm_psd(s_a)
    cross = sqrtm_psd(root_a @ s_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + torch.trace(s_a + s_b - 2 * cross))

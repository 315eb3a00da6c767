"""Does refinement help on real data? The paper's Table 1 protocol, for image classification.

Given a synthetic set, a refiner (or an already refined set) and labelled real sets:
1. Downstream task: the same small CNN, trained by a fixed recipe with several seeds on
   (a) raw synthetic, (b) refined synthetic and (c) real labelled images; error on the real test
   set, mean +- sd. Headline: relative error reduction of (b) over (a).
2. Realism: a classifier two-sample test (a fresh CNN learns to tell synthetic or refined images
   from real ones; held-out accuracy near 50% = indistinguishable), and the Frechet distance to
   the real test set in the feature space of the real-trained classifier.
3. Label preservation: accuracy of the real-trained classifier on raw vs refined synthetic images.
The classifiers train as Ray tasks, one CPU each, in parallel.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, PositiveFloat
from torch import nn

from simgan_ray import checkpoints, data, shards, storage, viz
from simgan_ray.config import Section
from simgan_ray.errors import SimganError
from simgan_ray.runtime import ensure_ray, gather
from simgan_ray.storage import S3Options

# 2: reference statistics from real images apart from the test set (1 took them from the test set).
PROBE_FORMAT = "simgan-ray-probe/2"


class Recipe(Section):
    """The fixed classifier recipe (Table 1's classifiers and the probe's) and where the sets live."""

    label_key: str = "digit"  # class = int(label_json[label_key])
    num_classes: int = Field(10, ge=2)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: PositiveFloat = 1e-3
    s3: S3Options = S3Options()


class EvalConfig(Recipe):
    """`evaluate`: the sets, the refiner (exactly one of `refiner` and `refined`), the sizes."""

    synthetic: str  # labelled synthetic set
    real_train: str  # labelled real set for the ceiling classifier (digits: MNIST dev)
    real_test: str  # labelled real set the errors are reported on (digits: MNIST test)
    real_pool: str  # unlabelled real images for the two-sample test (digits: MNIST real pool)
    out: str  # report directory
    refiner: str | None = None  # run or export; refines `synthetic` in memory
    refined: str | None = None  # or: a set written by `simgan-ray refine`
    seeds: int = Field(3, ge=1)
    train_images: int = Field(20_000, ge=1)  # per classifier (a), (b); (c) uses up to this many real ones
    test_images: int = Field(10_000, ge=1)
    # real_test of manifest kind "test" is read only with final: the one measurement of a
    # configuration chosen on val; recorded in the report.
    final: bool = False


class ProbeSpec(Recipe):
    """`probe`: the labelled real set its classifier learns from, the real reference images (never
    the test set: runs and sweeps are selected by the probe), where it goes, the sizes."""

    real_train: str
    reference: str
    out: str
    train_images: int = Field(10_000, ge=1)  # labelled images read; a tenth is held out
    reference_images: int = Field(10_000, ge=1)


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
                     lr: float) -> TaskNet:
    """The fixed recipe: Adam, `epochs` passes, shuffled mini-batches, no augmentation.
    x: uint8 (n, C, H, W); y: int64 (n,)."""
    torch.manual_seed(seed)
    net = TaskNet(x.shape[1], classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))  # writable copies of Ray's arrays
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(net(data.unit_range(xt[idx])), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict(net: TaskNet, x: np.ndarray, features: bool = False) -> np.ndarray:
    out = [(net.features if features else net)(data.unit_range(torch.tensor(x[i : i + 1024])))
           for i in range(0, len(x), 1024)]
    return torch.cat(out).numpy()


def accuracy(net: TaskNet, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(net, x).argmax(1) == y).mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (n, d) and b (m, d)."""
    a64, b64 = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    return _frechet(a64.mean(0), torch.cov(a64.T), b64.mean(0), torch.cov(b64.T))


def _task_run(name: str, x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int,
              cfg: EvalConfig) -> dict:
    """One downstream classifier (a Ray task): train, then test error on real data."""
    torch.set_num_threads(1)  # one CPU per task; the tasks run side by side
    start = time.perf_counter()
    net = train_classifier(x, y, cfg.num_classes, seed, cfg.epochs, cfg.batch_size, cfg.lr)
    return {"source": name, "seed": seed, "test_error": 1.0 - accuracy(net, test_x, test_y),
            "seconds": time.perf_counter() - start, "state": net.state_dict()}


def _two_sample(name: str, fake: np.ndarray, real: np.ndarray, seed: int, cfg: EvalConfig) -> dict:
    """Held-out accuracy of a fresh CNN telling `fake` (label 0) from `real` (label 1); a Ray task."""
    torch.set_num_threads(1)
    n = min(len(fake), len(real))
    rng = np.random.default_rng(seed)
    x = np.concatenate([fake[:n], real[:n]])
    y = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    order = rng.permutation(len(x))
    half = len(x) // 2
    train, held = order[:half], order[half:]
    net = train_classifier(x[train], y[train], 2, seed, cfg.epochs, cfg.batch_size, cfg.lr)
    return {"source": name, "heldout_accuracy": accuracy(net, x[held], y[held]), "pairs": n}


@dataclass
class Probe:
    """A real-data yardstick cheap enough to use during training: a classifier trained on real
    labelled images, and the mean / covariance of its features on reference real images kept
    apart from the test set (runs and sweeps are ranked by it)."""

    net: TaskNet
    mu: torch.Tensor  # (128,)
    sigma: torch.Tensor  # (128, 128)
    meta: dict

    def score(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Frechet distance of `images`' features to the reference real features, and the classifier's
        accuracy on them against `labels` (do refined images still show their labels?)."""
        feats = torch.from_numpy(predict(self.net, images, features=True)).double()
        logits = self.net.head(feats.float()).detach().numpy()
        return {
            "probe_fd": _frechet(feats.mean(0), torch.cov(feats.T), self.mu, self.sigma),
            "probe_label_acc": float((logits.argmax(1) == labels).mean()),
        }


def build_probe(cfg: ProbeSpec) -> dict:
    """Train the probe classifier on the first `cfg.train_images` of `cfg.real_train` less their
    last tenth (seed 0, the evaluation recipe), report its error on that tenth, take the reference
    feature statistics from the first `cfg.reference_images` of `cfg.reference`, and write probe.pt
    / probe.json to `cfg.out`. The reference must not be the test set: runs and sweeps are selected
    by the probe (digits: the unlabelled real pool the GAN learns from, mnist/real)."""
    real_train, reference, out, reference_images = cfg.real_train, cfg.reference, cfg.out, cfg.reference_images
    for option, prefix in (("--real-train", real_train), ("--reference", reference)):
        refuse_test_set(option, prefix, cfg.s3, "never serves the probe: runs and sweeps are chosen by it (use dev "
                        "and the real pool)")
    x, y = load_set(real_train, cfg.train_images, cfg.s3, cfg.label_key)
    held = len(x) // 10
    if held < 10:
        raise SimganError(f"{real_train}: {len(x)} labelled images; the probe needs >= 100 (a tenth is held out)")
    ref, _ = load_set(reference, reference_images, cfg.s3, None)
    if ref.shape[1:] != x.shape[1:]:
        raise SimganError(f"{reference}: images of shape {list(ref.shape[1:])}, {real_train} has {list(x.shape[1:])}")
    net = train_classifier(x[:-held], y[:-held], cfg.num_classes, 0, cfg.epochs, cfg.batch_size, cfg.lr)
    feats = torch.from_numpy(predict(net, ref, features=True)).double()
    meta = {"format": PROBE_FORMAT, "channels": int(x.shape[1]), "classes": cfg.num_classes,
            "label_key": cfg.label_key, "real_train": real_train, "reference": reference,
            "train_images": len(x) - held, "heldout_images": held, "reference_images": len(ref),
            "heldout_error": 1.0 - accuracy(net, x[-held:], y[-held:])}
    buf = io.BytesIO()
    torch.save({"net": net.state_dict(), "mu": feats.mean(0), "sigma": torch.cov(feats.T)}, buf)
    storage.make_dirs(out, cfg.s3)
    storage.write_bytes(storage.join(out, "probe.pt"), buf.getvalue(), cfg.s3)
    storage.write_bytes(storage.join(out, "probe.json"), json.dumps(meta, indent=2).encode(), cfg.s3)
    return meta


def load_probe(uri: str, s3: S3Options) -> Probe:
    meta_uri = storage.join(uri, "probe.json")
    if not storage.exists(meta_uri, s3):
        raise SimganError(f"{meta_uri}: missing; {uri} is not a probe (make one with `simgan-ray probe`)")
    meta = storage.read_json(meta_uri, s3, "a probe", PROBE_FORMAT, "; rebuild it with `simgan-ray probe` (format 1 "
                             "took its reference statistics from the test set)")
    weights_uri = storage.join(uri, "probe.pt")
    state = checkpoints.load_tensors(storage.read_bytes(weights_uri, s3), weights_uri)
    net = TaskNet(meta["channels"], meta["classes"])
    net.load_state_dict(state["net"])
    return Probe(net.eval(), state["mu"].double(), state["sigma"].double(), meta)


def _frechet(mu_a: torch.Tensor, s_a: torch.Tensor, mu_b: torch.Tensor, s_b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), via symmetric eigendecompositions."""
    def sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
        w, v = torch.linalg.eigh((m + m.T) / 2)
        return (v * w.clamp(min=0).sqrt()) @ v.T

    root_a = sqrtm_psd(s_a)
    cross = sqrtm_psd(root_a @ s_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + torch.trace(s_a + s_b - 2 * cross))


def _labels(raw: list, key: str, where: str) -> np.ndarray:
    try:
        return np.array([int(json.loads(s)[key]) for s in raw], np.int64)
    except (TypeError, KeyError, ValueError, json.JSONDecodeError):
        raise SimganError(f"{where}: every image needs a JSON label with an integer {key!r}") from None


def load_set(prefix: str, n: int, s3: S3Options, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The first n images of a set as uint8 (n, C, H, W), with class labels when `key` is given."""
    manifest = shards.read_manifest(prefix, s3)
    _, images, labels = data.head_images(prefix, manifest, min(n, manifest.count), s3)
    return images, _labels(labels, key, prefix) if key else None


def _mean_sd(values: list[float]) -> dict:
    arr = np.array(values)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "runs": values}


def refuse_test_set(option: str, prefix: str, s3: S3Options, role: str) -> str:
    """A set's manifest kind; a SimganError when it is "test" (the MNIST test split, or any set its
    maker marked so): nothing is chosen by, trained on or tuned against the test set."""
    kind = shards.read_manifest(prefix, s3).kind
    if kind == "test":
        raise SimganError(f"{option} {prefix}: a test set (manifest kind 'test') {role}")
    return kind


def evaluate(cfg: EvalConfig) -> dict:
    """Run the whole protocol; write report.json, report.md and report.png to cfg.out."""
    import ray

    if (cfg.refiner is None) == (cfg.refined is None):
        raise SimganError("give exactly one of --refiner (a run or export) and --refined (a refined set)")
    s3 = cfg.s3
    for option, prefix in (("--real-train", cfg.real_train), ("--real-pool", cfg.real_pool)):
        refuse_test_set(option, prefix, s3, "is never trained on: use dev for the ceiling, the real pool for realism")
    if not cfg.final:
        refuse_test_set("--real-test", cfg.real_test, s3, "is read once per reported configuration: choose on val "
                        "(its manifest kind 'val'), then report on test with --final, recorded in the report")
    report_kind = shards.read_manifest(cfg.real_test, s3).kind
    syn_x, syn_y = load_set(cfg.synthetic, cfg.train_images, s3, cfg.label_key)
    if cfg.refiner is not None:
        export = checkpoints.resolve_export(cfg.refiner, s3)
        refiner, _ = checkpoints.load_export(export, s3)
        ref_x, ref_y = checkpoints.refine_images(refiner, syn_x), syn_y
        refined_from = export
    else:
        ref_x, ref_y = load_set(cfg.refined, cfg.train_images, s3, cfg.label_key)
        refined_from = cfg.refined
    real_x, real_y = load_set(cfg.real_train, cfg.train_images, s3, cfg.label_key)
    test_x, test_y = load_set(cfg.real_test, cfg.test_images, s3, cfg.label_key)
    pool_x, _ = load_set(cfg.real_pool, cfg.train_images, s3, None)
    shapes = {syn_x.shape[1:], ref_x.shape[1:], real_x.shape[1:], test_x.shape[1:], pool_x.shape[1:]}
    if len(shapes) != 1:
        raise SimganError(f"the sets have different image shapes: {sorted(shapes)}")

    ensure_ray()
    task = ray.remote(num_cpus=1)(_task_run)
    sources = {"synthetic": (syn_x, syn_y), "refined": (ref_x, ref_y), "real": (real_x, real_y)}
    refs = [task.remote(name, ray.put(x), ray.put(y), test_x, test_y, seed, cfg)
            for name, (x, y) in sources.items() for seed in range(cfg.seeds)]
    two = ray.remote(num_cpus=1)(_two_sample)
    realism_refs = [two.remote(name, x, pool_x, 0, cfg) for name, x in (("synthetic", syn_x), ("refined", ref_x))]
    done = gather(refs + realism_refs, "evaluate: classifiers trained")
    runs = done[: len(refs)]
    realism = {r["source"]: r for r in done[len(refs):]}

    errors = {name: _mean_sd([r["test_error"] for r in runs if r["source"] == name]) for name in sources}
    ceiling = TaskNet(real_x.shape[1], cfg.num_classes)
    ceiling.load_state_dict(next(r["state"] for r in runs if r["source"] == "real" and r["seed"] == 0))
    ceiling.eval()
    test_features = predict(ceiling, test_x, features=True)
    err_a, err_b = errors["synthetic"]["mean"], errors["refined"]["mean"]
    report = {
        "inputs": {"synthetic": cfg.synthetic, "refined_from": refined_from, "real_train": cfg.real_train,
                   "real_test": cfg.real_test, "real_pool": cfg.real_pool},
        # Which set the errors are on (its manifest kind) and whether this is the final, test-set run.
        "reported_on": {"kind": report_kind, "final": cfg.final},
        "recipe": cfg.model_dump(include={"seeds", "train_images", "test_images", "epochs", "batch_size", "lr",
                                          "label_key"}),
        "counts": {"synthetic": len(syn_x), "real_train": len(real_x), "real_test": len(test_x),
                   "real_pool": len(pool_x)},
        "test_error": errors,
        "relative_error_reduction": (err_a - err_b) / err_a if err_a > 0 else 0.0,
        "two_sample_accuracy": {k: v["heldout_accuracy"] for k, v in realism.items()},
        "frechet_distance": {
            "synthetic": frechet_distance(predict(ceiling, syn_x, features=True), test_features),
            "refined": frechet_distance(predict(ceiling, ref_x, features=True), test_features),
        },
        "label_preservation": {"synthetic": accuracy(ceiling, syn_x, syn_y),
                               "refined": accuracy(ceiling, ref_x, ref_y)},
        "classifier_seconds": sum(r["seconds"] for r in runs),
    }
    _write_report(cfg, report, syn_x, ref_x, test_x)
    return report


def markdown(r: dict) -> str:
    e = r["test_error"]

    def pct(d: dict) -> str:
        return f"{100 * d['mean']:.2f}% +- {100 * d['sd']:.2f}"

    return "\n".join([
        "# SimGAN evaluation",
        "",
        f"Errors on `{r['inputs']['real_test']}` (kind {r['reported_on']['kind']!r}, {r['counts']['real_test']} "
        f"images{'; the final, test-set measurement' if r['reported_on']['final'] else ''}); "
        f"{r['recipe']['seeds']} seeds per row; {r['recipe']['epochs']} epochs on {r['counts']['synthetic']} images.",
        "",
        f"| classifier trained on | {r['reported_on']['kind']} error (mean +- sd) | two-sample accuracy vs real | "
        "Frechet distance to real | real-trained classifier accuracy on it |",
        "| --- | --- | --- | --- | --- |",
        f"| (a) raw synthetic | {pct(e['synthetic'])} | {100 * r['two_sample_accuracy']['synthetic']:.1f}% | "
        f"{r['frechet_distance']['synthetic']:.2f} | {100 * r['label_preservation']['synthetic']:.1f}% |",
        f"| (b) refined synthetic | {pct(e['refined'])} | {100 * r['two_sample_accuracy']['refined']:.1f}% | "
        f"{r['frechet_distance']['refined']:.2f} | {100 * r['label_preservation']['refined']:.1f}% |",
        f"| (c) real (ceiling) | {pct(e['real'])} | | | |",
        "",
        f"**Relative error reduction, refined vs raw synthetic: {100 * r['relative_error_reduction']:.1f}%** "
        "(paper, gaze: 22.3%; target here: >= 30%).",
        "",
    ])


def _write_report(cfg: EvalConfig, report: dict, syn_x: np.ndarray, ref_x: np.ndarray, test_x: np.ndarray) -> None:
    s3 = cfg.s3
    storage.make_dirs(cfg.out, s3)
    storage.write_bytes(storage.join(cfg.out, "report.json"), json.dumps(report, indent=2).encode(), s3)
    storage.write_bytes(storage.join(cfg.out, "report.md"), markdown(report).encode(), s3)
    n = min(16, len(syn_x))
    rows = [("synthetic", syn_x[:n]), ("refined", ref_x[:n]), ("real test", test_x[:n])]
    storage.write_bytes(storage.join(cfg.out, "samples.png"), viz.image_grid(rows), s3)
    storage.write_bytes(storage.join(cfg.out, "errors.png"), viz.plot_errors(report["test_error"]), s3)
    if cfg.refiner is not None:  # a training run's curves, when the refiner came from one
        metrics_uri = storage.join(cfg.refiner, "metrics.jsonl")
        if storage.exists(metrics_uri, s3):
            metrics = [json.loads(line) for line in storage.read_bytes(metrics_uri, s3).splitlines()]
            storage.write_bytes(storage.join(cfg.out, "curves.png"), viz.plot_curves(metrics), s3)

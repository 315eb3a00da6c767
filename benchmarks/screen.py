"""Screen recipe ideas on MNIST val on one GPU, without Ray: many (idea, training seed) runs of the
SimGAN schedule side by side in worker processes, each run's export scored on val by the test
protocol's classifiers. For ranking ideas with 4 seeds where a CPU screen affords 2 (a 3000-step
digits run takes 15-24 min on 2 CPU workers); an idea this ranks well is then trained by `train`
and measured by `evaluate`, as the screens of docs/results.md are.

The same as `train` + `evaluate`: the GAN, its updates and schedule (`gan.run_step`: warm-up, weight
average, DiffAugment's draws), bf16 autocast, the collapse guard, the probe's score at every report
and the export of the best report's weight average (`probe.export`), the classifiers' recipe
(3 seeds, 20k refined images, 3 epochs), the ceiling classifier's label accuracy and the two-sample
test against the real pool, errors on a set of manifest kind `val` (a `test` set is refused).
What differs (so a proxy; its figures are not README's): one process stands for the run's workers,
with batch num_workers x batch_size and one history buffer of history_size (the same gradients in
expectation: the losses are batch means, and each D batch is still half history); its own shuffle
of the sets held on the device, not Ray Data's order; the GPU's numerics; no checkpoints.

    python3 benchmarks/screen.py --config jobs/digits-long.yaml --probe runs/digits-probe \\
        --idea base --idea 'lam07: loss.lam=0.07' --idea 'wide: discriminator.widths=[96,64,48,48]; k_d=3' \\
        --seeds 0 1 2 3 --procs 12 --budget-s 480 --json rows.jsonl
    .venv/bin/python benchmarks/screen.py --device cpu --quick --idea base --json /tmp/rows.jsonl  # checks the script

On a GPU machine without Ray (torch, no Ray, no pydantic, no package registry), as run on 2026-11-27: copy
data/digits/{synthetic,mnist/real,mnist/dev,mnist/val} and runs/digits-probe into an ignored folder
of the checkout (.screen/; the test split stays behind), download pydantic, pydantic_core,
annotated_types, typing_inspection and typing_extensions as cp312 wheels into .whl/, carry both, and
run `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`, PYTHONPATH=/tmp/site, then this
from .screen/. Give --budget-s at least one wave's length (14 runs side by side took ~7 min on an
H200): it only stops new runs from starting.

An idea is `NAME` or `NAME: KEY=VALUE; KEY=VALUE` (`train --set` overrides). Runs go seed-major (every
idea's seed 0 first), so a budget that runs out leaves the ideas with equal seeds; a run not started
by --budget-s is skipped. Rows (one JSON line per run, as they finish): the idea, seed, overrides,
val errors per classifier seed and their mean, the labels kept, two-sample accuracy, the export's
step and probe distance, minutes. Last: a table per idea (mean over the seeds that ran).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simgan_ray.common.errors import SimganError  # noqa: E402
from simgan_ray.common.yamlfiles import parse_override  # noqa: E402
from simgan_ray.measures.classifier import Recipe, accuracy, train_classifier, two_sample_accuracy  # noqa: E402
from simgan_ray.measures.probe import load_probe  # noqa: E402
from simgan_ray.model.export import refine_images  # noqa: E402
from simgan_ray.model.history import ImageHistory  # noqa: E402
from simgan_ray.sets import shards  # noqa: E402
from simgan_ray.sets.data import load_set, unit_range  # noqa: E402
from simgan_ray.training import checkpoints  # noqa: E402
from simgan_ray.training.config import load_config, with_overrides  # noqa: E402
from simgan_ray.training.consistency import load_label_net  # noqa: E402
from simgan_ray.training.gan import make_gan, phase_table, run_step  # noqa: E402
from simgan_ray.training.guard import CollapseGuard  # noqa: E402
from simgan_ray.training.metrics import score_gan  # noqa: E402

QUICK = {"schedule.pretrain_refiner_steps": 4, "schedule.pretrain_discriminator_steps": 2, "schedule.steps": 8,
         "schedule.warmup_steps": 2, "run.report_every": 4, "run.checkpoint_every": 4, "probe.images": 64}


def parse_idea(text: str) -> tuple[str, dict]:
    """'NAME' or 'NAME: k=v; k=v' -> (NAME, {k: v})."""
    name, _, sets = text.partition(":")
    return name.strip(), dict(parse_override(s) for s in sets.split(";") if s.strip())


def _batches(images: torch.Tensor, batch: int, seed: int):
    """Endless (batch, C, H, W) float batches in [-1, 1] of uint8 `images` (on the device), a new
    shuffle (on the CPU, seeded) every pass; a pass's remainder is dropped."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(images), generator=gen).split(batch):
            if len(idx) == batch:
                yield unit_range(images[idx.to(images.device)])


class Sets:
    """The arrays every run of a process reads, loaded once: the synthetic set with labels, the real
    pool, the ceiling's labelled real set and val; on `device` for training where noted."""

    def __init__(self, cfg, args, probe, device: torch.device) -> None:
        s3 = cfg.data.s3
        key = probe.meta.label_key
        n = args.train_images
        self.syn_x, self.syn_y = load_set(cfg.data.synthetic, n, s3, key)
        self.pool_x, _ = load_set(cfg.data.real, max(n, args.real_images), s3, None)
        self.dev_x, self.dev_y = load_set(args.real_train, n, s3, key)
        self.val_x, self.val_y = load_set(args.val, args.val_images, s3, key)
        self.syn_gpu = torch.from_numpy(self.syn_x).to(device)
        self.pool_gpu = torch.from_numpy(self.pool_x).to(device)


def train_run(cfg, probe, sets: Sets, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The schedule of `cfg` (one process for its workers), scored by the probe at every report;
    -> (the export: the best report's weight average with probe.export best, else the last; its record)."""
    workers = cfg.run.num_workers
    cfg = with_overrides(cfg, {"batch_size": cfg.batch_size * workers, "run.num_workers": 1})
    torch.manual_seed(cfg.seed)
    label_net = load_label_net(cfg).to(device) if cfg.consistency.weight else None
    stream = cfg.seed * 100_003
    gan = make_gan(cfg, ImageHistory(cfg.history_size, seed=stream), lambda m: m.to(device), label_net)
    synthetic = _batches(sets.syn_gpu, cfg.batch_size, stream)
    real = _batches(sets.pool_gpu, cfg.batch_size, stream + 1)
    images, labels = sets.syn_x[: cfg.probe.images], sets.syn_y[: cfg.probe.images]
    table, total, every = phase_table(cfg.schedule), cfg.schedule.total_steps, cfg.run.report_every
    guard = CollapseGuard(cfg.guard, loud=False)
    step, reports, best = 0, [], None
    guard.snapshot(gan, step, 0)
    while step < total:
        phase = run_step(gan, cfg, table, step, synthetic, real, guard.lr_factor, stream, lambda m, n: None)
        step += 1
        if step % every and step % cfg.run.checkpoint_every and step != total:
            continue
        metrics = {"step": step, **score_gan(probe, gan, images, labels)}
        if guard.collapsed(metrics, phase, device):
            step, kept = guard.rollback(gan, step, metrics)
            del reports[kept:]
            continue
        reports.append(metrics)
        if cfg.probe.export == "best":
            best = checkpoints.keep_best(best, step, metrics["probe_fd"], gan.exported)
        guard.snapshot(gan, step, len(reports))
    export = copy.deepcopy(gan.exported)
    if best is None:
        best = {"step": step, "probe_fd": reports[-1]["probe_fd"]}
    else:
        export.load_state_dict(best["refiner"])
    return export.eval(), {"weights_step": best["step"], "weights_probe_fd": best["probe_fd"],
                           "rollbacks": guard.rollbacks, "final_probe_fd": reports[-1]["probe_fd"]}


def val_scores(x: np.ndarray, sets: Sets, recipe: Recipe, seeds: int, ceiling, device) -> dict:
    """The test protocol on val for images `x` (labelled as the synthetic set): val errors of
    `seeds` classifiers trained on them, the ceiling's accuracy on them, the two-sample accuracy."""
    errors = [1.0 - accuracy(train_classifier(x, sets.syn_y, recipe.num_classes, s, recipe.epochs,
                                              recipe.batch_size, recipe.lr, device), sets.val_x, sets.val_y)
              for s in range(seeds)]
    return {"val_errors": errors, "val_error": statistics.fmean(errors),
            "labels_kept": accuracy(ceiling, x, sets.syn_y),
            "two_sample": two_sample_accuracy(x, sets.pool_x, 0, recipe, device)[0]}


_STATE: dict = {}  # per process: the probe, the sets, the ceiling classifier


def _setup(args) -> dict:
    if not _STATE:
        torch.set_num_threads(1)
        device = torch.device(args.device)
        cfg = load_config(args.config, dict(args.set))
        probe = load_probe(args.probe, cfg.data.s3)
        probe.net.to(device)
        sets = Sets(cfg, args, probe, device)
        recipe = Recipe()
        ceiling = train_classifier(sets.dev_x, sets.dev_y, recipe.num_classes, 0, recipe.epochs, recipe.batch_size,
                                   recipe.lr, device)
        _STATE.update(device=device, probe=probe, sets=sets, recipe=recipe, ceiling=ceiling)
    return _STATE


def run_job(job: tuple) -> dict:
    """One (idea, seed): train, then score on val; a failure is a row with its error, a run the
    budget leaves out a row saying so."""
    args, name, overrides, seed, deadline = job
    row = {"idea": name, "seed": seed, "overrides": overrides}
    if time.time() > deadline:
        return {**row, "skipped": "--budget-s spent before it started"}
    try:
        s = _setup(args)
        start = time.perf_counter()
        cfg = load_config(args.config, {**dict(args.set), **overrides, "seed": seed})
        export, record = train_run(cfg, s["probe"], s["sets"], s["device"])
        trained = time.perf_counter()
        refined = refine_images(export, s["sets"].syn_x)
        row.update(record, **val_scores(refined, s["sets"], s["recipe"], args.classifier_seeds, s["ceiling"],
                                        s["device"]))
        row.update(train_min=(trained - start) / 60, eval_min=(time.perf_counter() - trained) / 60)
    except Exception as e:  # noqa: BLE001 - a failed run is a row; the others go on
        row["error"] = f"{type(e).__name__}: {e}"
    return row


def table(rows: list[dict], raw: dict | None) -> str:
    """Markdown: one line per idea, means over its seeds."""
    lines = ["| idea | seeds | val error per seed | mean val error | labels kept | two-sample | "
             "export step (probe distance) | train min |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    if raw is not None:
        lines.append(f"| raw synthetic | | | {100 * raw['val_error']:.2f}% | {100 * raw['labels_kept']:.1f}% | "
                     f"{100 * raw['two_sample']:.1f}% | | |")
    for name in dict.fromkeys(r["idea"] for r in rows):
        ok = sorted((r for r in rows if r["idea"] == name and "error" not in r), key=lambda r: r["seed"])
        failed = [r["seed"] for r in rows if r["idea"] == name and "error" in r]
        if not ok:
            lines.append(f"| {name} | failed: {failed} | | | | | | |")
            continue
        mean = {k: statistics.fmean(r[k] for r in ok) for k in ("val_error", "labels_kept", "two_sample")}
        per_seed = " / ".join(f"{100 * r['val_error']:.2f}" for r in ok)
        exports = ", ".join(f"{r['weights_step']} ({r['weights_probe_fd']:.1f})" for r in ok)
        minutes = [r["train_min"] for r in ok]
        lines.append(
            f"| {name} | {[r['seed'] for r in ok]}{f' (failed {failed})' if failed else ''} | {per_seed} | "
            f"**{100 * mean['val_error']:.2f}%** | {100 * mean['labels_kept']:.1f}% | {100 * mean['two_sample']:.1f}% "
            f"| {exports} | {min(minutes):.1f}-{max(minutes):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "jobs/digits-long.yaml"))
    ap.add_argument("--probe", default="runs/digits-probe")
    ap.add_argument("--real-train", default="data/digits/mnist/dev", help="the ceiling classifier's labelled real set")
    ap.add_argument("--val", default="data/digits/mnist/val", help="errors are reported on it; never a test set")
    ap.add_argument("--idea", action="append", required=True, help="NAME or 'NAME: KEY=VALUE; KEY=VALUE'")
    ap.add_argument("--set", action="append", default=[], type=parse_override, help="KEY=VALUE for every idea")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--classifier-seeds", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=20_000)
    ap.add_argument("--real-images", type=int, default=50_000, help="real pool images D learns from")
    ap.add_argument("--val-images", type=int, default=10_000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--procs", type=int, default=1, help="runs side by side, each its own process")
    ap.add_argument("--budget-s", type=float, default=float("inf"), help="start no run after this many seconds")
    ap.add_argument("--quick", action="store_true", help="a few steps and small sets: checks the script, no figures")
    ap.add_argument("--json", type=Path, help="rows appended as they finish; the table beside it (.md)")
    args = ap.parse_args()
    if args.quick:
        args.set = list(QUICK.items()) + args.set
        args.train_images, args.real_images, args.val_images, args.classifier_seeds = 512, 512, 256, 1
    cfg = load_config(args.config, dict(args.set))
    shards.refuse_test_set("--val", args.val, cfg.data.s3, "is never screened on: use val")
    shards.refuse_test_set("--real-train", args.real_train, cfg.data.s3, "is never trained on: use dev")
    ideas = [parse_idea(text) for text in args.idea]
    for _, overrides in ideas:  # a bad override fails here, before any run
        load_config(args.config, {**dict(args.set), **overrides})
    deadline = time.time() + args.budget_s
    jobs = [(args, name, overrides, seed, deadline) for seed in args.seeds for name, overrides in ideas]
    print(f"screen: {len(ideas)} ideas x seeds {args.seeds} on {args.device}, {args.procs} processes", flush=True)
    rows: list[dict] = []
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    out = args.json.open("a") if args.json else None
    with torch.multiprocessing.get_context("spawn").Pool(args.procs) as pool:
        raw = pool.apply_async(raw_scores, (args,))
        for row in pool.imap(run_job, jobs):
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
        raw = raw.get()
    summary = table([r for r in rows if "skipped" not in r], raw)
    print(summary, flush=True)
    if args.json:
        args.json.with_suffix(".md").write_text(summary + "\n")
    if any("error" in r for r in rows):
        sys.exit(1)


def raw_scores(args) -> dict:
    """The protocol on the raw synthetic images: the row every idea is read against."""
    s = _setup(args)
    return val_scores(s["sets"].syn_x, s["sets"], s["recipe"], args.classifier_seeds, s["ceiling"], s["device"])


if __name__ == "__main__":
    try:
        main()
    except SimganError as e:
        sys.exit(f"screen: {e}")

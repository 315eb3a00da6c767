"""SimGAN training on Ray Train (paper, Algorithm 1), data parallel over N workers.

`train_func(config)` runs on every worker; `fit(cfg)` (driver) builds the TorchTrainer.

The schedule is a table of phases; one *step* runs every update listed for its phase once:
    pretrain_refiner        R on self-regularization only       x pretrain_refiner_steps
    pretrain_discriminator  D                                   x pretrain_discriminator_steps
    adversarial             K_g R updates, then K_d D updates   x steps
Every update draws fresh mini-batches of `batch_size` per worker.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import resource
import socket
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from simgan_ray import checkpoints, data, storage, viz
from simgan_ray.config import GuardConfig, ScheduleConfig, TrainConfig, dump_config
from simgan_ray.errors import SimganError
from simgan_ray.gan import (
    Gan,
    discriminator_update,
    distributed,
    ema_beta,
    ema_update,
    lr_scale,
    make_gan,
    refiner_update,
    set_lrs,
    unwrap,
)
from simgan_ray.history import ImageHistory
from simgan_ray.networks import LocalDiscriminator, Refiner
from simgan_ray.runtime import check_resources, ensure_ray

# Environment of the training workers. glibc malloc hands large freed blocks (activations, gradients:
# MBs each) straight back to the kernel (munmap / heap trim), so every step pays page faults to get
# them again: measured on the digits model, ~2-4 million minor faults per 150 steps and 8% of the
# step time in a bare process. Keeping freed memory in the heap up to 1 GiB (and serving blocks up
# to 32 MiB, glibc's maximum, from it) stops that: 470 -> 510 images/s side by side, 2 faults.
# The cost is a worker's RSS staying at its peak working set.
WORKER_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(64 << 20),
}


# Ray Train (2.60: v2/_internal/constants.py) lists a run's committed checkpoints in this file and
# resumes from it; a checkpoint uploaded but not yet committed is not in it and is not resumed.
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"


@dataclass(frozen=True)
class Phase:
    name: str
    updates: tuple[tuple[str, int], ...]  # (update kind, repeats) in order


def phase_table(s: ScheduleConfig) -> list[tuple[Phase, int]]:
    return [
        (Phase("pretrain_refiner", (("refiner_selfreg", 1),)), s.pretrain_refiner_steps),
        (Phase("pretrain_discriminator", (("discriminator", 1),)), s.pretrain_discriminator_steps),
        (Phase("adversarial", (("refiner", s.k_g), ("discriminator", s.k_d))), s.steps),
    ]


def phase_at(step: int, table: list[tuple[Phase, int]]) -> Phase:
    """The phase that 0-based global `step` belongs to."""
    for phase, length in table:
        if step < length:
            return phase
        step -= length
    raise IndexError("step past the end of the schedule")


class CollapseGuard:
    """cfg.guard: rolls the GAN back to its last healthy report when the probe (rank 0) says the
    refiner has destroyed the labels. Every rank keeps the same in-memory snapshot of R, D and both
    optimizers, and its own history shard, taken at each report that passed."""

    def __init__(self, cfg: GuardConfig, loud: bool = True) -> None:
        self.cfg = cfg
        self.loud = loud  # print what it does (rank 0 only, not once per rank)
        self.rollbacks = 0  # so far in this run, restored on resume: they scale the learning rates
        self.saved: tuple[int, int, dict] | None = None  # (step, metric reports kept, states)

    @property
    def enabled(self) -> bool:
        return self.cfg.min_label_acc is not None

    @property
    def lr_factor(self) -> float:
        return self.cfg.lr_factor**self.rollbacks

    def snapshot(self, gan: Gan, step: int, reports: int) -> None:
        if not self.enabled:
            return
        states = {name: copy.deepcopy(obj.state_dict()) for name, obj in self._parts(gan)}
        self.saved = (step, reports, states)

    def collapsed(self, metrics: dict, phase: Phase, device: torch.device) -> bool:
        """Rank 0's verdict (only it runs the probe), the same on every rank."""
        if not self.enabled or phase.name != "adversarial":
            return False
        _, acc = self._watched(metrics)
        flag = torch.tensor([float(acc is not None and acc < self.cfg.min_label_acc)], device=device)
        if distributed():
            torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def rollback(self, gan: Gan, step: int, metrics: dict) -> tuple[int, int]:
        """Restore the snapshot; -> (its step, metric reports to keep). Raises past max_rollbacks."""
        key, acc = self._watched(metrics)
        acc = float("nan") if acc is None else acc
        if self.rollbacks >= self.cfg.max_rollbacks or self.saved is None:
            raise SimganError(
                f"step {step}: the refiner collapsed ({key} {acc:.3f} < guard.min_label_acc "
                f"{self.cfg.min_label_acc}) after {self.rollbacks} rollback(s), guard.max_rollbacks is "
                f"{self.cfg.max_rollbacks}: lower the learning rates or raise schedule.warmup_steps")
        saved_step, reports, states = self.saved
        for name, obj in self._parts(gan):
            obj.load_state_dict(copy.deepcopy(states[name]))
        self.rollbacks += 1
        if self.loud:
            print(f"step {step}: refiner collapsed ({key} {acc:.3f} < {self.cfg.min_label_acc}); "
                  f"rolled back to step {saved_step}, learning rates x{self.lr_factor:.3g} (rollback "
                  f"{self.rollbacks} of at most {self.cfg.max_rollbacks})")
        return saved_step, reports

    @staticmethod
    def _watched(metrics: dict) -> tuple[str, float | None]:
        """(key, value) of the label accuracy the guard watches: R's own when the run keeps a weight
        average (the average lags a collapse), else the exported refiner's. None off rank 0."""
        key = "probe_r_label_acc" if "probe_r_label_acc" in metrics else "probe_label_acc"
        return key, metrics.get(key)

    @staticmethod
    def _parts(gan: Gan):
        parts = [("refiner", unwrap(gan.refiner)), ("discriminator", unwrap(gan.discriminator)),
                 ("opt_r", gan.opt_r), ("opt_d", gan.opt_d), ("history", gan.history)]
        return parts + ([("ema", gan.ema)] if gan.ema is not None else [])


class Stopwatch:
    """Seconds spent inside the wrapped iterators' next(): the loop waiting for its input."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, batches):
        while True:
            start = time.perf_counter()
            batch = next(batches)
            self.seconds += time.perf_counter() - start
            yield batch

    def lap(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class MetricWindow:
    """Averages scalar metrics over a report window and over all ranks."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.images = 0
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def add(self, values: dict[str, torch.Tensor], images: int) -> None:
        for k, v in values.items():
            self.sums[k] += float(v)
            self.counts[k] += 1
        self.images += images

    def reduce(self, device: torch.device) -> dict[str, float]:
        keys = sorted(self.sums)  # every rank runs the same phases, so the same keys
        local = [self.sums[k] / self.counts[k] for k in keys]
        total = torch.tensor([*local, self.images / max(self.elapsed(), 1e-9)], dtype=torch.float64, device=device)
        # Peak resident memory of this worker process, MiB (Linux reports ru_maxrss in KiB).
        peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024], dtype=torch.float64,
                            device=device)
        world = 1
        if distributed():
            world = torch.distributed.get_world_size()
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        vals = total.tolist()
        out = {k: v / world for k, v in zip(keys, vals[:-1], strict=True)}
        out["images_per_s"] = vals[-1]  # summed over ranks: whole-job throughput
        out["worker_peak_rss_mb"] = peak.item()  # max over ranks
        return out


def _cycle(shard, batch_size: int, shuffle_buffer: int, device: torch.device, fetch: int = 16):
    """Endless (b, C, H, W) float batches from this rank's shard; a new epoch when exhausted.

    Ray Data hands over `fetch` batches at a time and they are sliced here: its cost per handed
    batch is fixed (tens of ms through the streaming split on a loaded machine), which a small
    batch of small images would pay at every update. A pass's remainder carries over to the next."""
    carry = None
    while True:
        for batch in shard.iter_torch_batches(
            batch_size=batch_size * fetch, drop_last=False, device=device,
            local_shuffle_buffer_size=shuffle_buffer or None,
        ):
            images = batch["image"] if carry is None else torch.cat([carry, batch["image"]])
            full = len(images) // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield data.unit_range(images[start : start + batch_size])
            carry = images[full:] if full < len(images) else None


def train_func(loop_config: dict) -> None:
    """Ray Train worker loop. loop_config: {"config": TrainConfig.to_dict(), "image_shape": [C, H, W],
    "start_from": a ray.train.Checkpoint of another run to start from, or None}."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = TrainConfig.model_validate(loop_config["config"])
    image_shape = list(loop_config["image_shape"])
    from ray.train.v2._internal.execution import context as train_context

    # One line per report is ours. Train V2 also logs every report (its metrics dict, per rank) at
    # INFO, under a logger named by its source file's path rather than "ray.train".
    for name in ("ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if not cfg.run.use_gpu:
        torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)

    gan = make_gan(cfg, ImageHistory(cfg.history_size // world, seed=cfg.seed * 100_003 + rank),
                   ray.train.torch.prepare_model)
    refiner, discriminator = gan.refiner, gan.discriminator
    torch.manual_seed(cfg.seed * 100_003 + rank)  # per-rank stream for anything random later

    step, metrics_log, guard = 0, [], CollapseGuard(cfg.guard, loud=rank == 0)
    # This run's own latest checkpoint (resume, or a restart after a worker failure) comes first.
    checkpoint = ray.train.get_checkpoint() or loop_config["start_from"]
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = checkpoints.load_train_state(Path(d))
            unwrap(refiner).load_state_dict(state.refiner)
            unwrap(discriminator).load_state_dict(state.discriminator)
            if gan.ema is not None:
                # A checkpoint without an average (written with ema_half_life 0) starts it at R.
                gan.ema.load_state_dict(state.refiner_ema or state.refiner)
            gan.opt_r.load_state_dict(state.optimizer_r)
            gan.opt_d.load_state_dict(state.optimizer_d)
            checkpoints.load_history(Path(d), rank, world, gan.history)
            step, metrics_log, guard.rollbacks = state.step, state.metrics, state.rollbacks
        print(f"[rank {rank}] resumed at step {step} with {len(gan.history)} history images")

    _record_placement(cfg, rank, device)
    buffer = cfg.data.local_shuffle_buffer
    probe = _load_probe(cfg) if rank == 0 and cfg.probe.uri else None
    waiting = Stopwatch()
    synthetic = waiting.wrap(_cycle(ray.train.get_dataset_shard("synthetic"), cfg.batch_size, buffer, device))
    real = waiting.wrap(_cycle(ray.train.get_dataset_shard("real"), cfg.batch_size, buffer, device))
    table = phase_table(cfg.schedule)
    total = cfg.schedule.total_steps
    b = cfg.batch_size
    window = MetricWindow()
    guard.snapshot(gan, step, len(metrics_log))
    while step < total:
        phase = phase_at(step, table)
        # From the config at every step, never from a checkpoint: a resumed run may change them
        # (`--resume --set optimizer_r.lr=...`, or PBT restarting a trial with mutated values).
        set_lrs(gan, cfg, lr_scale(step, cfg.schedule) * guard.lr_factor)
        for kind, repeats in phase.updates:
            for _ in range(repeats):
                if kind == "discriminator":
                    window.add(discriminator_update(gan, next(synthetic), next(real)), 2 * b)
                else:
                    window.add(refiner_update(gan, next(synthetic), kind == "refiner"), b)
        ema_update(gan, ema_beta(step, cfg.schedule))
        step += 1
        save = step % cfg.run.checkpoint_every == 0 or step == total
        if not (save or step % cfg.run.report_every == 0):
            continue
        # Fraction of the window's wall time this rank waited for Ray Data: near 0 = compute bound.
        window.add({"input_wait_frac": waiting.lap() / max(window.elapsed(), 1e-9)}, 0)
        metrics = {"step": step, "phase": phase.name, **window.reduce(device)}
        if probe is not None:
            from simgan_ray.refine import refine_images

            net, images, labels = probe
            metrics.update(net.score(refine_images(gan.exported, images), labels))
            if gan.ema is not None:  # R's last iterate too: side by side with its average
                scores = net.score(refine_images(unwrap(refiner), images), labels)
                metrics.update({f"probe_r_{k.removeprefix('probe_')}": v for k, v in scores.items()})
        _check_finite(metrics)
        window = MetricWindow()
        if guard.collapsed(metrics, phase, device):
            step, kept = guard.rollback(gan, step, metrics)
            del metrics_log[kept:]
            continue
        if guard.enabled:
            metrics["rollbacks"] = guard.rollbacks
        if rank == 0:
            metrics_log.append(metrics)
            print(_format_metrics(metrics, total))
        guard.snapshot(gan, step, len(metrics_log))
        if save:
            with tempfile.TemporaryDirectory() as tmp:
                _save(Path(tmp), rank, step, gan, metrics_log, cfg, image_shape, guard.rollbacks)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def _record_placement(cfg: TrainConfig, rank: int, device: torch.device) -> None:
    """Where each rank runs (Ray node id, host, device, torch threads), printed and written by rank 0 to
    <run>/workers.json: on a cluster, the first thing to check when throughput or NCCL looks off."""
    import ray

    mine = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "device": str(device), "torch_threads": torch.get_num_threads()}
    everyone = [mine]
    if distributed():
        everyone = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, mine)
    if rank == 0:
        print("workers: " + "; ".join(f"rank {w['rank']} on {w['host']} node {w['node_id'][:8]} ({w['device']}, "
                                      f"{w['torch_threads']} threads)" for w in everyone))
        storage.write_bytes(storage.join(run_uri(cfg), "workers.json"), json.dumps(everyone, indent=1).encode(),
                            cfg.data.s3)


def _load_probe(cfg: TrainConfig):
    """(probe, uint8 synthetic images (n, C, H, W), their class labels) for the real-data score."""
    from simgan_ray.evaluate import load_probe, load_set

    probe = load_probe(cfg.probe.uri, cfg.data.s3)
    images, labels = load_set(cfg.data.synthetic, cfg.probe.images, cfg.data.s3, probe.meta["label_key"])
    return probe, images, labels


def _save(directory: Path, rank: int, step: int, gan: Gan, metrics_log: list, cfg: TrainConfig,
          image_shape: list[int], rollbacks: int) -> None:
    state = None
    if rank == 0:
        state = checkpoints.TrainState(
            step=step,
            refiner=unwrap(gan.refiner).state_dict(),
            refiner_ema=gan.ema.state_dict() if gan.ema is not None else None,
            discriminator=unwrap(gan.discriminator).state_dict(),
            optimizer_r=gan.opt_r.state_dict(),
            optimizer_d=gan.opt_d.state_dict(),
            metrics=metrics_log,
            rollbacks=rollbacks,
        )
        checkpoints.write_export(
            directory / checkpoints.EXPORT_DIR,
            gan.exported,
            {"step": step, "run": cfg.run.name, "image_shape": image_shape, "pixel_range": [-1.0, 1.0],
             "ema_half_life": cfg.schedule.ema_half_life},
        )
    checkpoints.save_train_state(directory, rank, state, gan.history, cfg.to_dict())


def _check_finite(metrics: dict) -> None:
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"step {metrics['step']}: non-finite {', '.join(bad)}; stopping before checkpointing")


def _format_metrics(m: dict, total: int) -> str:
    parts = [f"step {m['step']}/{total} [{m['phase']}]"]
    parts += [f"{k}={v:.4g}" for k, v in m.items() if k not in ("step", "phase")]
    return " ".join(parts)


@dataclass
class FitResult:
    run_uri: str
    step: int
    metrics: list[dict]
    export_uri: str
    skipped: list[str]  # "<shard>: image <id>: <why>" for each corrupt image skipped


def _check_history_memory(cfg: TrainConfig, shape: list[int]) -> None:
    """Refuse a history buffer that cannot fit: each rank keeps history_size / num_workers images
    as float32 on the CPU, allocated at its first discriminator step (minutes into the run)."""
    per_rank = cfg.history_size // cfg.run.num_workers * math.prod(shape) * 4
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if per_rank > memory / 2:
        raise SimganError(f"history_size: {cfg.history_size} images of {'x'.join(map(str, shape))} take "
                          f"{per_rank / 2**30:.3g} GiB of float32 per worker, more than half of this machine's "
                          f"{memory / 2**30:.0f} GiB: lower history_size")


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """What one Ray Train worker of this run holds."""
    return {"CPU": cfg.run.cpus_per_worker, "GPU": 1.0 if cfg.run.use_gpu else 0.0}


def run_uri(cfg: TrainConfig) -> str:
    return storage.join(storage.normalize(cfg.run.storage), cfg.run.name)


def fit(cfg: TrainConfig, resume: bool | Literal["auto"] = False, callbacks: list | None = None,
        resume_from=None) -> FitResult:
    """Driver: validate inputs, run the TorchTrainer, then write export, curves and samples beside
    the run. Needs a running Ray (local or a cluster's). `resume` continues this run from its own
    latest checkpoint (True: the run must exist; "auto": resume it when it has a checkpoint, else
    start it, so that one command line serves a first attempt and every retry); `resume_from` (a
    ray.train.Checkpoint of another run, e.g. the one PBT clones) starts this new run from that state."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    s3 = cfg.data.s3
    uri = run_uri(cfg)
    for field, prefix in (("data.synthetic", cfg.data.synthetic), ("data.real", cfg.data.real)):
        if storage.overlap(uri, prefix):
            raise SimganError(f"run {uri} overlaps {field} {prefix}: a run never writes into its input")
    started = storage.exists(storage.join(uri, "config.yaml"), s3)
    checkpointed = started and storage.exists(storage.join(uri, TRAIN_SNAPSHOT), s3)
    if started and not resume:
        raise SimganError(f"{uri} already holds a run: continue it with --resume, or pick another run.name" if
                          checkpointed else f"{uri} holds a run that stopped before its first checkpoint: --resume "
                          "starts it over from step 0 with the config given now, or pick another run.name")
    if resume is True and not started:
        raise SimganError(f"{uri}: no run to resume (config.yaml missing)")
    if resume and started and not checkpointed:
        print(f"note: {uri} has no checkpoint (the run stopped before its first one): starting it over from step 0 "
              "with the config given now", file=sys.stderr, flush=True)
    syn, real = data.check_training_sets(
        cfg.data.synthetic, cfg.data.real, cfg.refiner.channels,
        cfg.batch_size * cfg.run.num_workers, s3,
    )
    _check_history_memory(cfg, syn.shape)
    try:
        LocalDiscriminator(cfg.discriminator).output_shape(*syn.shape[1:])
    except ValueError as e:
        raise SimganError(str(e)) from None
    if cfg.probe.uri:
        from simgan_ray.evaluate import load_probe

        load_probe(cfg.probe.uri, s3)  # refuses a missing or foreign probe before any Ray work

    # Workers' print() goes straight to the driver's console instead of twice via Train's logger.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    ensure_ray(cfg.run.num_workers * cfg.run.cpus_per_worker)
    check_resources(worker_resources(cfg), cfg.run.num_workers, "run.num_workers, run.cpus_per_worker, run.use_gpu")
    storage.make_dirs(uri, s3)
    storage.write_bytes(storage.join(uri, "config.yaml"), dump_config(cfg).encode(), s3)
    fs, path = storage.resolve(storage.normalize(cfg.run.storage), s3)
    ledger = data.new_skip_ledger()
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"config": cfg.to_dict(), "image_shape": syn.shape, "start_from": resume_from},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=cfg.run.use_gpu,
            resources_per_worker=worker_resources(cfg),
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            callbacks=callbacks,
            worker_runtime_env={"env_vars": WORKER_ENV},
        ),
        datasets={
            name: data.image_dataset(prefix, manifest, s3, shuffle_files=cfg.data.shuffle_files,
                                     seed=cfg.seed, strict=cfg.data.strict, ledger=ledger)
            for name, prefix, manifest in (("synthetic", cfg.data.synthetic, syn), ("real", cfg.data.real, real))
        },
    )
    try:
        result = trainer.fit()
    except SystemExit:
        # Ray Train's SIGINT handler aborts the run, then exits: the run stopped at its last checkpoint.
        raise KeyboardInterrupt from None
    skipped = ray.get(ledger.report.remote())
    if skipped:
        storage.write_bytes(storage.join(uri, "skipped.txt"), "".join(f"{x}\n" for x in skipped).encode(), s3)
    if result.checkpoint is None:
        raise SimganError(f"{uri}: training produced no checkpoint")
    with result.checkpoint.as_directory() as d:
        d = Path(d)
        state_step = json.loads((d / checkpoints.EXPORT_DIR / "refiner.json").read_text())["step"]
        metrics = json.loads((d / "metrics.json").read_text())
        export_uri = storage.join(uri, checkpoints.EXPORT_DIR)
        storage.copy_dir_to(str(d / checkpoints.EXPORT_DIR), export_uri, s3)
        refiner, _ = checkpoints.load_export(str(d / checkpoints.EXPORT_DIR))
    _write_pictures(uri, cfg, syn, real, refiner, metrics)
    jsonl = "".join(json.dumps(m) + "\n" for m in metrics)
    storage.write_bytes(storage.join(uri, "metrics.jsonl"), jsonl.encode(), s3)
    return FitResult(run_uri=uri, step=state_step, metrics=metrics, export_uri=export_uri, skipped=skipped)


def _write_pictures(uri: str, cfg: TrainConfig, syn, real, refiner: Refiner, metrics: list[dict]) -> None:
    s3, n = cfg.data.s3, 16
    _, synthetic, _ = data.head_images(cfg.data.synthetic, syn, n, s3)
    _, real_images, _ = data.head_images(cfg.data.real, real, n, s3)
    with torch.no_grad():
        refined = refiner(torch.from_numpy(data.to_unit_range(synthetic))).numpy()
    change = np.abs(refined - data.to_unit_range(synthetic))  # in [0, 2]
    rows = [
        ("synthetic", synthetic),
        ("refined", data.to_uint8(refined)),
        ("|R(x) - x|", data.to_uint8(change - 1.0)),
        ("real", real_images),
    ]
    storage.write_bytes(storage.join(uri, "samples.png"), viz.image_grid(rows), s3)
    if metrics:
        storage.write_bytes(storage.join(uri, "curves.png"), viz.plot_curves(metrics), s3)

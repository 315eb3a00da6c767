"""The Ray Train worker loop of SimGAN training (paper, Algorithm 1), data parallel over N workers:
`train_func(config)` runs on every worker (the driver, `train.fit`, builds the TorchTrainer).

Each worker builds the GAN (gan.py), restores a checkpoint when there is one, then runs the phase
table step by step on batches from its Ray Data shards, reporting averaged metrics (metrics.py),
scoring the refiner with the probe (rank 0), guarding against collapse (guard.py) and checkpointing:
R, D, both optimizers and R's average from rank 0, its own history shard from every rank.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from simgan_ray.measures.probe import load_probe
from simgan_ray.model.export import EXPORT_DIR, write_export
from simgan_ray.model.history import ImageHistory
from simgan_ray.runtime.rayinternals import quiet_train_reports
from simgan_ray.sets import data
from simgan_ray.sets.data import load_set
from simgan_ray.sets.window import ShuffleWindow
from simgan_ray.storage.ownership import Output
from simgan_ray.training import checkpoints
from simgan_ray.training.config import TrainConfig
from simgan_ray.training.consistency import load_label_net
from simgan_ray.training.ddp import distributed, unwrap
from simgan_ray.training.gan import Gan, Phase, images_per_rank, make_gan, phase_table, run_step
from simgan_ray.training.guard import CollapseGuard
from simgan_ray.training.metrics import MetricWindow, Stopwatch, check_finite, score_gan
from simgan_ray.training.tracking import RunTracker

FETCH = 16  # batches a worker takes from Ray Data at a time (`batches` says why)


def images_to_read(cfg: TrainConfig) -> dict[str, int]:
    """{"synthetic": n, "real": n}: the images all workers together take from each stream over the
    run: what they draw, plus what each worker's shuffle window holds and its last handout's rest."""
    extra = cfg.data.local_shuffle_buffer + FETCH * cfg.batch_size
    drawn = images_per_rank(phase_table(cfg.schedule), cfg.batch_size)
    return {stream: cfg.run.num_workers * (n + extra) for stream, n in drawn.items()}


def batches(shard, batch_size: int, window: int, device: torch.device, seed: int, fetch: int = FETCH):
    """Endless (b, C, H, W) float batches from this rank's shard, pass after pass, drawn through a
    shuffle window of `window` images seeded by `seed` (0: in the order read).

    Ray Data hands over `fetch` batches at a time and they are sliced here: its cost per handed
    batch is fixed, which a small batch of small images would pay at every update. On a GPU a
    handout is copied to pinned host memory on Ray Data's collate thread, so that its copy to the
    device runs without blocking (a copy from pageable memory waits for the transfer). One execution
    of the dataset reads the passes the whole run needs (`images_to_read`); should it end, the next
    starts. A remainder carries over."""
    mixer, carry = ShuffleWindow(window, seed), None
    while True:
        for batch in shard.iter_torch_batches(batch_size=batch_size * fetch, drop_last=False, device=device,
                                              pin_memory=device.type == "cuda"):
            images = mixer.push(batch["image"])
            images = images if carry is None else torch.cat([carry, images])
            full = len(images) // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield data.unit_range(images[start : start + batch_size])
            carry = images[full:] if full < len(images) else None


@dataclass
class RunState:
    """What a run carries from report to report and through checkpoints (rank 0's; the others keep
    `step` only): the step done, every report so far, and probe.export "best" ({"step", "probe_fd",
    "refiner"} of the lowest-probe_fd report, or None)."""

    step: int = 0
    metrics_log: list = field(default_factory=list)
    best: dict | None = None


def train_func(loop_config: dict) -> None:
    """Ray Train worker loop. loop_config: {"config": TrainConfig.to_dict(), "image_shape": [C, H, W],
    "start_from": a ray.train.Checkpoint of another run to start from, or None, "output": the run
    folder's claim (ownership.Output), which rank 0's files go through}. The steps: build the GAN,
    resume, open the inputs, then run the phase table, reporting (and checkpointing) as configured."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(loop_config["config"])
    out = loop_config["output"]
    quiet_train_reports()  # one line per report is ours
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if not cfg.run.gpus_per_worker:
        torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    gan = _build(cfg, rank, world, device)
    guard = CollapseGuard(cfg.guard, loud=rank == 0)
    # This run's own latest checkpoint (resume, or a restart after a worker failure) comes first.
    run = _resume(gan, guard, ray.train.get_checkpoint() or loop_config["start_from"], rank, world)
    _record_placement(out, rank, device)
    probe, tracker = _rank0_views(cfg, out, run.step) if rank == 0 else (None, None)
    waiting = Stopwatch()
    seed = cfg.seed * 100_003 + rank * 1009
    buffer = cfg.data.local_shuffle_buffer
    synthetic = waiting.wrap(batches(ray.train.get_dataset_shard("synthetic"), cfg.batch_size, buffer, device, seed))
    real = waiting.wrap(batches(ray.train.get_dataset_shard("real"), cfg.batch_size, buffer, device, seed + 1))
    table, total = phase_table(cfg.schedule), cfg.schedule.total_steps
    window = MetricWindow()
    guard.snapshot(gan, run.step, len(run.metrics_log))
    while run.step < total:
        phase = run_step(gan, cfg, table, run.step, synthetic, real, guard.lr_factor, seed, window.add)
        run.step += 1
        save = run.step % cfg.run.checkpoint_every == 0 or run.step == total
        if not (save or run.step % cfg.run.report_every == 0):
            continue
        # Fraction of the window's wall time this rank waited for Ray Data: near 0 = compute bound.
        window.add({"input_wait_frac": waiting.lap() / max(window.elapsed(), 1e-9)}, 0)
        metrics = _report(gan, cfg, guard, run, phase, window.reduce(device), probe, tracker, rank, device)
        window = MetricWindow()
        if metrics is not None:
            _publish(gan, cfg, guard, run, metrics, tracker, out, rank, list(loop_config["image_shape"]), save)
    if tracker is not None:
        tracker.close()


def _build(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> Gan:
    """The GAN on this rank: the same initial weights on every rank (DDP also broadcasts rank 0's),
    this rank's shard of the history, then a per-rank random stream for anything random later."""
    import ray.train.torch

    torch.manual_seed(cfg.seed)
    label_net = load_label_net(cfg).to(device) if cfg.consistency.weight else None
    gan = make_gan(cfg, ImageHistory(cfg.history_size // world, seed=cfg.seed * 100_003 + rank),
                   ray.train.torch.prepare_model, label_net)
    torch.manual_seed(cfg.seed * 100_003 + rank)
    return gan


def _resume(gan: Gan, guard: CollapseGuard, checkpoint, rank: int, world: int) -> RunState:
    """The run's state at `checkpoint` (a ray.train.Checkpoint, or None: step 0), loaded into `gan`
    (weights, R's average, optimizers, this rank's history shard) and `guard` (its rollbacks)."""
    if checkpoint is None:
        return RunState()
    with checkpoint.as_directory() as d:
        state = checkpoints.load_train_state(Path(d))
        unwrap(gan.refiner).load_state_dict(state.refiner)
        unwrap(gan.discriminator).load_state_dict(state.discriminator)
        if gan.ema is not None:
            # A checkpoint without an average (written with ema_half_life 0) starts it at R.
            gan.ema.load_state_dict(state.refiner_ema or state.refiner)
        gan.opt_r.load_state_dict(state.optimizer_r)
        gan.opt_d.load_state_dict(state.optimizer_d)
        checkpoints.load_history(Path(d), rank, world, gan.history)
        guard.rollbacks = state.rollbacks
    print(f"[rank {rank}] resumed at step {state.step} with {len(gan.history)} history images")
    return RunState(step=state.step, metrics_log=state.metrics, best=state.best)


def _report(gan: Gan, cfg: TrainConfig, guard: CollapseGuard, run: RunState, phase: Phase, averaged: dict,
            probe: tuple | None, tracker: RunTracker | None, rank: int, device: torch.device) -> dict | None:
    """One report's metrics: the window's averages over ranks, the probe's scores (rank 0), checked
    finite. Where the guard sees a collapse it rolls the run back (run.step, the reports after the
    healthy one dropped) -> None; else the report, logged by rank 0."""
    metrics = {"step": run.step, "phase": phase.name, **averaged}
    if probe is not None:
        net, images, labels = probe
        metrics.update(score_gan(net, gan, images, labels))
    check_finite(metrics)
    if guard.collapsed(metrics, phase, device):
        run.step, kept = guard.rollback(gan, run.step, metrics)
        del run.metrics_log[kept:]
        return None
    if guard.enabled:
        metrics["rollbacks"] = guard.rollbacks
    if rank == 0:
        run.metrics_log.append(metrics)
        tracker.report(run.metrics_log)
        if cfg.probe.export == "best":
            run.best = checkpoints.keep_best(run.best, run.step, metrics["probe_fd"], gan.exported)
    guard.snapshot(gan, run.step, len(run.metrics_log))
    return metrics


def _publish(gan: Gan, cfg: TrainConfig, guard: CollapseGuard, run: RunState, metrics: dict,
             tracker: RunTracker | None, out: Output, rank: int, image_shape: list[int], save: bool) -> None:
    """Hand the report to Ray Train, with a checkpoint of every rank's state when `save`: Ray Train
    writes it into the run folder, so only while the run still holds it (`out.check`)."""
    import ray.train
    from ray.train import Checkpoint

    if not save:
        ray.train.report(metrics)
        return
    if tracker is not None:
        tracker.checkpoint(run.step, gan.exported)
    with tempfile.TemporaryDirectory() as tmp:
        _save(Path(tmp), gan, cfg, rank=rank, step=run.step, metrics_log=run.metrics_log,
              image_shape=image_shape, rollbacks=guard.rollbacks, best=run.best)
        out.check()
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def _record_placement(out: Output, rank: int, device: torch.device) -> None:
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
        out.write({"workers.json": json.dumps(everyone, indent=1).encode()})


def _rank0_views(cfg: TrainConfig, out: Output, step: int) -> tuple[tuple | None, RunTracker]:
    """Rank 0's two views of the run, from one read of the synthetic set's head: the probe's score
    ((probe, uint8 synthetic images (n, C, H, W), their class labels), or None without a probe) and
    the live record (metrics.jsonl, TensorBoard, sample grids), flushed at every report, so a run
    that fails leaves it as of its last report."""
    probe = load_probe(cfg.probe.uri, cfg.data.s3) if cfg.probe.uri else None
    n = max(RunTracker.GRID, cfg.probe.images if probe else 0)
    images, labels = load_set(cfg.data.synthetic, n, cfg.data.s3, probe.meta.label_key if probe else None)
    scored = (probe, images[: cfg.probe.images], labels[: cfg.probe.images]) if probe else None
    return scored, RunTracker(cfg, out, images[: RunTracker.GRID], step)


def _save(directory: Path, gan: Gan, cfg: TrainConfig, *, rank: int, step: int, metrics_log: list,
          image_shape: list[int], rollbacks: int, best: dict | None) -> None:
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
            best=best,
        )
        # "step": the run's step at this checkpoint; "weights_step": the step the exported weights are from.
        meta = {"step": step, "weights_step": step, "run": cfg.run.name, "image_shape": image_shape,
                "pixel_range": [-1.0, 1.0], "ema_half_life": cfg.schedule.ema_half_life, "export": cfg.probe.export}
        if best is not None:
            meta.update(weights_step=best["step"], weights_probe_fd=best["probe_fd"])
        write_export(directory / EXPORT_DIR, gan.exported, meta,
                                 best["refiner"] if best is not None else None)
    checkpoints.save_train_state(directory, rank, state, gan.history, cfg.to_dict())

"""The Ray Train worker loop of SimGAN training (paper, Algorithm 1), data parallel over N workers:
`train_func(config)` runs on every worker (the driver, `train.fit`, builds the TorchTrainer).

Each worker builds the GAN (gan.py), restores a checkpoint when there is one, then runs the phase
table step by step on batches from its Ray Data shards, reporting averaged metrics (metrics.py),
scoring the refiner with the probe (rank 0), guarding against collapse (guard.py) and checkpointing:
R, D, both optimizers and R's average from rank 0, its own history shard from every rank.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import tempfile
from pathlib import Path

import torch

from simgan_ray import checkpoints, data
from simgan_ray.config import TrainConfig
from simgan_ray.consistency import load_label_net
from simgan_ray.data import load_set
from simgan_ray.gan import Gan, distributed, make_gan, phase_table, run_step, unwrap
from simgan_ray.guard import CollapseGuard
from simgan_ray.history import ImageHistory
from simgan_ray.metrics import MetricWindow, Stopwatch, check_finite
from simgan_ray.ownership import Output
from simgan_ray.probe import load_probe
from simgan_ray.rayinternals import quiet_train_reports
from simgan_ray.tracking import RunTracker


def _cycle(shard, batch_size: int, shuffle_buffer: int, device: torch.device, seed: int, fetch: int = 16):
    """Endless (b, C, H, W) float batches from this rank's shard; a new epoch when exhausted; the
    local shuffle of pass p seeded by seed + p.

    Ray Data hands over `fetch` batches at a time and they are sliced here: its cost per handed
    batch is fixed (tens of ms through the streaming split on a loaded machine), which a small
    batch of small images would pay at every update. A pass's remainder carries over to the next."""
    carry = None
    for p in itertools.count():
        for batch in shard.iter_torch_batches(
            batch_size=batch_size * fetch, drop_last=False, device=device,
            local_shuffle_buffer_size=shuffle_buffer or None, local_shuffle_seed=(seed + p) % 2**32,
        ):
            images = batch["image"] if carry is None else torch.cat([carry, batch["image"]])
            full = len(images) // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield data.unit_range(images[start : start + batch_size])
            carry = images[full:] if full < len(images) else None


def train_func(loop_config: dict) -> None:
    """Ray Train worker loop. loop_config: {"config": TrainConfig.to_dict(), "image_shape": [C, H, W],
    "start_from": a ray.train.Checkpoint of another run to start from, or None, "output": the run
    folder's claim (ownership.Output), which rank 0's files go through}."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = TrainConfig.model_validate(loop_config["config"])
    image_shape, out = list(loop_config["image_shape"]), loop_config["output"]
    quiet_train_reports()  # one line per report is ours
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if not cfg.run.gpus_per_worker:
        torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)

    label_net = load_label_net(cfg).to(device) if cfg.consistency.weight else None
    gan = make_gan(cfg, ImageHistory(cfg.history_size // world, seed=cfg.seed * 100_003 + rank),
                   ray.train.torch.prepare_model, label_net)
    refiner, discriminator = gan.refiner, gan.discriminator
    torch.manual_seed(cfg.seed * 100_003 + rank)  # per-rank stream for anything random later

    step, metrics_log, guard = 0, [], CollapseGuard(cfg.guard, loud=rank == 0)
    best = None  # probe.export "best", rank 0: {"step", "probe_fd", "refiner"} of the lowest-probe_fd report
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
            step, metrics_log, guard.rollbacks, best = state.step, state.metrics, state.rollbacks, state.best
        print(f"[rank {rank}] resumed at step {step} with {len(gan.history)} history images")

    _record_placement(out, rank, device)
    buffer = cfg.data.local_shuffle_buffer
    probe, tracker = _rank0_views(cfg, out, step) if rank == 0 else (None, None)
    waiting = Stopwatch()
    seed = cfg.seed * 100_003 + rank * 1009
    synthetic = waiting.wrap(_cycle(ray.train.get_dataset_shard("synthetic"), cfg.batch_size, buffer, device, seed))
    real = waiting.wrap(_cycle(ray.train.get_dataset_shard("real"), cfg.batch_size, buffer, device, seed + 1))
    table = phase_table(cfg.schedule)
    total = cfg.schedule.total_steps
    window = MetricWindow()
    guard.snapshot(gan, step, len(metrics_log))
    while step < total:
        phase = run_step(gan, cfg, table, step, synthetic, real, guard.lr_factor, seed, window.add)
        step += 1
        save = step % cfg.run.checkpoint_every == 0 or step == total
        if not (save or step % cfg.run.report_every == 0):
            continue
        # Fraction of the window's wall time this rank waited for Ray Data: near 0 = compute bound.
        window.add({"input_wait_frac": waiting.lap() / max(window.elapsed(), 1e-9)}, 0)
        metrics = {"step": step, "phase": phase.name, **window.reduce(device)}
        if probe is not None:
            net, images, labels = probe
            metrics.update(net.score_gan(gan, images, labels))
        check_finite(metrics)
        window = MetricWindow()
        if guard.collapsed(metrics, phase, device):
            step, kept = guard.rollback(gan, step, metrics)
            del metrics_log[kept:]
            continue
        if guard.enabled:
            metrics["rollbacks"] = guard.rollbacks
        if rank == 0:
            metrics_log.append(metrics)
            tracker.report(metrics_log)
            if cfg.probe.export == "best":
                best = checkpoints.keep_best(best, step, metrics["probe_fd"], gan.exported)
        guard.snapshot(gan, step, len(metrics_log))
        if save:
            if tracker is not None:
                tracker.checkpoint(step, gan.exported)
            with tempfile.TemporaryDirectory() as tmp:
                _save(Path(tmp), gan, cfg, rank=rank, step=step, metrics_log=metrics_log,
                      image_shape=image_shape, rollbacks=guard.rollbacks, best=best)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
    if tracker is not None:
        tracker.close()


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
        checkpoints.write_export(directory / checkpoints.EXPORT_DIR, gan.exported, meta,
                                 best["refiner"] if best is not None else None)
    checkpoints.save_train_state(directory, rank, state, gan.history, cfg.to_dict())

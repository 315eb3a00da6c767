"""Resume state: what a training checkpoint holds and how it is written, checked and read back.

Checkpoint directory (written by all ranks, merged by Ray Train into one directory):
    state.pt                 rank 0: step, R, R's weight average (schedule.ema_half_life), D, both
                             optimizers, guard rollbacks, the best report's weights (probe.export
                             "best") (tensors/ints)
    metrics.json             rank 0: every metric report so far (so a resume never loses or repeats one)
    config.json              rank 0: the resolved run config
    history-rank00000.pt     one per rank: its history-buffer shard and its torch RNG state
    export/                  rank 0: the export (simgan_ray.model.export), also copied to <run>/export at the end
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from simgan_ray import storage
from simgan_ray.common.errors import first_line
from simgan_ray.model.export import load_tensors
from simgan_ray.model.history import ImageHistory
from simgan_ray.storage import S3Options


def _history_file(rank: int) -> str:
    return f"history-rank{rank:05d}.pt"


@dataclass
class TrainState:
    step: int
    refiner: dict
    discriminator: dict
    optimizer_r: dict
    optimizer_d: dict
    metrics: list[dict]
    rollbacks: int = 0  # collapse-guard rollbacks so far (they scale the learning rates)
    refiner_ema: dict | None = None  # R's weight average; None: the run keeps none
    best: dict | None = None  # probe.export "best": {"step", "probe_fd", "refiner"} of the best report so far


def save_train_state(directory: Path, rank: int, state: TrainState | None, history: ImageHistory,
                     config: dict) -> None:
    """Rank 0 passes `state`; every rank writes its own history shard and RNG state."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"history": history.state_dict(), "torch_rng": torch.get_rng_state()},
        directory / _history_file(rank),
    )
    if state is None:
        return
    torch.save(
        {
            "step": state.step,
            "refiner": state.refiner,
            "discriminator": state.discriminator,
            "optimizer_r": state.optimizer_r,
            "optimizer_d": state.optimizer_d,
            "rollbacks": state.rollbacks,
            "refiner_ema": state.refiner_ema,
            "best": state.best,
        },
        directory / "state.pt",
    )
    (directory / "metrics.json").write_text(json.dumps(state.metrics))
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def damaged(uri: str, s3: S3Options) -> str | None:
    """Why the checkpoint folder `uri` cannot be resumed from (a file missing, cut short or not
    JSON), or None: state.pt and metrics.json must be there, every torch file a whole zip archive."""
    files = storage.list_files(uri, (), s3)
    for name in ("state.pt", "metrics.json"):
        if name not in files:
            return f"{name} missing"
    for name in files:
        data = storage.read_bytes(storage.join(uri, name), s3)
        try:
            if name.endswith(".pt"):
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    if archive.testzip() is not None:
                        return f"{name}: a damaged entry"
            elif name.endswith(".json"):
                json.loads(data)
        except (zipfile.BadZipFile, ValueError, EOFError) as e:
            return f"{name}: {first_line(e)}"
    return None


def load_train_state(directory: Path) -> TrainState:
    raw = load_tensors(directory / "state.pt")
    metrics = json.loads((directory / "metrics.json").read_text())
    return TrainState(metrics=metrics, **raw)


def load_history(directory: Path, rank: int, world_size: int, history: ImageHistory) -> None:
    """Restore this rank's history shard (and RNG). When the checkpoint was written by a
    different number of ranks, all saved images are pooled and dealt out again."""
    files = sorted(directory.glob("history-rank*.pt"))
    if len(files) == world_size:
        saved = load_tensors(directory / _history_file(rank))
        history.load_state_dict(saved["history"])
        torch.set_rng_state(saved["torch_rng"])
        return
    states = [load_tensors(f)["history"] for f in files]
    history.push(ImageHistory.reshard(states, rank, world_size))


def keep_best(best: dict | None, step: int, probe_fd: float, refiner: torch.nn.Module) -> dict:
    """probe.export "best": the record of the lowest-probe_fd report so far, `best` or this one,
    {"step", "probe_fd", "refiner": a CPU copy of its weights} (what write_export takes)."""
    if best is not None and probe_fd >= best["probe_fd"]:
        return best
    return {"step": step, "probe_fd": probe_fd,
            "refiner": {k: v.detach().cpu().clone() for k, v in refiner.state_dict().items()}}

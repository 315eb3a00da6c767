"""SimGAN training on Ray Train, the driver: `fit(cfg)` validates the inputs (data, history memory,
D's output on these images, the probe, the run directory), builds the TorchTrainer that runs
`worker.train_func` on N workers, then writes the export, curves and samples beside the run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.measures import viz
from simgan_ray.measures.probe import load_probe
from simgan_ray.model.export import EXPORT_DIR, load_export, refine_images, write_portable
from simgan_ray.model.networks import LocalDiscriminator, Refiner
from simgan_ray.runtime import rayinternals
from simgan_ray.runtime.rayinternals import TRAIN_SNAPSHOT
from simgan_ray.runtime.session import check_resources, ensure_ray
from simgan_ray.sets import data, shards
from simgan_ray.storage import ownership
from simgan_ray.storage.ownership import Output
from simgan_ray.training import checkpoints
from simgan_ray.training.config import TrainConfig, dump_config
from simgan_ray.training.consistency import ensure_label_net
from simgan_ray.training.worker import images_to_read, train_func

# Environment of the training workers. glibc malloc hands large freed blocks (activations, gradients:
# MBs each) straight back to the kernel (munmap / heap trim), so every step pays page faults to get
# them again. Keeping freed memory in the heap up to 1 GiB (and serving blocks up to 32 MiB, glibc's
# maximum, from it) stops that (benchmarks/RESULTS.md, train_overhead); the cost is a worker's RSS
# staying at its peak working set.
WORKER_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(64 << 20),
}

@dataclass
class FitResult:
    run_uri: str
    step: int
    metrics: list[dict]
    export_uri: str
    export_step: int  # the step the exported weights are from (probe.export "best": the best report's)
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


# CPUs a run needs beside its workers: Ray Data's read and decode tasks take 1 CPU each (its default),
# and with every CPU held by a worker none runs and the run waits forever.
DATA_CPUS = 1.0


# The fields a refusal for want of resources names.
RESOURCE_FIELDS = "run.num_workers, run.cpus_per_worker, run.gpus_per_worker"


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """What one Ray Train worker of this run holds."""
    return {"CPU": cfg.run.cpus_per_worker, "GPU": float(cfg.run.gpus_per_worker)}


@dataclass
class Preflight:
    """What `preflight` found: the run directory, whether it resumes from a checkpoint there, and
    the two image sets' manifests."""

    run_uri: str
    resumes: bool
    synthetic: shards.Manifest
    real: shards.Manifest
    claim: dict  # how `fit` claims the run directory (ownership.claim's options)
    snapshot: dict | None = None  # Ray Train's checkpoint list to resume from, where its newest were damaged
    resume_from: tuple[str, int | None] | None = None  # (checkpoint folder, its step) where it resumes


# The fields a checkpoint's weights are shaped by: a resumed run must keep them.
ARCHITECTURE = ("refiner", "discriminator")


def _check_resumed(uri: str, cfg: TrainConfig, allow_changes: bool) -> None:
    """Refuse to resume `uri` with other architecture fields than the run's config.yaml (its
    checkpoints' shapes), naming them, before any worker would fail loading the weights; and, unless
    `allow_changes`, with any other field changed but those in SAFE_TO_CHANGE."""
    saved = yaml.safe_load(storage.read_bytes(storage.join(uri, "config.yaml"), cfg.data.s3)) or {}
    now, defaults = cfg.to_dict(), TrainConfig().to_dict()
    # A field the run's config.yaml lacks (written before the field existed) had its default.
    was = {section: {**defaults[section], **(saved.get(section) or {})} for section in ARCHITECTURE}
    changed = [f"{section}.{key}: {was[section].get(key)!r} in the run, {value!r} now"
               for section in ARCHITECTURE for key, value in now[section].items()
               if was[section].get(key) != value]
    if changed:
        raise SimganError(f"{uri}: cannot resume with another architecture ({'; '.join(changed)}): its checkpoints "
                          "hold the run's; leave those fields as they were, or start a new run.name")
    changed = [f"{key}: {was!r} in the run, {now!r} now" for key, (was, now) in _changes(saved, cfg).items()
               if not key.startswith(SAFE_TO_CHANGE)]
    if changed and not allow_changes:
        raise SimganError(f"{uri}: resuming with other settings than the run's ({'; '.join(changed)}): pass "
                          "--allow-changes to resume with them anyway, or leave them as they were")


# Fields a resumed run may change freely: how long it runs, how often it reports and checkpoints,
# the learning rates (a hand-made decay), where its tracking goes (prefixes of dotted field names).
# Anything else (data, losses, history, workers, the seed, ...) changes what the checkpoint's state
# means: --allow-changes.
SAFE_TO_CHANGE = ("schedule.steps", "run.report_every", "run.checkpoint_every", "run.keep_checkpoints",
                  "run.max_failures", "run.portable_export", "run.storage", "run.name", "optimizer_r.lr",
                  "optimizer_d.lr", "tracking.")


def _changes(saved: dict, cfg: TrainConfig) -> dict[str, tuple]:
    """Dotted field -> (the run's value, the new one) for each field that differs (a field missing from
    the run's config.yaml had its default)."""
    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    was = {**flat(TrainConfig().to_dict()), **flat(saved)}
    return {k: (was.get(k), v) for k, v in flat(cfg.to_dict()).items() if was.get(k) != v}


def preflight(cfg: TrainConfig, resume: bool | Literal["auto"] = False, allow_changes: bool = False) -> Preflight:
    """Every check of `fit` that needs no Ray: the run directory (new, or a simgan-ray run to resume
    with the same architecture: `ownership`), the data sets (manifests and shard footers, shapes, a
    batch per worker), the history's memory, D's output on these images, the probe. Writes nothing;
    `train --dry-run`."""
    s3 = cfg.data.s3
    uri = cfg.run_uri
    owner = ownership.read_owner(uri, s3)
    ours = owner is not None and owner["command"] == "train"
    if resume is True and owner is None:
        raise SimganError(f"{uri}: no simgan-ray run to resume there")
    claim = {"inputs": {"data.synthetic": cfg.data.synthetic, "data.real": cfg.data.real, "probe.uri": cfg.probe.uri},
             "resume": bool(resume) and ours, "refusal": "continue it with --resume, or pick another run.name"}
    ownership.plan(uri, "train", s3, **claim)
    started = claim["resume"] and storage.exists(storage.join(uri, "config.yaml"), s3)
    checkpointed = started and storage.exists(storage.join(uri, TRAIN_SNAPSHOT), s3)
    snapshot = resume_from = None
    if checkpointed:
        _check_resumed(uri, cfg, allow_changes)
        snapshot, resume_from = _intact_snapshot(uri, s3)
    if started and not checkpointed:
        print(f"note: {uri} has no checkpoint (the run stopped before its first one): starting it over from step 0 "
              "with the config given now", file=sys.stderr, flush=True)
    syn, real = data.check_training_sets(
        cfg.data.synthetic, cfg.data.real, cfg.refiner.channels,
        cfg.batch_size * cfg.run.num_workers, s3,
    )
    for field, prefix, manifest in (("data.synthetic", cfg.data.synthetic, syn), ("data.real", cfg.data.real, real)):
        shards.refuse_test_kind(field, prefix, manifest.kind, "is never trained on")
    _check_history_memory(cfg, syn.shape)
    try:
        LocalDiscriminator(cfg.discriminator).output_shape(*syn.shape[1:])
    except ValueError as e:
        raise SimganError(str(e)) from None
    if cfg.probe.uri:
        load_probe(cfg.probe.uri, s3)  # refuses a missing or foreign probe
    if cfg.tracking.mlflow_uri and importlib.util.find_spec("mlflow") is None:
        raise SimganError("tracking.mlflow_uri needs the mlflow package: pip install mlflow-skinny (or mlflow)")
    if cfg.consistency.weight:  # the synthetic set's labels, which the consistency classifier learns
        data.load_set(cfg.data.synthetic, 1, s3, cfg.consistency.label_key)
    return Preflight(run_uri=uri, resumes=checkpointed, synthetic=syn, real=real, claim=claim, snapshot=snapshot,
                     resume_from=resume_from)


def _intact_snapshot(uri: str, s3) -> tuple[dict | None, tuple[str, int | None]]:
    """Check the checkpoints a run would resume from: every name Ray Train's list holds must be a
    folder of this run (a SimganError naming it otherwise), and the newest must be whole. Where the
    newest are damaged (cut short by a crash or a full disk) -> the list without them, to resume from
    the newest intact one (noted); None where nothing needs changing. Also -> the checkpoint it
    resumes from and its step."""
    snapshot_uri = storage.join(uri, TRAIN_SNAPSHOT)
    doc = storage.read_json(snapshot_uri, s3, "Ray Train's list of checkpoints")
    try:
        committed, names = rayinternals.snapshot_checkpoints(doc)
    except ValueError as e:
        raise SimganError(f"{snapshot_uri}: not Ray Train's list of checkpoints ({e})") from None
    if bad := next((n for n in names if "/" in n or storage.bad_segment(n)), None):
        raise SimganError(f"{snapshot_uri}: checkpoint {bad!r} is not a folder of this run: refusing to resume from it")
    damaged = {}
    for name in reversed(committed):
        if (why := checkpoints.damaged(storage.join(uri, name), s3)) is None:
            break
        damaged[name] = why
    if not damaged:
        return None, _latest(doc)
    fixed = rayinternals.snapshot_without(doc, set(damaged))
    first = next(iter(damaged.items()))
    if fixed is None:
        raise SimganError(f"{uri}: no intact checkpoint to resume from ({first[0]}: {first[1]}); start a new run.name")
    print(f"note: {uri}: checkpoint {first[0]} is damaged ({first[1]}); resuming from "
          f"{_latest(fixed)[0]}, the newest intact one", file=sys.stderr, flush=True)
    return fixed, _latest(fixed)


def _latest(snapshot: dict) -> tuple[str, int | None]:
    latest = snapshot["latest_checkpoint_result"]
    return latest["checkpoint_dir_name"], (latest.get("metrics") or {}).get("step")


def ingest_options(cfg: TrainConfig, dataset):
    """Ray Train's default ingest options (those of the current Ray Data context), with
    data.preserve_order and the dataset's own resource limits (its read-ahead bound,
    `data.image_dataset`): Train replaces a dataset's execution options with these."""
    import ray.train

    with warnings.catch_warnings():  # Ray's own deprecation inside its defaults (exclude_resources)
        warnings.simplefilter("ignore")
        options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = cfg.data.preserve_order
    options.resource_limits = dataset.context.execution_options.resource_limits
    return options


def fit(cfg: TrainConfig, resume: bool | Literal["auto"] = False, callbacks: list | None = None,
        resume_from=None, allow_changes: bool = False) -> FitResult:
    """Driver: `preflight`, run the TorchTrainer, then write export, curves and samples beside the
    run. Joins the Ray initialised in this process, or RAY_ADDRESS's, or starts a local one.
    `resume` continues this run from its own latest checkpoint (True: the run must exist; "auto":
    resume it when it has a checkpoint, else start it, so that one command line serves a first
    attempt and every retry); `resume_from` (a
    ray.train.Checkpoint of another run, e.g. the one PBT clones) starts this new run from that state.
    `allow_changes`: resume with fields changed beyond SAFE_TO_CHANGE."""
    checked = preflight(cfg, resume, allow_changes)
    rayinternals.set_train_driver_env()
    ensure_ray(cfg.run.num_workers * cfg.run.cpus_per_worker)  # before the claim: nothing written if Ray fails
    check_resources(worker_resources(cfg), cfg.run.num_workers, RESOURCE_FIELDS, spare_cpus=DATA_CPUS)
    with ownership.claimed(checked.run_uri, "train", cfg.data.s3, **checked.claim) as out:
        return _fit(cfg, checked, out, callbacks, resume_from)


def _fit(cfg: TrainConfig, checked: Preflight, out: Output, callbacks: list | None, resume_from) -> FitResult:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    s3 = cfg.data.s3
    uri, syn, real = checked.run_uri, checked.synthetic, checked.real
    if checked.snapshot is not None:  # Ray Train then resumes from the newest intact checkpoint
        out.write({TRAIN_SNAPSHOT: json.dumps(checked.snapshot).encode()})
    if checked.resume_from is not None:
        name, step = checked.resume_from
        print(f"resumed at step {step} from {uri}/{name}" if step is not None else f"resumed from {uri}/{name}",
              file=sys.stderr, flush=True)
    out.write({"config.yaml": dump_config(cfg).encode()})
    if label_net := ensure_label_net(cfg, out):
        print(f"label-consistency classifier: {label_net['heldout_error']:.2%} error on {label_net['heldout_images']} "
              f"held-out synthetic images ({uri}/consistency)", flush=True)
    fs, path = storage.resolve(storage.normalize(cfg.run.storage), s3)
    ledger = data.new_skip_ledger()
    to_read = images_to_read(cfg)
    datasets = {
        name: data.image_dataset(prefix, manifest, s3, images=to_read[name], shuffle_files=cfg.data.shuffle_files,
                                 seed=cfg.seed, strict=cfg.data.strict, ledger=ledger)
        for name, prefix, manifest in (("synthetic", cfg.data.synthetic, syn), ("real", cfg.data.real, real))
    }
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"config": cfg.to_dict(), "image_shape": syn.shape, "start_from": resume_from,
                           "output": out},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=cfg.run.gpus_per_worker > 0,
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
        dataset_config=ray.train.DataConfig(
            execution_options={name: ingest_options(cfg, ds) for name, ds in datasets.items()}),
        datasets=datasets,
    )
    try:
        with rayinternals.train_sigint_scope():
            result = trainer.fit()
    except SystemExit:
        # Ray Train's SIGINT handler aborts the run, then exits: the run stopped at its last checkpoint.
        raise KeyboardInterrupt from None
    skipped = ray.get(ledger.report.remote())
    if skipped:
        out.write({"skipped.txt": "".join(f"{x}\n" for x in skipped).encode()})
    if result.checkpoint is None:
        raise SimganError(f"{uri}: training produced no checkpoint")
    export_uri = storage.join(uri, EXPORT_DIR)
    with result.checkpoint.as_directory() as d, tempfile.TemporaryDirectory() as tmp:
        d = Path(d)
        metrics = json.loads((d / "metrics.json").read_text())
        # The checkpoint's export plus the refiner in torch's own formats, written beside it in a copy
        # (`d` may be the checkpoint itself).
        shutil.copytree(d / EXPORT_DIR, tmp, dirs_exist_ok=True)
        refiner, export_meta = load_export(tmp)
        _leave_a_vanished_cwd(tmp)
        if cfg.run.portable_export:
            write_portable(Path(tmp), refiner, export_meta)
        out.write({f"{EXPORT_DIR}/{p.relative_to(tmp)}": p.read_bytes()
                   for p in sorted(Path(tmp).rglob("*")) if p.is_file()})
    _write_pictures(out, cfg, syn, real, refiner, metrics)
    return FitResult(run_uri=uri, step=export_meta["step"], metrics=metrics, export_uri=export_uri,
                     export_step=export_meta["weights_step"], skipped=skipped)


def _leave_a_vanished_cwd(fallback: str) -> None:
    """chdir to `fallback` when the working directory no longer exists. Seen as a Ray Job's driver
    (tests/runtime/test_cluster.py): its working directory, the job's unpacked working_dir, was gone by the
    end of training, and importing torch.export calls os.getcwd(). Nothing relative can be meant then."""
    try:
        os.getcwd()
    except FileNotFoundError:
        os.chdir(fallback)


def _write_pictures(out: Output, cfg: TrainConfig, syn, real, refiner: Refiner, metrics: list[dict]) -> None:
    s3, n = cfg.data.s3, 16
    _, synthetic, _ = data.head_images(cfg.data.synthetic, syn, n, s3)
    _, real_images, _ = data.head_images(cfg.data.real, real, n, s3)
    refined = refine_images(refiner, synthetic)
    out.write({"samples.png": viz.refinement_rows(synthetic, refined, real_images)})
    if metrics:
        out.write({"curves.png": viz.plot_curves(metrics)})

"""Batch refinement: apply an exported refiner to every image of an image set, at scale.

The unit of work is the input shard. A Ray Data pipeline maps the list of unfinished shards
through a pool of `ShardRefiner` actors (each loads the refiner once, on a GPU when asked, bf16
autocast there); each actor reads its shard, decodes, refines in batches, encodes and writes the
output shard under the *same name*, then commits it with a marker. Output rows keep the input's
id and label and add provenance (model hash, source shard).

    <output>/_job.json                 what this output is: input, model, model hash, format
    <output>/shard-00007.parquet       refined rows of input shard-00007 (written atomically)
    <output>/_done/shard-00007.json    commit marker: {"rows", "skipped", ...}; written after the shard
    <output>/png/shard-00007/<id>.png  with --format png, plus <output>/png/labels/shard-00007.jsonl
    <output>/manifest.json             last: the finished set (rows in = rows out + skipped)

A rerun skips shards that have a marker; a shard interrupted before its marker is rewritten whole
under the same name, so an interrupted job finishes with exactly the output of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from simgan_ray import checkpoints, data, shards, storage
from simgan_ray.errors import SimganError
from simgan_ray.progress import progress
from simgan_ray.runtime import ensure_ray
from simgan_ray.storage import S3Options

JOB_FORMAT = "simgan-ray-refine-job/1"
JOB_FILE, DONE_DIR = "_job.json", "_done"


@dataclass(frozen=True)
class RefineJob:
    model: str  # a run directory (uses its export/) or an export directory
    input: str
    output: str
    batch_size: int = 256
    concurrency: int = 1  # refiner actors
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    png: bool = False  # also write one PNG per image and a labels file
    overwrite: bool = False
    strict: bool = False  # a corrupt input image fails the job instead of being skipped
    s3: S3Options = field(default_factory=S3Options)

    __pydantic_config__ = {"extra": "forbid"}


def load_refine_job(path: str | Path | None, overrides: dict) -> RefineJob:
    """A refine job: RefineJob's defaults < the YAML file at `path` (jobs/refine-1m.yaml) <
    `overrides` (the CLI options given). Errors name the file and field."""
    from pydantic import TypeAdapter, ValidationError

    from simgan_ray.config import format_errors, read_yaml

    tree = read_yaml(path, "refine job file") if path is not None else {}
    try:
        job = TypeAdapter(RefineJob).validate_python({**tree, **overrides})
    except ValidationError as e:
        raise SimganError(format_errors(str(path or "refine options"), e)) from None
    # Absolute local paths: the job may run elsewhere (a Ray Job on a cluster has its own cwd).
    return dataclasses.replace(job, model=storage.normalize(job.model), input=storage.normalize(job.input),
                               output=storage.normalize(job.output))


@dataclass
class RefineSummary:
    output: str
    shards_done: int  # by this invocation
    shards_skipped: int  # already finished by an earlier one
    rows_in: int
    rows_out: int
    skipped_images: list[str]
    bytes_written: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.rows_out / self.seconds if self.seconds > 0 else 0.0


def resolve_export(model: str, s3: S3Options) -> str:
    """A run directory or an export directory -> the export directory."""
    for candidate in (model, storage.join(model, checkpoints.EXPORT_DIR)):
        if storage.exists(storage.join(candidate, "refiner.json"), s3):
            return candidate
    raise SimganError(f"{model}: not a training run or a refiner export (no refiner.json there or in export/)")


def model_hash(export: str, s3: S3Options) -> str:
    return hashlib.sha256(storage.read_bytes(storage.join(export, "refiner.pt"), s3)).hexdigest()[:16]


def refine_images(refiner: torch.nn.Module, images: np.ndarray, batch_size: int = 512,
                  bf16: bool = False) -> np.ndarray:
    """uint8 (n, C, H, W) -> refined uint8 (n, C, H, W), in batches on the refiner's device and in
    eval mode (bf16 autocast on CUDA when asked). The one place a refiner is applied to images."""
    device = next(refiner.parameters()).device
    was_training = refiner.training
    refiner.eval()
    out = np.empty_like(images)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[start : start + batch_size])
            y = refiner(data.unit_range(torch.from_numpy(chunk).to(device)))
            out[start : start + len(chunk)] = data.to_uint8(y.float().cpu().numpy()).transpose(0, 3, 1, 2)
    refiner.train(was_training)
    return out


def _done_uri(output: str, shard: str) -> str:
    return storage.join(output, DONE_DIR, shard.removesuffix(".parquet") + ".json")


class ShardRefiner:
    """Ray Data actor: loads the refiner once, then refines whole shards (batch = shard names)."""

    def __init__(self, export: str, model_id: str, job: RefineJob, shape: list[int]) -> None:
        self.job, self.shape, self.model_id = job, shape, model_id
        self.device = torch.device("cuda" if job.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(job.cpus_per_worker)))
        refiner, _ = checkpoints.load_export(export, job.s3)
        self.refiner = refiner.to(self.device)

    def refine_shard(self, name: str) -> dict:
        job = self.job
        src = storage.join(job.input, name)
        fs, path = storage.resolve(src, job.s3)
        table = pq.read_table(path, filesystem=fs)
        ids, blobs, labels = table["id"].to_pylist(), table["image"].to_pylist(), table["label"].to_pylist()
        keep, images, skipped = [], [], []
        for i, (image_id, blob) in enumerate(zip(ids, blobs, strict=True)):
            try:
                images.append(data.decode_image(image_id, blob, self.shape))
                keep.append(i)
            except SimganError as e:
                if job.strict:
                    raise SimganError(f"{src}: {e}") from None
                skipped.append(f"{src}: {e}")
        refined = (
            refine_images(self.refiner, np.stack(images).transpose(0, 3, 1, 2), job.batch_size,
                          bf16=self.device.type == "cuda").transpose(0, 2, 3, 1)
            if images else np.empty((0, *self.shape[1:], self.shape[0]), np.uint8)
        )
        kept_ids, kept_labels = [ids[i] for i in keep], [labels[i] for i in keep]
        out = shards.make_table(kept_ids, [im[..., 0] if im.shape[-1] == 1 else im for im in refined], kept_labels)
        out = out.append_column("source_shard", pa.array([name] * len(keep), pa.string()))
        out = out.append_column("model", pa.array([self.model_id] * len(keep), pa.string()))
        shards.write_shard(job.output, int(name.removeprefix("shard-").removesuffix(".parquet")), out, job.s3)
        written = sum(len(b) for b in out["image"].to_pylist())
        if job.png:
            written += self._write_pngs(name, kept_ids, out["image"].to_pylist(), kept_labels)
        marker = {"rows_in": len(ids), "rows": len(keep), "skipped": skipped, "bytes": written}
        storage.write_bytes(_done_uri(job.output, name), json.dumps(marker).encode(), job.s3)
        return marker

    def _write_pngs(self, shard: str, ids: list[str], pngs: list[bytes], labels: list) -> int:
        stem = shard.removesuffix(".parquet")
        lines = []
        for image_id, png, label in zip(ids, pngs, labels, strict=True):
            rel = f"png/{stem}/{image_id.removesuffix('.png')}.png"
            storage.write_bytes(storage.join(self.job.output, rel), png, self.job.s3)
            parsed = None if label is None else json.loads(label)
            lines.append(json.dumps({"id": image_id, "file": rel, "label": parsed}))
        text = "".join(line + "\n" for line in lines).encode()
        storage.write_bytes(storage.join(self.job.output, "png", "labels", f"{stem}.jsonl"), text, self.job.s3)
        return sum(len(p) for p in pngs) + len(text)

    def __call__(self, batch: dict) -> dict:
        results = [self.refine_shard(str(name)) for name in batch["shard"]]
        return {
            "shard": np.array([str(n) for n in batch["shard"]]),
            "marker": np.array([json.dumps(r) for r in results]),
        }


def _check_output(job: RefineJob, identity: dict) -> None:
    """Refuse an output prefix that is the input, lies inside it, or holds another job's output."""
    if storage.is_within(job.output, job.input) or storage.is_within(job.input, job.output):
        raise SimganError(f"--output {job.output} overlaps --input {job.input}: outputs never touch the input prefix")
    job_uri = storage.join(job.output, JOB_FILE)
    if storage.exists(job_uri, job.s3):
        previous = json.loads(storage.read_bytes(job_uri, job.s3))
        if previous != identity and not job.overwrite:
            changed = ", ".join(k for k in identity if previous.get(k) != identity[k])
            raise SimganError(f"{job.output} holds another refinement job's output ({changed} differ); "
                              "pass --overwrite to replace it")
    elif storage.exists(storage.join(job.output, shards.MANIFEST), job.s3) and not job.overwrite:
        raise SimganError(f"{job.output} already holds an image set; pass --overwrite to replace it")


def refine(job: RefineJob) -> RefineSummary:
    """Driver: validate everything before writing anything, then refine the unfinished shards."""
    import ray.data

    if job.batch_size < 1 or job.concurrency < 1:
        raise SimganError("--batch-size and --concurrency must be >= 1")
    export = resolve_export(job.model, job.s3)
    _, meta = checkpoints.load_export(export, job.s3)  # refuses anything that is not a refiner export
    manifest = shards.read_manifest(job.input, job.s3)
    channels, trained_shape = meta["refiner"]["channels"], meta.get("image_shape")
    if manifest.shape[0] != channels or (trained_shape and list(trained_shape) != manifest.shape):
        want = "x".join(map(str, trained_shape)) if trained_shape else f"{channels} channels"
        raise SimganError(f"{job.input}: images are {'x'.join(map(str, manifest.shape))} (CxHxW) but the refiner "
                          f"{export} was trained on {want}")
    data.check_shards(job.input, manifest, job.s3)
    model_id = model_hash(export, job.s3)
    identity = {"format": JOB_FORMAT, "input": storage.normalize(job.input), "model": model_id, "png": job.png}
    _check_output(job, identity)
    if job.overwrite:
        storage.delete_tree(job.output, job.s3)
    storage.make_dirs(job.output, job.s3)
    storage.write_bytes(storage.join(job.output, JOB_FILE), json.dumps(identity, indent=2).encode(), job.s3)

    names = [s["name"] for s in manifest.shards]
    pending = [n for n in names if not storage.exists(_done_uri(job.output, n), job.s3)]
    start = time.perf_counter()
    if pending:
        ensure_ray(job.concurrency * job.cpus_per_worker)
        ds = ray.data.from_items([{"shard": n} for n in pending], override_num_blocks=len(pending))
        results = ds.map_batches(
            ShardRefiner, batch_size=1, concurrency=job.concurrency,
            num_gpus=job.gpus_per_worker or None, num_cpus=job.cpus_per_worker,
            fn_constructor_kwargs={"export": export, "model_id": model_id, "job": job, "shape": manifest.shape},
        )
        with progress(len(pending), "refine shards") as bar:
            for _ in results.iter_rows():
                bar.update(1)
    seconds = time.perf_counter() - start

    markers = [json.loads(storage.read_bytes(_done_uri(job.output, n), job.s3)) for n in names]
    rows_out = sum(m["rows"] for m in markers)
    skipped = [x for m in markers for x in m["skipped"]]
    if rows_out + len(skipped) != manifest.count:
        raise SimganError(f"{job.output}: {rows_out} rows out + {len(skipped)} skipped != {manifest.count} rows in")
    written = [{"name": n, "rows": m["rows"]} for n, m in zip(names, markers, strict=True) if m["rows"]]
    if job.png:
        labels = b"".join(storage.read_bytes(storage.join(job.output, "png", "labels", n.removesuffix(".parquet")
                                                          + ".jsonl"), job.s3) for n in names)
        storage.write_bytes(storage.join(job.output, "labels.jsonl"), labels, job.s3)
    shards.write_manifest(job.output, shards.Manifest(
        kind="refined", count=rows_out, shape=manifest.shape, shards=written,
        source={"input": identity["input"], "model": model_id, "export": export, "rows_in": manifest.count,
                "rows_out": rows_out, "skipped": len(skipped), "skipped_images": skipped[:100],
                "label": manifest.source.get("label", "as in the input")},
    ), job.s3)
    this_run = set(pending)
    return RefineSummary(
        output=job.output, shards_done=len(pending), shards_skipped=len(names) - len(pending),
        rows_in=manifest.count, rows_out=rows_out, skipped_images=skipped,
        bytes_written=sum(m["bytes"] for n, m in zip(names, markers, strict=True) if n in this_run),
        seconds=seconds,
    )

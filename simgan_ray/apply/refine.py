"""Batch refinement: apply an exported refiner to every image of an image set, at scale.

The unit of work is the input shard. A Ray Data pipeline maps the list of unfinished shards
through a pool of `ShardRefiner` actors (each loads the refiner once, on a GPU when asked, bf16
autocast there); each actor reads its shard, decodes, refines in batches, encodes and writes the
output shard under the *same name*, then commits it with a marker. Output rows keep the input's
id and label and add provenance (model hash, source shard).

    <output>/.simgan-ray/              the claim (`ownership`): owner record (its identity: input,
                                       model hash, format), lock, and the record of every file written
    <output>/shard-00007.parquet       refined rows of input shard-00007 (written atomically)
    <output>/_done/shard-00007.json    commit marker: {"rows", "skipped", ...}; written after the shard
    <output>/png/shard-00007/<id>.png  with --format png (the id percent-encoded into one file name,
                                       `shards.png_file_name`), plus <output>/png/labels/shard-00007.jsonl
    <output>/labels.jsonl              with --format png: every image's id, file and label
    <output>/manifest.json             last: the finished set (rows in = rows out + skipped)

A rerun skips shards that have a marker; a shard interrupted before its marker is rewritten whole
under the same name, so an interrupted job finishes with exactly the output of an uninterrupted one.
A rerun of the same job (input, model hash, format) continues; another job's output is replaced
only with `--overwrite`, which deletes what that job's record lists and nothing else (`ownership`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, ValidationError

from simgan_ray import storage
from simgan_ray.common.errors import BadItems, SimganError, first_line, format_errors
from simgan_ray.common.settings import Section
from simgan_ray.common.yamlfiles import read_yaml
from simgan_ray.model.export import load_export, model_hash, refine_images, resolve_export
from simgan_ray.runtime.progress import progress
from simgan_ray.runtime.session import check_resources, ensure_ray
from simgan_ray.sets import data, shards
from simgan_ray.storage import S3Options, ownership
from simgan_ray.storage.fields import Location
from simgan_ray.storage.ownership import Output

DONE_DIR = "_done"


class RefineJob(Section):
    """`refine`: what it refines with, from where to where, and how."""

    model: Location
    """a training run (its export/ is used) or an export folder"""
    input: Location
    """the synthetic set to refine"""
    output: Location
    """where the refined set goes (claimed: `ownership`)"""
    batch_size: int = Field(256, ge=1)
    """images per refiner call"""
    concurrency: int = Field(1, ge=1)
    """refiner actors"""
    gpus_per_worker: float = Field(0.0, ge=0)
    """GPUs per actor (0: CPU; a fraction shares a GPU between actors; bf16 autocast on a GPU)"""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs per actor"""
    format: Literal["parquet", "png"] = "parquet"
    """parquet: shards and a manifest; png: also one PNG per image and a labels file per shard"""
    encoding: Literal["png", "raw"] | None = None
    """the refined shards' image encoding (png, or raw uint8 pixels: decoding is a reshape); null: the input's"""
    overwrite: bool = False
    """replace another job's output at `output` (only what its record lists)"""
    strict: bool = False
    """a corrupt input image or label fails the job instead of being skipped"""
    s3: S3Options = S3Options()
    """the S3 endpoint and credentials, when a location is s3://"""


def load_refine_job(path: str | Path | None, overrides: dict) -> RefineJob:
    """A refine job: RefineJob's defaults < the YAML file at `path` (jobs/refine-1m.yaml) <
    `overrides` (the CLI options given). Errors name the file and field. Locations are made
    absolute: the job may run elsewhere (a Ray Job on a cluster has its own cwd)."""
    tree = read_yaml(path, "refine job file") if path is not None else {}
    try:
        return RefineJob.model_validate({**tree, **overrides})
    except ValidationError as e:
        raise SimganError(format_errors(str(path or "refine options"), e)) from None


@dataclass
class RefineSummary:
    output: str
    shards_done: int  # by this invocation
    shards_skipped: int  # already finished by an earlier one
    rows_in: int
    rows_out: int
    skipped_images: list[str]
    corrupt_shards: list[str]  # skipped whole (without --strict), each with its reason
    bytes_written: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.rows_out / self.seconds if self.seconds > 0 else 0.0


def _done_rel(shard: str) -> str:
    return f"{DONE_DIR}/{shard.removesuffix('.parquet')}.json"


def _done_uri(output: str, shard: str) -> str:
    return storage.join(output, _done_rel(shard))


class ShardRefiner:
    """Ray Data actor: loads the refiner once, then refines whole shards (batch = shard names)."""

    def __init__(self, export: str, model_id: str, job: RefineJob, out: Output, shape: list[int],
                 rows: dict[str, int], encodings: tuple[str, str]) -> None:
        self.job, self.out, self.shape, self.model_id, self.rows = job, out, shape, model_id, rows
        self.encoding_in, self.encoding_out = encodings
        self.device = torch.device("cuda" if job.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(job.cpus_per_worker)))
        refiner, _ = load_export(export, job.s3)
        self.refiner = refiner.to(self.device)

    def refine_shard(self, name: str) -> dict:
        job = self.job
        src = storage.join(job.input, name)
        try:
            table = shards.read_shard(src, job.s3)
        except SimganError as e:  # a corrupt shard: with --strict the job fails naming it, else it is counted
            if job.strict:
                raise
            marker = {"rows_in": self.rows[name], "rows": 0, "skipped": [], "corrupt": str(e), "bytes": 0}
            self.out.write({_done_rel(name): json.dumps(marker).encode()})
            return marker
        ids, blobs, labels = table["id"].to_pylist(), table["image"].to_pylist(), table["label"].to_pylist()
        keep, images, files, bad = [], [], {}, BadItems(job.strict)
        for i, (image_id, blob, label) in enumerate(zip(ids, blobs, labels, strict=True)):
            if (image := bad.attempt(src, self._check_row, image_id, blob, label, files)) is not None:
                images.append(image)
                keep.append(i)
        refined = (
            refine_images(self.refiner, np.stack(images), job.batch_size, bf16=self.device.type == "cuda")
            if images else np.empty((0, *self.shape), np.uint8)
        )
        kept_ids, kept_labels = [ids[i] for i in keep], [labels[i] for i in keep]
        out = shards.make_table(kept_ids, refined, kept_labels, self.encoding_out)
        out = out.append_column("source_shard", pa.array([name] * len(keep), pa.string()))
        out = out.append_column("model", pa.array([self.model_id] * len(keep), pa.string()))
        files = {name: shards.encode_table(out, self.encoding_out)}
        if job.format == "png":
            pngs = out["image"].to_pylist() if self.encoding_out == "png" else [shards.encode_png(x) for x in refined]
            files.update(self._pngs(name, kept_ids, pngs, kept_labels))
        marker = {"rows_in": len(ids), "rows": len(keep), "skipped": bad.reasons,
                  "bytes": sum(len(b) for b in files.values())}
        files[_done_rel(name)] = json.dumps(marker).encode()  # last: the shard's commit
        self.out.write(files)
        return marker

    def _check_row(self, image_id, blob: bytes, label: str | None, files: dict[str, str]) -> np.ndarray:
        """One input row, checked before anything of its shard is written -> its decoded image,
        uint8 (C, H, W). A SimganError names the id and what is wrong with it. `files`: the PNG
        file names given so far in this shard, to the ids that got them."""
        if why := shards.id_problem(image_id):
            raise SimganError(f"image id {image_id!r}: {why}")
        if label is not None:
            try:
                json.loads(label)
            except ValueError as e:
                raise SimganError(f"image {image_id}: label is not JSON ({first_line(e)})") from None
        if self.job.format == "png":
            file = shards.png_file_name(image_id)
            if file in files:
                raise SimganError(f"image {image_id}: its PNG file name {file} is already that of image "
                                  f"{files[file]} in this shard")
            files[file] = image_id
        return data.decode_image(image_id, blob, self.shape, self.encoding_in)

    def _pngs(self, shard: str, ids: list[str], pngs: list[bytes], labels: list) -> dict[str, bytes]:
        """--format png: one file per image and the shard's labels file, by path under the output."""
        stem = shard.removesuffix(".parquet")
        files, lines = {}, []
        for image_id, png, label in zip(ids, pngs, labels, strict=True):
            rel = f"png/{stem}/{shards.png_file_name(image_id)}"
            files[rel] = png
            parsed = None if label is None else json.loads(label)
            lines.append(json.dumps({"id": image_id, "file": rel, "label": parsed}))
        files[f"png/labels/{stem}.jsonl"] = "".join(line + "\n" for line in lines).encode()
        return files

    def __call__(self, batch: dict) -> dict:
        results = [self.refine_shard(str(name)) for name in batch["shard"]]
        return {
            "shard": np.array([str(n) for n in batch["shard"]]),
            "marker": np.array([json.dumps(r) for r in results]),
        }


@dataclass
class RefinePlan:
    """What `plan` found: the export and its hash, the input's manifest, its shards (all and those
    not yet done), how the output is claimed (`ownership.claim`'s options, the job's identity
    among them) and what that claim would do."""

    export: str
    model_id: str
    manifest: shards.Manifest
    encoding: str  # the refined shards' (the job's, or the input's)
    names: list[str]
    pending: list[str]
    claim: dict
    output: ownership.Plan


def plan(job: RefineJob) -> RefinePlan:
    """Every check of `refine` before anything is written, writing nothing (`refine --dry-run`):
    locations, the export, the input's manifest, shapes and shard footers, the output's owner."""
    storage.refuse_overlap(("--output", job.output), {"--input": job.input, "--model": job.model},
                           "the output of refine is a prefix of its own, apart from both")
    export = resolve_export(job.model, job.s3)
    _, meta = load_export(export, job.s3)  # refuses anything that is not a refiner export
    manifest = shards.read_manifest(job.input, job.s3)
    channels, trained_shape = meta["refiner"]["channels"], meta.get("image_shape")
    if manifest.shape[0] != channels or (trained_shape and list(trained_shape) != manifest.shape):
        want = "x".join(map(str, trained_shape)) if trained_shape else f"{channels} channels"
        raise SimganError(f"{job.input}: images are {'x'.join(map(str, manifest.shape))} (CxHxW) but the refiner "
                          f"{export} was trained on {want}")
    data.check_shards(job.input, manifest, job.s3)
    model_id = model_hash(export, job.s3)
    encoding = job.encoding or manifest.encoding
    # What the output holds; "encoding" only where it is not the PNG every earlier output holds.
    identity = {"input": job.input, "model": model_id, "png": job.format == "png",
                **({"encoding": encoding} if encoding != "png" else {})}
    claim = _claim_options(job, identity)
    output = ownership.plan(job.output, "refine", job.s3, **{k: v for k, v in claim.items() if k != "identity"})
    names = [s["name"] for s in manifest.shards]
    pending = names if output.action != "continue" else [n for n in names if not storage.exists(
        _done_uri(job.output, n), job.s3)]
    return RefinePlan(export, model_id, manifest, encoding, names, pending, claim, output)


def _claim_options(job: RefineJob, identity: dict) -> dict:
    """How refine claims its output: the same job (input, model hash, format) continues its own
    output; another job's output is replaced with --overwrite only."""
    owner = ownership.read_owner(job.output, job.s3)
    earlier = (owner or {}).get("identity", {})
    differ = ", ".join(k for k in identity if earlier.get(k) != identity[k])
    return {"inputs": {"--input": job.input, "--model": job.model}, "overwrite": job.overwrite,
            "resume": owner is not None and not differ, "identity": identity,
            "refusal": f"it is another refinement job's output ({differ} differ); pass --overwrite to replace it"}


def refine(job: RefineJob) -> RefineSummary:
    """Driver: validate everything before writing anything (`plan`), claim the output, then refine
    the unfinished shards."""
    p = plan(job)
    if p.pending:
        ensure_ray(job.concurrency * job.cpus_per_worker)
        check_resources({"CPU": job.cpus_per_worker, "GPU": job.gpus_per_worker}, job.concurrency,
                        "refine --concurrency, --cpus-per-worker, --gpus-per-worker")
    with ownership.claimed(job.output, "refine", job.s3, **p.claim) as out:
        return _refine(job, p, out)


def _refine(job: RefineJob, p: RefinePlan, out: Output) -> RefineSummary:
    import ray.data

    manifest, names, pending = p.manifest, p.names, p.pending
    start = time.perf_counter()
    if pending:
        ds = ray.data.from_items([{"shard": n} for n in pending], override_num_blocks=len(pending))
        results = ds.map_batches(
            ShardRefiner, batch_size=1, concurrency=job.concurrency,
            num_gpus=job.gpus_per_worker or None, num_cpus=job.cpus_per_worker,
            fn_constructor_kwargs={"export": p.export, "model_id": p.model_id, "job": job, "out": out,
                                   "shape": manifest.shape, "rows": {s["name"]: s["rows"] for s in manifest.shards},
                                   "encodings": (manifest.encoding, p.encoding)},
        )
        # A SimganError of an actor (a corrupt shard with --strict, a bad label) arrives as itself, not
        # as Ray Data's UserCodeException, so that the CLI prints its one line.
        results.context.raise_original_map_exception = True
        with progress(len(pending), "refine shards") as bar:
            for _ in results.iter_rows():
                bar.update(1)
    seconds = time.perf_counter() - start

    markers = [json.loads(storage.read_bytes(_done_uri(job.output, n), job.s3)) for n in names]
    rows_out = sum(m["rows"] for m in markers)
    skipped = [x for m in markers for x in m["skipped"]]
    corrupt = [(m["corrupt"], m["rows_in"]) for m in markers if m.get("corrupt")]
    lost = sum(n for _, n in corrupt)
    if rows_out + len(skipped) + lost != manifest.count:
        raise SimganError(f"{job.output}: {rows_out} rows out + {len(skipped)} skipped + {lost} in corrupt shards != "
                          f"{manifest.count} rows in")
    written = [{"name": n, "rows": m["rows"]} for n, m in zip(names, markers, strict=True) if m["rows"]]
    if job.format == "png":
        labels = b"".join(storage.read_bytes(storage.join(job.output, "png", "labels", n.removesuffix(".parquet")
                                                          + ".jsonl"), job.s3) for n in names)
        out.write({"labels.jsonl": labels})
    shards.write_manifest(out, shards.Manifest(
        kind="refined", count=rows_out, shape=manifest.shape, shards=written, encoding=p.encoding,
        source={"input": job.input, "model": p.model_id, "export": p.export, "rows_in": manifest.count,
                "rows_out": rows_out, "skipped": len(skipped) + lost, "skipped_images": skipped[:100],
                "corrupt_shards": [f"{why} ({n} rows)" for why, n in corrupt],
                "label": manifest.source.get("label", "as in the input")},
    ))
    this_run = set(pending)
    return RefineSummary(
        output=job.output, shards_done=len(pending), shards_skipped=len(names) - len(pending),
        rows_in=manifest.count, rows_out=rows_out, skipped_images=skipped,
        corrupt_shards=[why for why, _ in corrupt],
        bytes_written=sum(m["bytes"] for n, m in zip(names, markers, strict=True) if n in this_run),
        seconds=seconds,
    )

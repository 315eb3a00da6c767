"""Batch refinement: apply an exported refiner to every image of an image set, at scale.

The unit of work is the input shard. A Ray Data pipeline maps the list of unfinished shards
through a pool of `ShardRefiner` actors (each loads the refiner once, on a GPU when asked, bf16
autocast there); each actor reads its shard, decodes, refines in batches, encodes and writes the
output shard under the *same name*, then commits it with a marker. Output rows keep the input's
id and label and add provenance (model hash, source shard).

    <output>/_job.json                 what this output is: input, model, model hash, format
    <output>/shard-00007.parquet       refined rows of input shard-00007 (written atomically)
    <output>/_done/shard-00007.json    commit marker: {"rows", "skipped", ...}; written after the shard
    <output>/png/shard-00007/<id>.png  with --format png (the id percent-encoded into one file name,
                                       `shards.png_file_name`), plus <output>/png/labels/shard-00007.jsonl
    <output>/labels.jsonl              with --format png: every image's id, file and label
    <output>/manifest.json             last: the finished set (rows in = rows out + skipped)

A rerun skips shards that have a marker; a shard interrupted before its marker is rewritten whole
under the same name, so an interrupted job finishes with exactly the output of an uninterrupted one.
`--overwrite` replaces an earlier job's output only when every file there is one a job writes (the
list above, for that job's shards): a folder holding anything else is refused, naming that file.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field, ValidationError

from simgan_ray import checkpoints, data, shards, storage
from simgan_ray.checkpoints import model_hash, refine_images, resolve_export
from simgan_ray.config import Location, Section, read_yaml
from simgan_ray.errors import BadItems, SimganError, first_line, format_errors
from simgan_ray.progress import progress
from simgan_ray.runtime import check_resources, ensure_ray
from simgan_ray.storage import S3Options

JOB_FORMAT = "simgan-ray-refine-job/1"
JOB_FILE, DONE_DIR = "_job.json", "_done"


class RefineJob(Section):
    model: Location  # a run directory (uses its export/) or an export directory
    input: Location
    output: Location
    batch_size: int = Field(256, ge=1)
    concurrency: int = Field(1, ge=1)  # refiner actors
    gpus_per_worker: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    png: bool = False  # also write one PNG per image and a labels file
    overwrite: bool = False
    strict: bool = False  # a corrupt input image or label fails the job instead of being skipped
    s3: S3Options = S3Options()


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
    bytes_written: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.rows_out / self.seconds if self.seconds > 0 else 0.0


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
        table = pq.read_table(path, filesystem=fs, columns=["id", "image", "label"])
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
        out = shards.make_table(kept_ids, refined, kept_labels)
        out = out.append_column("source_shard", pa.array([name] * len(keep), pa.string()))
        out = out.append_column("model", pa.array([self.model_id] * len(keep), pa.string()))
        shards.write_table(job.output, name, out, job.s3)
        written = sum(len(b) for b in out["image"].to_pylist())
        if job.png:
            written += self._write_pngs(name, kept_ids, out["image"].to_pylist(), kept_labels)
        marker = {"rows_in": len(ids), "rows": len(keep), "skipped": bad.reasons, "bytes": written}
        storage.write_bytes(_done_uri(job.output, name), json.dumps(marker).encode(), job.s3)
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
        if self.job.png:
            file = shards.png_file_name(image_id)
            if file in files:
                raise SimganError(f"image {image_id}: its PNG file name {file} is already that of image "
                                  f"{files[file]} in this shard")
            files[file] = image_id
        return data.decode_image(image_id, blob, self.shape)

    def _write_pngs(self, shard: str, ids: list[str], pngs: list[bytes], labels: list) -> int:
        stem = shard.removesuffix(".parquet")
        lines = []
        for image_id, png, label in zip(ids, pngs, labels, strict=True):
            rel = f"png/{stem}/{shards.png_file_name(image_id)}"
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


def _check_locations(job: RefineJob) -> None:
    """The output never touches the input or the model (local locations compared with symbolic
    links resolved: an alias of the input is the input)."""
    storage.refuse_overlap(("--output", job.output), {"--input": job.input, "--model": job.model},
                           "the output of refine is a prefix of its own, apart from both")


def _read_record(job: RefineJob) -> dict | None:
    """The job record an earlier refine job left in the output, or None."""
    uri = storage.join(job.output, JOB_FILE)
    if not storage.exists(uri, job.s3):
        return None
    record = storage.read_json(uri, job.s3, "a refine job record", JOB_FORMAT, "; pick another --output")
    names = record.get("shards", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SimganError(f"{uri}: not a refine job record (shards: not a list of names); pick another --output")
    return record


# A local write interrupted before its rename leaves "<file>.tmp-<pid>" (storage.write_bytes).
_TMP = re.compile(r"\.tmp-\d+$")


def _written_by_refine(rel: str, stems: set[str]) -> bool:
    """Whether `rel`, a path under a refine output, is a file refine writes there for the input
    shards `stems` (shard names less .parquet)."""
    *folders, name = _TMP.sub("", rel).split("/")
    stem, _, suffix = name.rpartition(".")
    if not folders:
        return name in (JOB_FILE, shards.MANIFEST, "labels.jsonl") or (stem in stems and suffix == "parquet")
    if folders == [DONE_DIR]:
        return stem in stems and suffix == "json"
    if folders == ["png", "labels"]:
        return stem in stems and suffix == "jsonl"
    return len(folders) == 2 and folders[0] == "png" and folders[1] in stems and suffix == "png"


def _check_output(job: RefineJob, identity: dict) -> None:
    """Refuse an output that holds anything but this job's own earlier (interrupted) work, unless
    --overwrite, which then empties it, but only where every file there is one refine wrote (or
    the manifest and shards of an image set)."""
    previous = _read_record(job)
    holds_set = storage.exists(storage.join(job.output, shards.MANIFEST), job.s3)
    if not job.overwrite:
        if previous is not None and all(previous.get(k) == v for k, v in identity.items()):
            return  # this job, interrupted or finished: its finished shards are kept
        if previous is not None or holds_set:
            what = ("an image set" if previous is None else "another refinement job's output ("
                    + ", ".join(k for k in identity if previous.get(k) != identity[k]) + " differ)")
            raise SimganError(f"{job.output} already holds {what}; pass --overwrite to replace it")
        if files := storage.list_files(job.output, options=job.s3):
            raise SimganError(f"--output {job.output} holds files refine did not write ({files[0]} first): "
                              "pick an empty or new --output")
        return
    files = storage.list_files(job.output, options=job.s3)
    stems = set()
    if previous is not None:  # its shards, as recorded and as committed (an older record lists none)
        stems |= {n.removesuffix(".parquet") for n in previous.get("shards", [])}
        stems |= {f.removeprefix(DONE_DIR + "/").removesuffix(".json") for f in files if f.startswith(DONE_DIR + "/")}
    if holds_set:
        try:
            stems |= {e["name"].removesuffix(".parquet") for e in shards.read_manifest(job.output, job.s3).shards}
        except SimganError:
            pass  # its shards are then not known to be ours, and the check below names the first
    if foreign := next((f for f in files if not _written_by_refine(f, stems)), None):
        raise SimganError(f"--overwrite: {job.output} also holds {foreign}, which no simgan-ray job wrote there: "
                          "nothing was deleted; pick another --output")
    storage.delete_tree(job.output, job.s3)


@dataclass
class RefinePlan:
    """What `plan` found: the export and its hash, the input's manifest, the job's identity (its
    record's fields) and its shards, all and those not yet done."""

    export: str
    model_id: str
    manifest: shards.Manifest
    identity: dict
    names: list[str]
    pending: list[str]


def plan(job: RefineJob) -> RefinePlan:
    """Every check of `refine` before anything is written, writing nothing (`refine --dry-run`):
    locations, the export, the input's manifest, shapes and shard footers, the output's owner."""
    _check_locations(job)
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
    identity = {"format": JOB_FORMAT, "input": job.input, "model": model_id, "png": job.png}
    _check_output(job, identity)
    names = [s["name"] for s in manifest.shards]
    pending = [n for n in names if not storage.exists(_done_uri(job.output, n), job.s3)]
    return RefinePlan(export, model_id, manifest, identity, names, pending)


def refine(job: RefineJob) -> RefineSummary:
    """Driver: validate everything before writing anything (`plan`), then refine the unfinished shards."""
    import ray.data

    p = plan(job)
    export, model_id, manifest, identity, names, pending = (p.export, p.model_id, p.manifest, p.identity, p.names,
                                                            p.pending)
    if pending:
        ensure_ray(job.concurrency * job.cpus_per_worker)
        check_resources({"CPU": job.cpus_per_worker, "GPU": job.gpus_per_worker}, job.concurrency,
                        "refine --concurrency, --cpus-per-worker, --gpus-per-worker")
    storage.make_dirs(job.output, job.s3)
    storage.write_bytes(storage.join(job.output, JOB_FILE), json.dumps({**identity, "shards": names}, indent=2)
                        .encode(), job.s3)

    start = time.perf_counter()
    if pending:
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

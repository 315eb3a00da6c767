"""A run's live record, kept by rank 0 while it trains, on any run storage (local or s3://):

    <run>/metrics.jsonl             every report so far, rewritten at each report (object stores
                                    have no append; a collapse-guard rollback drops its reports here too)
    <run>/tensorboard/              TensorBoard events: every numeric metric at each report, and the
                                    samples grid at each checkpoint (`tensorboard --logdir <run>`)
    <run>/samples/step-NNNNNN.png   at each checkpoint: synthetic / refined / |R(x) - x| for the same
                                    16 synthetic images throughout the run

so a run can be watched, and compared mid-way, while it goes; the driver adds curves.png and the
final samples.png at the end. With `tracking.mlflow_uri` the same numbers, the resolved config and
the grids also go to MLflow, into one MLflow run per simgan-ray run (a resume continues it: its id
is kept in <run>/mlflow.json).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.measures import viz
from simgan_ray.model.export import refine_images
from simgan_ray.storage import S3Options
from simgan_ray.storage.ownership import Output
from simgan_ray.training.config import TrainConfig

SAMPLES_DIR, TENSORBOARD_DIR = "samples", "tensorboard"


class RunTracker:
    GRID = 16  # synthetic images in each sample grid

    def __init__(self, cfg: TrainConfig, out: Output, images: np.ndarray, start_step: int) -> None:
        """out: the run folder's claim, every file goes through it; images: uint8 (n, C, H, W), the
        synthetic images the sample grids show; start_step: 0, or the step a resumed run continues
        from (its event file is a new one beside the earlier ones)."""
        from tensorboardX.event_file_writer import EventsWriter

        self.out, self.uri, self.s3, self.images = out, cfg.run_uri, cfg.data.s3, images
        self.tensorboard = storage.join(self.uri, TENSORBOARD_DIR)
        # A local run directory takes the event file directly; for object storage it is written in a
        # temporary directory and uploaded (one file, growing) after each report.
        self._local = storage.is_local(self.uri)
        self._tmp = None if self._local else tempfile.TemporaryDirectory(prefix="simgan-tb-")
        logdir = self.tensorboard if self._local else self._tmp.name
        storage.make_dirs(logdir, self.s3)
        # Written synchronously (SummaryWriter queues events for a thread, so a report could reach a
        # reader before its numbers do).
        self.events = EventsWriter(str(Path(logdir) / "events"), f".step{start_step:06d}")
        self._written = Path(logdir)
        storage.make_dirs(storage.join(self.uri, SAMPLES_DIR), self.s3)  # readers of the live record list it
        self.mlflow = _start_mlflow(cfg, out) if cfg.tracking.mlflow_uri else None

    def _write(self, step: int, values: list) -> None:
        from tensorboardX.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=values)
        if self._local:
            self.out.check()  # the event file grows in place in the run folder: only while the run holds it
        self.events.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        self.events.flush()
        # Local: the event file grows in place, recorded as it is after each flush (a writer of its
        # own appends to it); remote: the whole file is uploaded through the claim.
        files = {f"{TENSORBOARD_DIR}/{path.name}": path for path in self._written.iterdir()}
        if self._local:
            self.out.record({rel: path.stat().st_size for rel, path in files.items()})
        else:
            self.out.write({rel: path.read_bytes() for rel, path in files.items()})

    def report(self, metrics_log: list[dict]) -> None:
        """After a report: the newest report's numbers to TensorBoard, the whole log to metrics.jsonl."""
        from tensorboardX.proto.summary_pb2 import Summary

        last = metrics_log[-1]
        self._write(last["step"], [Summary.Value(tag=key, simple_value=float(value)) for key, value in last.items()
                                   if isinstance(value, (int, float)) and key != "step"])
        text = "".join(json.dumps(m) + "\n" for m in metrics_log)
        self.out.write({"metrics.jsonl": text.encode()})
        if self.mlflow is not None:
            self.mlflow.log_metrics({k: float(v) for k, v in last.items() if isinstance(v, (int, float)) and
                                     k != "step"}, step=last["step"])

    def checkpoint(self, step: int, refiner) -> None:
        """At a checkpoint: samples/step-NNNNNN.png and the same grid in TensorBoard."""
        from tensorboardX.proto.summary_pb2 import Summary

        png = viz.refinement_rows(self.images, refine_images(refiner, self.images))
        self.out.write({f"{SAMPLES_DIR}/step-{step:06d}.png": png})
        width, height = Image.open(io.BytesIO(png)).size
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
        self._write(step, [Summary.Value(tag="samples", image=image)])
        if self.mlflow is not None:
            self.mlflow.log_image(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")),
                                  f"samples/step-{step:06d}.png")

    def close(self) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run()
        self.events.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _start_mlflow(cfg: TrainConfig, out: Output):
    """mlflow, with this run's MLflow run active: a new one named after run.name holding the resolved
    config as parameters, or, when <run>/mlflow.json names one (a resume), that one again."""
    try:
        import mlflow
    except ImportError:
        raise SimganError("tracking.mlflow_uri needs the mlflow package on the workers: pip install mlflow-skinny "
                          "(or mlflow)") from None
    uri = cfg.tracking.mlflow_uri
    if uri.startswith("file:"):  # a local file store, which MLflow 3 keeps only on request: this is one
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    record = storage.join(cfg.run_uri, "mlflow.json")
    if storage.exists(record, cfg.data.s3):
        mlflow.start_run(run_id=json.loads(storage.read_bytes(record, cfg.data.s3))["run_id"])
        return mlflow
    mlflow.set_experiment(cfg.tracking.mlflow_experiment)
    run = mlflow.start_run(run_name=cfg.run.name)
    flat = flatten(cfg.to_dict())
    for start in range(0, len(flat), 100):  # MLflow takes at most 100 parameters per call
        mlflow.log_params(dict(list(flat.items())[start : start + 100]))
    doc = {"tracking_uri": uri, "experiment": cfg.tracking.mlflow_experiment, "run_id": run.info.run_id}
    out.write({"mlflow.json": json.dumps(doc, indent=1).encode()})
    return mlflow


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: the config as MLflow parameters (dotted keys, as --set takes)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def read_events(uri: str, s3: S3Options = S3Options()) -> dict[str, dict[int, float | bytes]]:
    """What a run's TensorBoard events hold so far, {tag: {step: value}}: a float for a scalar, PNG
    bytes for an image (a later event file, written after a resume, wins). Without TensorBoard: e.g.
    to compare runs while they go."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float | bytes]] = {}
    logdir = storage.join(uri, TENSORBOARD_DIR)
    for name in storage.list_files(logdir, (), s3):
        if "tfevents" not in name:
            continue
        raw, at = storage.read_bytes(storage.join(logdir, name), s3), 0
        while at + 12 <= len(raw):  # TFRecords: length (8 bytes), its crc (4), an Event, its crc (4)
            (n,) = struct.unpack("<Q", raw[at : at + 8])
            event = event_pb2.Event.FromString(raw[at + 12 : at + 12 + n])
            at += 16 + n
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind in ("simple_value", "image"):
                    got = value.simple_value if kind == "simple_value" else value.image.encoded_image_string
                    out.setdefault(value.tag, {})[event.step] = got
    return out

"""Does refinement help on real data? The paper's Table 1 protocol, for image classification and
regression (a number or a vector per image; for directions such as gaze, the mean angle error).

Given a synthetic set, a refiner (or an already refined set) and labelled real sets:
1. Downstream task: the same small CNN, trained by a fixed recipe with several seeds on
   (a) raw synthetic, (b) refined synthetic and (c) real labelled images; error on the real test
   set, mean +- sd. Headline: relative error reduction of (b) over (a).
2. Realism: a classifier two-sample test (a fresh CNN learns to tell synthetic or refined images
   from real ones; held-out accuracy near 50% = indistinguishable), and the Frechet distance to
   the real test set in the feature space of the real-trained classifier.
3. Label preservation: accuracy of the real-trained classifier on raw vs refined synthetic images.
The classifiers train as Ray tasks, one CPU each, in parallel.
"""

from __future__ import annotations

import json
import re
import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator

from simgan_ray.apply.report import EvalReport, ReportedOn, Spread, markdown, reduction
from simgan_ray.common.errors import SimganError
from simgan_ray.measures import viz
from simgan_ray.measures.classifier import (
    Recipe,
    TaskNet,
    accuracy,
    frechet_distance,
    predict,
    primary_error,
    regression_errors,
    train_classifier,
    two_sample_accuracy,
)
from simgan_ray.model.export import load_export, refine_images, resolve_export
from simgan_ray.runtime.progress import read_reports
from simgan_ray.runtime.session import ensure_ray, gather
from simgan_ray.sets import shards
from simgan_ray.sets.data import head_columns, load_set
from simgan_ray.storage import ownership
from simgan_ray.storage.ownership import Output

_GROUP = re.compile(r"([A-Za-z0-9_.-]+)=(.+?)\.\.(.+)")  # NAME=FIRST..LAST


class EvalConfig(Recipe):
    """`evaluate`: the sets, the refiner (exactly one of `refiner` and `refined`), the sizes."""

    synthetic: str  # labelled synthetic set
    real_train: str  # labelled real set for the ceiling classifier (digits: MNIST dev)
    real_test: str  # labelled real set the errors are reported on (digits: MNIST test)
    real_pool: str  # unlabelled real images for the two-sample test (digits: MNIST real pool)
    out: str  # report directory
    refiner: str | None = None  # run or export; refines `synthetic` in memory
    refined: str | None = None  # or: a set written by `simgan-ray refine`
    seeds: int = Field(3, ge=1)
    train_images: int = Field(20_000, ge=1)  # per classifier (a), (b); (c) uses up to this many real ones
    test_images: int = Field(10_000, ge=1)
    # real_test of manifest kind "test" is read only with final: the one measurement of a
    # configuration chosen on val; recorded in the report.
    final: bool = False
    # regression: label_key holds a number or a list of numbers per image; the models (the same CNN,
    # one output per number, mean squared error) are scored by regression_errors.
    task: Literal["classification", "regression"] = "classification"
    overwrite: bool = False  # replace an earlier report at `out` (only what its record lists: `ownership`)
    groups: list[str] = []
    """the test errors also per group of test images, each NAME=FIRST..LAST: the ids from FIRST to LAST
    (compared as text, both included), e.g. MNIST's two writer populations"""
    group_label: str | None = None
    """or: one group per value of this field of the test set's labels"""

    @field_validator("groups")
    @classmethod
    def _id_ranges(cls, groups: list[str]) -> list[str]:
        for spec in groups:
            if not _GROUP.fullmatch(spec):
                raise ValueError(f"{spec!r} is not NAME=FIRST..LAST (a name of letters, digits, '.', '_', '-'; the "
                                 "first and last id of the range)")
        if len({spec.split("=", 1)[0] for spec in groups}) != len(groups):
            raise ValueError("two groups have the same name")
        return groups

    @field_validator("group_label")
    @classmethod
    def _one_kind_of_group(cls, label: str | None, info: ValidationInfo) -> str | None:
        if label and info.data.get("groups"):
            raise ValueError("give groups (id ranges) or a group label field, not both")
        return label


def group_indices(cfg: EvalConfig) -> dict[str, np.ndarray]:
    """The groups of `cfg` -> {name: indices into the test images evaluate reads}; {} without any.
    A group that holds no image of them is a SimganError naming it."""
    if not cfg.groups and not cfg.group_label:
        return {}
    rows = head_columns(cfg.real_test, cfg.test_images, cfg.s3)
    ids = rows["id"]
    if cfg.groups:
        bounds = {m[1]: (m[2], m[3]) for m in map(_GROUP.fullmatch, cfg.groups)}
        found = {name: [i for i, x in enumerate(ids) if first <= x <= last] for name, (first, last) in bounds.items()}
    else:
        values = []
        for image_id, label in zip(ids, rows["label"], strict=True):
            try:
                values.append(json.dumps(json.loads(label)[cfg.group_label]))
            except (TypeError, KeyError, ValueError):
                raise SimganError(f"{cfg.real_test}: image {image_id} has no label field {cfg.group_label!r} "
                                  "(--group-label)") from None
        found = {v: [i for i, x in enumerate(values) if x == v] for v in sorted(set(values))}
    for name, members in found.items():
        if not members:
            raise SimganError(f"group {name}: none of the {len(ids)} test images of {cfg.real_test} is in it")
    return {name: np.array(members, np.int64) for name, members in found.items()}


def _errors(net: TaskNet, x: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """The model's errors on (x, y): {"error": 1 - accuracy} for classes, regression_errors for targets."""
    if task == "classification":
        return {"error": 1.0 - accuracy(net, x, y)}
    return regression_errors(predict(net, x), y)


def _headline(errors: dict[str, float]) -> float:
    return errors["error"] if "error" in errors else errors[primary_error(errors)]


def _task_run(name: str, x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int,
              cfg: EvalConfig, groups: dict[str, np.ndarray]) -> dict:
    """One downstream model (a Ray task): train, then its errors on the real test set and each group of it."""
    torch.set_num_threads(1)  # one CPU per task; the tasks run side by side
    start = time.perf_counter()
    outputs = cfg.num_classes if y.ndim == 1 else y.shape[1]
    net = train_classifier(x, y, outputs, seed, cfg.epochs, cfg.batch_size, cfg.lr)
    errors = _errors(net, test_x, test_y, cfg.task)
    by_group = {g: _headline(_errors(net, test_x[idx], test_y[idx], cfg.task)) for g, idx in groups.items()}
    return {"source": name, "seed": seed, "test_error": _headline(errors), "errors": errors, "groups": by_group,
            "seconds": time.perf_counter() - start, "state": net.state_dict()}


def _two_sample(name: str, fake: np.ndarray, real: np.ndarray, seed: int, cfg: EvalConfig) -> dict:
    """Held-out accuracy of a fresh CNN telling `fake` (label 0) from `real` (label 1); a Ray task."""
    torch.set_num_threads(1)
    held_out, n = two_sample_accuracy(fake, real, seed, cfg)
    return {"source": name, "heldout_accuracy": held_out, "pairs": n}


def evaluate(cfg: EvalConfig, dry_run: bool = False) -> EvalReport | ownership.Plan:
    """Run the whole protocol; write report.json, report.md, samples.png and errors.png (and, for a
    training run's refiner, curves.png) to cfg.out (claimed:
    `ownership`). `dry_run`: the checks of the sets and the output only -> what the claim would do."""
    import ray

    if (cfg.refiner is None) == (cfg.refined is None):
        raise SimganError("give exactly one of --refiner (a run or export) and --refined (a refined set)")
    s3 = cfg.s3
    # What is read of a training run is its export: a report may live in the run's folder (runs/NAME/eval-val).
    inputs = {"--synthetic": cfg.synthetic, "--real-train": cfg.real_train, "--real-test": cfg.real_test,
              "--real-pool": cfg.real_pool, "--refined": cfg.refined,
              "--refiner": resolve_export(cfg.refiner, s3) if cfg.refiner else None}
    output = ownership.plan(cfg.out, "evaluate", s3, inputs=inputs, overwrite=cfg.overwrite)  # before the work
    for option, prefix in (("--real-train", cfg.real_train), ("--real-pool", cfg.real_pool)):
        shards.refuse_test_set(option, prefix, s3, "is never trained on: use dev for the ceiling, the real pool "
                               "for realism")
    report_kind = shards.read_manifest(cfg.real_test, s3).kind
    if not cfg.final:
        shards.refuse_test_kind("--real-test", cfg.real_test, report_kind, "is read once per reported configuration: "
                                "choose on val (its manifest kind 'val'), then report on test with --final, recorded "
                                "in the report")
    if dry_run:
        return output
    regression = cfg.task == "regression"
    syn_x, syn_y = load_set(cfg.synthetic, cfg.train_images, s3, cfg.label_key, regression)
    if cfg.refiner is not None:
        export = resolve_export(cfg.refiner, s3)
        refiner, _ = load_export(export, s3)
        ref_x, ref_y = refine_images(refiner, syn_x), syn_y
        refined_from = export
    else:
        ref_x, ref_y = load_set(cfg.refined, cfg.train_images, s3, cfg.label_key, regression)
        refined_from = cfg.refined
    real_x, real_y = load_set(cfg.real_train, cfg.train_images, s3, cfg.label_key, regression)
    test_x, test_y = load_set(cfg.real_test, cfg.test_images, s3, cfg.label_key, regression)
    groups = group_indices(cfg)
    pool_x, _ = load_set(cfg.real_pool, cfg.train_images, s3, None)
    shapes = {syn_x.shape[1:], ref_x.shape[1:], real_x.shape[1:], test_x.shape[1:], pool_x.shape[1:]}
    if len(shapes) != 1:
        raise SimganError(f"the sets have different image shapes: {sorted(shapes)}")
    if regression and len({y.shape[1] for y in (syn_y, ref_y, real_y, test_y)}) != 1:
        raise SimganError(f"the sets' {cfg.label_key!r} labels have different lengths")

    ensure_ray()
    task = ray.remote(num_cpus=1)(_task_run)
    sources = {"synthetic": (syn_x, syn_y), "refined": (ref_x, ref_y), "real": (real_x, real_y)}
    refs = [task.remote(name, ray.put(x), ray.put(y), test_x, test_y, seed, cfg, groups)
            for name, (x, y) in sources.items() for seed in range(cfg.seeds)]
    two = ray.remote(num_cpus=1)(_two_sample)
    realism_refs = [two.remote(name, x, pool_x, 0, cfg) for name, x in (("synthetic", syn_x), ("refined", ref_x))]
    done = gather(refs + realism_refs, "evaluate: classifiers trained")
    runs = done[: len(refs)]
    realism = {r["source"]: r for r in done[len(refs):]}

    errors = {name: Spread.of([r["test_error"] for r in runs if r["source"] == name]) for name in sources}
    ceiling = TaskNet(real_x.shape[1], cfg.num_classes if not regression else real_y.shape[1])
    ceiling.load_state_dict(next(r["state"] for r in runs if r["source"] == "real" and r["seed"] == 0))
    ceiling.eval()
    test_features = predict(ceiling, test_x, features=True)
    report = EvalReport(
        inputs={"synthetic": cfg.synthetic, "refined_from": refined_from, "real_train": cfg.real_train,
                "real_test": cfg.real_test, "real_pool": cfg.real_pool},
        reported_on=ReportedOn(kind=report_kind, final=cfg.final),
        recipe=cfg.model_dump(include={"seeds", "train_images", "test_images", "epochs", "batch_size", "lr",
                                       "label_key"}),
        counts={"synthetic": len(syn_x), "real_train": len(real_x), "real_test": len(test_x), "real_pool": len(pool_x)},
        test_error=errors,
        relative_error_reduction=reduction(errors),
        two_sample_accuracy={k: v["heldout_accuracy"] for k, v in realism.items()},
        frechet_distance={
            "synthetic": frechet_distance(predict(ceiling, syn_x, features=True), test_features),
            "refined": frechet_distance(predict(ceiling, ref_x, features=True), test_features),
        },
        label_preservation={"synthetic": accuracy(ceiling, syn_x, syn_y),
                            "refined": accuracy(ceiling, ref_x, ref_y)} if not regression else
                           {"synthetic": _headline(_errors(ceiling, syn_x, syn_y, cfg.task)),
                            "refined": _headline(_errors(ceiling, ref_x, ref_y, cfg.task))},
        classifier_seconds=sum(r["seconds"] for r in runs),
        task=cfg.task,
        groups={g: len(idx) for g, idx in groups.items()},
        group_error={g: {name: Spread.of([r["groups"][g] for r in runs if r["source"] == name]) for name in sources}
                     for g in groups},
    )
    if regression:  # every error measure, and which one the headline and label preservation use
        first = runs[0]["errors"]
        report.error_measure = primary_error(first)
        report.test_errors = {name: {k: Spread.of([r["errors"][k] for r in runs if r["source"] == name])
                                     for k in first} for name in sources}
    with ownership.claimed(cfg.out, "evaluate", s3, inputs=inputs, overwrite=cfg.overwrite) as out:
        _write_report(cfg, out, report, syn_x, ref_x, test_x)
    return report


def _write_report(cfg: EvalConfig, out: Output, report: EvalReport, syn_x: np.ndarray, ref_x: np.ndarray,
                  test_x: np.ndarray) -> None:
    s3 = cfg.s3
    n = min(16, len(syn_x))
    rows = [("synthetic", syn_x[:n]), ("refined", ref_x[:n]), ("real test", test_x[:n])]
    regression = cfg.task == "regression"
    unit, scale = (report.error_measure or "", 1.0) if regression else ("%", 100.0)
    files = {"report.json": report.to_json().encode(), "report.md": markdown(report).encode(),
             "samples.png": viz.image_grid(rows), "errors.png": viz.plot_errors(report.test_error, unit, scale)}
    if cfg.refiner is not None:  # a training run's curves, when the refiner came from one
        if metrics := read_reports(cfg.refiner, s3):
            files["curves.png"] = viz.plot_curves(metrics)
    out.write(files)

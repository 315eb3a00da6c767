"""`refine` and `evaluate`: the jobs that use a trained refiner."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from simgan_ray.cli.app import (
    EVAL_LOCATIONS,
    Common,
    ImageEncoding,
    ImageFormat,
    Overwrite,
    Task,
    app,
    note,
    shared,
)


@app.command()
@shared("s3_endpoint", "cluster", "address", "wait", "dry_run", "verbose", "json_")
def refine(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="refine job YAML (see jobs/refine-1m.yaml); options override it")]
    = None,
    model: Annotated[str | None, typer.Option(help="training run directory or refiner export (local or s3://)")]
    = None,
    input: Annotated[str | None, typer.Option("--input", help="image set to refine (e.g. a simulator output)")] = None,
    output: Annotated[str | None, typer.Option(help="output prefix for the refined set")] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per refiner forward pass [256]")] = None,
    concurrency: Annotated[int | None, typer.Option(help="refiner actors, each loads the model once [1]")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(help="GPUs per actor (0: CPU; bf16 autocast on GPU) [0]")]
    = None,
    cpus_per_worker: Annotated[float | None, typer.Option(help="CPUs per actor (its torch threads on CPU) [1]")]
    = None,
    format_: Annotated[
        ImageFormat | None,
        typer.Option("--format", help="png: also one PNG per image + labels.jsonl [default: parquet]"),
    ] = None,
    encoding: Annotated[ImageEncoding | None, typer.Option(help="the refined shards' image encoding: png, or raw "
                                                                "uint8 pixels [default: the input's]")] = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite/--no-overwrite", help="replace an output prefix holding another job's")
    ] = None,
    strict: Annotated[
        bool | None, typer.Option("--strict/--no-strict", help="fail on a corrupt input image instead of skipping it")
    ] = None,
    *,
    common: Common,
) -> None:
    """Refine a whole image set with a trained refiner, resumably: finished shards are kept."""
    import yaml

    from simgan_ray.apply.refine import load_refine_job, plan
    from simgan_ray.apply.refine import refine as run_refine
    from simgan_ray.runtime.cluster import JobSpec

    given = {"model": model, "input": input, "output": output, "batch_size": batch_size, "concurrency": concurrency,
             "gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker,
             "format": None if format_ is None else format_.value,
             "encoding": None if encoding is None else encoding.value, "overwrite": overwrite, "strict": strict,
             "s3": None if common.s3_endpoint is None else {"endpoint_url": common.s3_endpoint}}
    job = load_refine_job(config, {k: v for k, v in given.items() if v is not None})
    resolved = yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
    if common.verbose or common.dry_run:
        note(f"# refine job\n{resolved}")
    if common.dry_run:
        p = plan(job)
        return common.end_dry_run(f"refine {len(p.pending)} of {len(p.names)} shards ({p.manifest.count} images in "
                                  f"all) of {job.input} with {p.export}: {p.output.describe()}",
                                  ({"CPU": job.cpus_per_worker, "GPU": job.gpus_per_worker}, job.concurrency,
                                   "refine --concurrency, --cpus-per-worker, --gpus-per-worker", 0),
                                  {"--model": job.model, "--input": job.input, "--output": job.output})
    common.submit_if_cluster(lambda: JobSpec(
        ["refine", "--config", "refine.yaml"], {"refine.yaml": resolved}))
    s = run_refine(job)
    common.emit(f"refined {s.rows_out} of {s.rows_in} images into {s.output}: {s.shards_done} shards now, "
                f"{s.shards_skipped} already done; {s.bytes_written / 1e6:.1f} MB written in {s.seconds:.1f}s "
                f"({s.images_per_s:.0f} images/s); {len(s.skipped_images)} corrupt images skipped"
                + (f"; {len(s.corrupt_shards)} corrupt shard(s) skipped, first: {s.corrupt_shards[0]}"
                   if s.corrupt_shards else ""), {**dataclasses.asdict(s), "images_per_s": s.images_per_s})


@app.command()
@shared("s3_endpoint", "cluster", "address", "wait", "dry_run", "verbose")
def evaluate(
    ctx: typer.Context,
    synthetic: Annotated[str, typer.Option(help="labelled synthetic set")],
    real_train: Annotated[str, typer.Option(help="labelled real set for the ceiling classifier (digits: mnist/dev)")],
    real_test: Annotated[str, typer.Option(help="labelled real set errors are reported on (digits: mnist/test)")],
    real_pool: Annotated[str, typer.Option(help="unlabelled real images for the two-sample test (digits: mnist/real)")],
    out: Annotated[str, typer.Option(help="report directory: report.json, report.md, *.png")],
    refiner: Annotated[str | None, typer.Option(help="training run or refiner export")] = None,
    refined: Annotated[str | None, typer.Option(help="or: a set written by `simgan-ray refine`")] = None,
    label_key: Annotated[str, typer.Option(help="label field: the class, or with --task regression a number or a "
                                                "list of numbers (a gaze vector)")] = "digit",
    num_classes: Annotated[int, typer.Option(help="number of classes (classification)")] = 10,
    task: Annotated[Task, typer.Option(help="regression: errors as MAE, L2 and, for vectors, angle in degrees")]
    = Task.classification,
    seeds: Annotated[int, typer.Option(help="classifier seeds per training source")] = 3,
    train_images: Annotated[int, typer.Option(help="training images per classifier")] = 20000,
    test_images: Annotated[int, typer.Option(help="real test images")] = 10000,
    epochs: Annotated[int, typer.Option(help="classifier epochs")] = 3,
    final: Annotated[bool, typer.Option(help="report on a test set (manifest kind 'test'): once per configuration "
                                             "chosen on val; recorded in the report")] = False,
    groups: Annotated[list[str] | None, typer.Option(help="also report per group of test images: NAME=FIRST..LAST, "
                                                          "the ids from FIRST to LAST; repeat for each group")] = None,
    group_label: Annotated[str | None, typer.Option(help="or: one group per value of this label field")] = None,
    overwrite: Overwrite = False,
    *,
    common: Common,
) -> None:
    """Table 1 on real data: classifiers trained on raw vs refined synthetic vs real, realism, labels."""
    from simgan_ray.apply.evaluate import EvalConfig
    from simgan_ray.apply.evaluate import evaluate as run_evaluate
    from simgan_ray.apply.report import markdown
    from simgan_ray.common.settings import from_options
    from simgan_ray.runtime.cluster import JobSpec, command_argv

    cfg = from_options(EvalConfig, synthetic=synthetic, real_train=real_train, real_test=real_test, real_pool=real_pool,
                   out=out, refiner=refiner, refined=refined, label_key=label_key, num_classes=num_classes,
                   seeds=seeds, train_images=train_images, test_images=test_images, epochs=epochs, final=final,
                   task=task.value, overwrite=overwrite, s3=common.s3(), groups=groups or [],
                   group_label=group_label)
    if common.dry_run:
        return common.end_dry_run(f"evaluate into {run_evaluate(cfg, dry_run=True).describe()}",
                                  locations={f"--{k.replace('_', '-')}": getattr(cfg, k) for k in EVAL_LOCATIONS})
    common.submit_if_cluster(lambda: JobSpec(command_argv(ctx, note), {}))
    typer.echo(markdown(run_evaluate(cfg)))
    typer.echo(f"report: {out}/report.json, {out}/report.md, {out}/samples.png, {out}/errors.png")

"""`probe`, `train` and `tune`: the commands that train refiners (and make the probe that scores them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simgan_ray.cli.app import (
    Common,
    Overwrite,
    app,
    note,
    shared,
)


@app.command()
@shared("s3_endpoint", "cluster", "address", "wait", "dry_run", "verbose")
def probe(
    ctx: typer.Context,
    real_train: Annotated[str, typer.Option(help="labelled real set the probe classifier learns from")],
    reference: Annotated[str, typer.Option(help="real images whose features are the reference, not the test set "
                                                "(digits: mnist/real, the real pool)")],
    out: Annotated[str, typer.Option(help="probe directory (probe.pt, probe.json)")],
    label_key: Annotated[str, typer.Option(help="class field of the JSON labels")] = "digit",
    num_classes: Annotated[int, typer.Option(help="number of classes")] = 10,
    train_images: Annotated[int, typer.Option(help="labelled images read; a tenth is held out for the error")] = 10000,
    reference_images: Annotated[int, typer.Option(help="reference images")] = 10000,
    epochs: Annotated[int, typer.Option(help="epochs")] = 3,
    overwrite: Overwrite = False,
    *,
    common: Common,
) -> None:
    """Make the real-data probe that scores refiners during training and sweeps (probe.uri)."""
    from simgan_ray.common.settings import from_options
    from simgan_ray.measures.probe import ProbeSpec, build_probe
    from simgan_ray.runtime.cluster import JobSpec, command_argv

    spec = from_options(ProbeSpec, real_train=real_train, reference=reference, out=out, label_key=label_key,
                        num_classes=num_classes, train_images=train_images, reference_images=reference_images,
                        epochs=epochs, overwrite=overwrite, s3=common.s3())
    if common.dry_run:
        return common.end_dry_run(f"probe into {build_probe(spec, dry_run=True).describe()}",
                                  locations={"--real-train": real_train, "--reference": reference, "--out": out})
    common.submit_if_cluster(lambda: JobSpec(command_argv(ctx, note), {}))
    meta = build_probe(spec)
    typer.echo(f"probe written to {out}: its classifier's error on {meta.heldout_images} held-out images of "
          f"{real_train} is {100 * meta.heldout_error:.2f}%; reference: {meta.reference_images} images "
          f"of {reference}")


@app.command()
@shared("cluster", "address", "wait", "dry_run", "verbose", "json_")
def train(
    config: Annotated[Path | None, typer.Option(help="YAML run config (see jobs/digits.yaml)")] = None,
    storage: Annotated[str | None, typer.Option(help="run storage: local dir or s3://bucket/prefix")] = None,
    name: Annotated[str | None, typer.Option(help="run name; the run lives in <storage>/<name>")] = None,
    num_workers: Annotated[int | None, typer.Option(help="Ray Train workers")] = None,
    gpus_per_worker: Annotated[int | None, typer.Option(help="1: one GPU per worker (NCCL); 0: CPU (gloo) [0]")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(help="CPUs per worker (its torch threads on CPU)")] = None,
    seed: Annotated[int | None, typer.Option(help="the run's seed (initialisation, data order)")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="FIELD=VALUE", help="override any field: --set schedule.steps=50 (repeatable)"),
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue the run <storage>/<name> from its latest checkpoint")] = False,
    auto_resume: Annotated[bool, typer.Option(help="resume the run if it has a checkpoint, else start it: one "
                                                   "command line for a first attempt and every retry")] = False,
    allow_changes: Annotated[bool, typer.Option(help="resume with settings changed beyond steps, report and "
                                                     "checkpoint intervals and tracking (the refusal lists them)")]
    = False,
    *,
    common: Common,
) -> None:
    """Train a refiner: validate the config, write it beside the run, train, export."""
    from simgan_ray.common.yamlfiles import parse_override
    from simgan_ray.runtime.cluster import JobSpec
    from simgan_ray.runtime.progress import ReportFollower
    from simgan_ray.training.config import dump_config, load_config
    from simgan_ray.training.train import DATA_CPUS, RESOURCE_FIELDS, fit, preflight, worker_resources

    overrides = dict(parse_override(s) for s in set_ or [])
    for key, value in (("run.storage", storage), ("run.name", name), ("run.num_workers", num_workers),
                       ("run.gpus_per_worker", gpus_per_worker), ("run.cpus_per_worker", cpus_per_worker),
                       ("seed", seed)):
        if value is not None:
            overrides[key] = value
    cfg = load_config(config, overrides)
    if common.verbose or common.dry_run:
        note(f"# resolved config -> {cfg.run_uri}/config.yaml\n{dump_config(cfg)}")
    if common.dry_run:
        checked = preflight(cfg, resume="auto" if auto_resume else resume, allow_changes=allow_changes)
        shape = "x".join(map(str, checked.synthetic.shape))
        return common.end_dry_run(
            f"{'resume' if checked.resumes else 'start'} run {checked.run_uri} on {cfg.run.num_workers} worker(s): "
            f"{checked.synthetic.count} synthetic and {checked.real.count} real {shape} images, "
            f"{cfg.schedule.total_steps} steps",
            (worker_resources(cfg), cfg.run.num_workers, RESOURCE_FIELDS, DATA_CPUS),
            {"data.synthetic": cfg.data.synthetic, "data.real": cfg.data.real, "probe.uri": cfg.probe.uri,
             "run.storage": cfg.run.storage})
    common.submit_if_cluster(lambda: JobSpec(
        ["train", "--config", "config.yaml", *(["--auto-resume"] if auto_resume else ["--resume"] if resume else []),
         *(["--allow-changes"] if allow_changes else []), *(["--verbose"] if common.verbose else []),
         *(["--json"] if common.json_ else [])],
        {"config.yaml": dump_config(cfg)}))
    note(f"training {cfg.run_uri} ({cfg.schedule.total_steps} steps on {cfg.run.num_workers} worker(s); its config: "
         f"{cfg.run_uri}/config.yaml)")
    with ReportFollower(cfg.run_uri, cfg.schedule.total_steps, cfg.data.s3):
        result = fit(cfg, resume="auto" if auto_resume else resume, allow_changes=allow_changes)
    last = result.metrics[-1] if result.metrics else {}
    if result.skipped:
        note(f"skipped {len(result.skipped)} corrupt item(s), listed in {result.run_uri}/skipped.txt; "
             f"first: {result.skipped[0]}")
    pictures = [f"{result.run_uri}/samples.png", f"{result.run_uri}/curves.png"]
    common.emit(
        f"done: step {result.step}; export {result.export_uri}"
        + (f" (weights of step {result.export_step}, the lowest probe_fd)" if result.export_step != result.step else "")
        + f"; pictures {', '.join(pictures)}; last metrics "
        + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)),
        {"run": result.run_uri, "step": result.step, "export": result.export_uri, "export_step": result.export_step,
         "pictures": pictures, "metrics": last, "skipped": len(result.skipped)})


@app.command()
@shared("cluster", "address", "wait", "dry_run", "verbose")
def tune(
    config: Annotated[Path, typer.Option(help="tune spec YAML (see jobs/digits-tune.yaml)")],
    name: Annotated[str | None, typer.Option(help="sweep name; results in <storage>/<name>")] = None,
    resume: Annotated[bool, typer.Option(help="continue the sweep <storage>/<name> where it stopped")] = False,
    num_samples: Annotated[int | None, typer.Option(help="trials")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="FIELD=VALUE", help="override a field of the base train config (repeatable)"),
    ] = None,
    *,
    common: Common,
) -> None:
    """Sweep train-config fields with ASHA or PBT, each trial a Ray Train run, ranked by the probe metric."""
    import yaml

    from simgan_ray.common.yamlfiles import parse_override
    from simgan_ray.runtime.cluster import JobSpec
    from simgan_ray.sweeps.spec import load_spec
    from simgan_ray.sweeps.tune import preflight, run_sweep
    from simgan_ray.training.config import dump_config

    overrides = {k: v for k, v in (("name", name), ("num_samples", num_samples)) if v is not None}
    spec, base = load_spec(config, overrides, dict(parse_override(s) for s in set_ or []))
    note(f"# sweep {spec.name}: {spec.trials} trials over {', '.join(spec.search)}"
         + (f"; base config:\n{dump_config(base)}" if common.verbose or common.dry_run else ""))
    if common.dry_run:
        return common.end_dry_run(f"sweep {spec.trials} trials ({spec.scheduler}, by {spec.metric}) into "
                                  f"{preflight(spec, base, resume)}")
    resolved = {**spec.model_dump(mode="json"), "base": "base.yaml", "overrides": {}}  # base holds the overrides
    common.submit_if_cluster(lambda: JobSpec(
        ["tune", "--config", "tune.yaml", *(["--resume"] if resume else [])],
        {"tune.yaml": yaml.safe_dump(resolved, sort_keys=False), "base.yaml": dump_config(base)}))
    summary = run_sweep(spec, base, resume)
    best = summary.best
    typer.echo(f"best trial {best.trial}: {spec.metric}={best.metrics[spec.metric]:.4g} with "
               + ", ".join(f"{k}={v}" for k, v in best.params.items())
               + f"; results in {summary.out}/results.md, best config {summary.out}/best.yaml, "
               f"refiner {summary.out}/best/export")

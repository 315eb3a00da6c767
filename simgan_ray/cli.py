"""`simgan-ray` command line: thin typed shells over the package's functions.

Errors become exit codes only here: a SimganError (bad input the user can fix) -> one line and
exit 2; a failed training run -> the workers' root cause in one line and exit 1.
"""

from __future__ import annotations

import dataclasses
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from simgan_ray.errors import SimganError, root_cause, user_error
from simgan_ray.runtime import exit_interrupted, on_stop_signal, stopped_by

# click's plain help (flags as --x / --no-x, choices as [a|b]), -h as well as --help.
HELP = {"no_args_is_help": True, "rich_markup_mode": None, "context_settings": {"help_option_names": ["-h", "--help"]}}
app = typer.Typer(help="Distributed SimGAN (Shrivastava et al., CVPR 2017) on Ray.", pretty_exceptions_enable=False,
                  **HELP)
data_app = typer.Typer(help="Fetch and prepare real image sets.", **HELP)

# The values of enumerated options, shown by --help as choices and checked by click.
ImageFormat = StrEnum("ImageFormat", ["parquet", "png"])
Task = StrEnum("Task", ["classification", "regression"])
Style = StrEnum("Style", ["mnist", "color"])
Fit = StrEnum("Fit", ["resize", "crop", "pad"])
Kind = StrEnum("Kind", ["real", "synthetic", "dev", "val", "test"])
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from simgan_ray import __version__

        typer.echo(f"simgan-ray {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Distributed SimGAN (Shrivastava et al., CVPR 2017) on Ray."""

S3Endpoint = Annotated[
    str | None, typer.Option("--s3-endpoint", help="S3-compatible endpoint URL, e.g. http://127.0.0.1:9000")
]


Cluster = Annotated[
    Path | None,
    typer.Option(help="Ray cluster-launcher YAML (cluster/*.yaml): run this command there as a Ray Job"),
]
Address = Annotated[
    str | None, typer.Option(help="or the cluster's Jobs API directly: http://HEAD:8265 or ray://HEAD:10001")
]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="on a cluster: follow the job's logs to its end")]
DryRun = Annotated[bool, typer.Option(help="check the config, data, storage and --cluster file, print what would "
                                           "run, and exit: nothing is started or written")]
Overwrite = Annotated[bool, typer.Option(help="replace this command's earlier output there: deletes only the files "
                                              "its record lists, and refuses if anything else is there")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="also print Ray's own output (its INFO lines, the "
                                                               "workers' output, Ray Data's progress bars)")]
Json = Annotated[bool, typer.Option("--json", help="print the summary on stdout as one JSON object")]


def _echo(msg: str) -> None:
    """Logs, notes and progress: stderr."""
    typer.echo(msg, err=True)


def _result(text: str, summary: dict, as_json: bool) -> None:
    """A command's result: stdout, as text or (`--json`) as one JSON object."""
    import json

    typer.echo(json.dumps(summary) if as_json else text)


def _start(verbose: bool) -> None:
    from simgan_ray.runtime import set_verbose

    set_verbose(verbose)


def _submit_if_cluster(cluster: Path | None, address: str | None, wait: bool, job) -> None:
    from simgan_ray.cluster import submit_if_asked

    submit_if_asked(cluster, address, wait, job, _echo)


def _dry_run(cluster: Path | None, what: str) -> None:
    """The end of a --dry-run: check --cluster's file as `ray up` would (offline), say what would run."""
    from simgan_ray.cluster import load_cluster

    if cluster is not None:
        load_cluster(cluster)
    _echo(f"dry run: {what}; nothing started")


def _s3(endpoint: str | None):
    from simgan_ray.storage import S3Options

    try:
        return S3Options(endpoint_url=endpoint)
    except ValueError as e:
        raise SimganError(f"--s3-endpoint: {str(e).removeprefix('endpoint_url: ')}") from None


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="YAML run config (see jobs/digits.yaml)")] = None,
    storage: Annotated[str | None, typer.Option(help="run storage: local dir or s3://bucket/prefix")] = None,
    name: Annotated[str | None, typer.Option(help="run name; the run lives in <storage>/<name>")] = None,
    num_workers: Annotated[int | None, typer.Option(help="Ray Train workers")] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--cpu", help="one GPU per worker (NCCL) or CPU (gloo)")] = None,
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
    cluster: Cluster = None,
    address: Address = None,
    wait: Wait = True,
    dry_run: DryRun = False,
    verbose: Verbose = False,
    json_: Json = False,
) -> None:
    """Train a refiner: validate the config, write it beside the run, train, export."""
    from simgan_ray.cluster import JobSpec
    from simgan_ray.config import dump_config, load_config, parse_override
    from simgan_ray.progress import ReportFollower
    from simgan_ray.train import fit, preflight

    _start(verbose)
    overrides = dict(parse_override(s) for s in set_ or [])
    for key, value in (("run.storage", storage), ("run.name", name), ("run.num_workers", num_workers),
                       ("run.use_gpu", gpu)):
        if value is not None:
            overrides[key] = value
    cfg = load_config(config, overrides)
    if verbose or dry_run:
        _echo(f"# resolved config -> {cfg.run_uri}/config.yaml\n{dump_config(cfg)}")
    if dry_run:
        checked = preflight(cfg, resume="auto" if auto_resume else resume, allow_changes=allow_changes)
        shape = "x".join(map(str, checked.synthetic.shape))
        return _dry_run(cluster, f"{'resume' if checked.resumes else 'start'} run {checked.run_uri} on "
                        f"{cfg.run.num_workers} worker(s): {checked.synthetic.count} synthetic and {checked.real.count}"
                        f" real {shape} images, {cfg.schedule.total_steps} steps")
    _submit_if_cluster(cluster, address, wait, lambda: JobSpec(
        ["train", "--config", "config.yaml", *(["--auto-resume"] if auto_resume else ["--resume"] if resume else []),
         *(["--allow-changes"] if allow_changes else []), *(["--verbose"] if verbose else []),
         *(["--json"] if json_ else [])],
        {"config.yaml": dump_config(cfg)}))
    _echo(f"training {cfg.run_uri} ({cfg.schedule.total_steps} steps on {cfg.run.num_workers} worker(s); its config: "
          f"{cfg.run_uri}/config.yaml)")
    with ReportFollower(cfg.run_uri, cfg.schedule.total_steps, cfg.data.s3):
        result = fit(cfg, resume="auto" if auto_resume else resume, allow_changes=allow_changes)
    last = result.metrics[-1] if result.metrics else {}
    if result.skipped:
        _echo(f"skipped {len(result.skipped)} corrupt item(s), listed in {result.run_uri}/skipped.txt; "
              f"first: {result.skipped[0]}")
    pictures = [f"{result.run_uri}/samples.png", f"{result.run_uri}/curves.png"]
    _result(
        f"done: step {result.step}; export {result.export_uri}"
        + (f" (weights of step {result.export_step}, the lowest probe_fd)" if result.export_step != result.step else "")
        + f"; pictures {', '.join(pictures)}; last metrics "
        + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)),
        {"run": result.run_uri, "step": result.step, "export": result.export_uri, "export_step": result.export_step,
         "pictures": pictures, "metrics": last, "skipped": len(result.skipped)}, json_)


@app.command()
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
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite/--no-overwrite", help="replace an output prefix holding another job's")
    ] = None,
    strict: Annotated[
        bool | None, typer.Option("--strict/--no-strict", help="fail on a corrupt input image instead of skipping it")
    ] = None,
    s3_endpoint: S3Endpoint = None,
    cluster: Cluster = None,
    address: Address = None,
    wait: Wait = True,
    dry_run: DryRun = False,
    verbose: Verbose = False,
    json_: Json = False,
) -> None:
    """Refine a whole image set with a trained refiner, resumably: finished shards are kept."""
    _start(verbose)
    import yaml

    from simgan_ray.cluster import JobSpec
    from simgan_ray.refine import load_refine_job, plan
    from simgan_ray.refine import refine as run_refine

    given = {"model": model, "input": input, "output": output, "batch_size": batch_size, "concurrency": concurrency,
             "gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker,
             "png": None if format_ is None else format_ == "png", "overwrite": overwrite, "strict": strict,
             "s3": None if s3_endpoint is None else {"endpoint_url": s3_endpoint}}
    job = load_refine_job(config, {k: v for k, v in given.items() if v is not None})
    resolved = yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
    if verbose or dry_run:
        _echo(f"# refine job\n{resolved}")
    if dry_run:
        p = plan(job)
        return _dry_run(cluster, f"refine {len(p.pending)} of {len(p.names)} shards ({p.manifest.count} images in "
                        f"all) of {job.input} with {p.export}: {p.output.describe()}")
    _submit_if_cluster(cluster, address, wait, lambda: JobSpec(
        ["refine", "--config", "refine.yaml"], {"refine.yaml": resolved}))
    s = run_refine(job)
    _result(f"refined {s.rows_out} of {s.rows_in} images into {s.output}: {s.shards_done} shards now, "
          f"{s.shards_skipped} already done; {s.bytes_written / 1e6:.1f} MB written in {s.seconds:.1f}s "
          f"({s.images_per_s:.0f} images/s); {len(s.skipped_images)} corrupt images skipped"
          + (f"; {len(s.corrupt_shards)} corrupt shard(s) skipped, first: {s.corrupt_shards[0]}"
             if s.corrupt_shards else ""), {**dataclasses.asdict(s), "images_per_s": s.images_per_s}, json_)


@app.command()
def evaluate(
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
    overwrite: Overwrite = False,
    s3_endpoint: S3Endpoint = None,
    dry_run: DryRun = False,
    verbose: Verbose = False,
) -> None:
    """Table 1 on real data: classifiers trained on raw vs refined synthetic vs real, realism, labels."""
    _start(verbose)
    from simgan_ray.config import from_options
    from simgan_ray.evaluate import EvalConfig, markdown
    from simgan_ray.evaluate import evaluate as run_evaluate

    cfg = from_options(EvalConfig, synthetic=synthetic, real_train=real_train, real_test=real_test, real_pool=real_pool,
                   out=out, refiner=refiner, refined=refined, label_key=label_key, num_classes=num_classes,
                   seeds=seeds, train_images=train_images, test_images=test_images, epochs=epochs, final=final,
                   task=task.value, overwrite=overwrite, s3=_s3(s3_endpoint))
    if dry_run:
        return _dry_run(None, f"evaluate into {run_evaluate(cfg, dry_run=True).describe()}")
    typer.echo(markdown(run_evaluate(cfg)))
    typer.echo(f"report: {out}/report.json, {out}/report.md, {out}/samples.png, {out}/errors.png")


@app.command()
def probe(
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
    s3_endpoint: S3Endpoint = None,
    dry_run: DryRun = False,
    verbose: Verbose = False,
) -> None:
    """Make the real-data probe that scores refiners during training and sweeps (probe.uri)."""
    _start(verbose)
    from simgan_ray.config import from_options
    from simgan_ray.probe import ProbeSpec, build_probe

    spec = from_options(ProbeSpec, real_train=real_train, reference=reference, out=out, label_key=label_key,
                        num_classes=num_classes, train_images=train_images, reference_images=reference_images,
                        epochs=epochs, overwrite=overwrite, s3=_s3(s3_endpoint))
    if dry_run:
        return _dry_run(None, f"probe into {build_probe(spec, dry_run=True).describe()}")
    meta = build_probe(spec)
    typer.echo(f"probe written to {out}: its classifier's error on {meta['heldout_images']} held-out images of "
          f"{real_train} is {100 * meta['heldout_error']:.2f}%; reference: {meta['reference_images']} images "
          f"of {reference}")


@app.command()
def tune(
    config: Annotated[Path, typer.Option(help="tune spec YAML (see jobs/digits-tune.yaml)")],
    name: Annotated[str | None, typer.Option(help="sweep name; results in <storage>/<name>")] = None,
    num_samples: Annotated[int | None, typer.Option(help="trials")] = None,
    cluster: Cluster = None,
    address: Address = None,
    wait: Wait = True,
    dry_run: DryRun = False,
    verbose: Verbose = False,
) -> None:
    """Sweep train-config fields with ASHA or PBT, each trial a Ray Train run, ranked by the probe metric."""
    _start(verbose)
    import yaml

    from simgan_ray.cluster import JobSpec
    from simgan_ray.config import dump_config
    from simgan_ray.tune import load_spec, preflight, run_sweep

    overrides = {k: v for k, v in (("name", name), ("num_samples", num_samples)) if v is not None}
    spec, base = load_spec(config, overrides)
    _echo(f"# sweep {spec.name}: {spec.num_samples} trials over {', '.join(spec.search)}"
          + (f"; base config:\n{dump_config(base)}" if verbose or dry_run else ""))
    if dry_run:
        return _dry_run(cluster, f"sweep {spec.num_samples} trials ({spec.scheduler}, by {spec.metric}) into "
                        f"{preflight(spec, base)}")
    resolved = {**spec.model_dump(mode="json"), "base": "base.yaml", "overrides": {}}  # base holds the overrides
    _submit_if_cluster(cluster, address, wait, lambda: JobSpec(
        ["tune", "--config", "tune.yaml"], {"tune.yaml": yaml.safe_dump(resolved, sort_keys=False),
                                            "base.yaml": dump_config(base)}))
    summary = run_sweep(spec, base)
    best = summary["best"]
    typer.echo(f"best trial {best['trial']}: {spec.metric}={best[spec.metric]:.4g} with "
          + ", ".join(f"{k}={best[k]}" for k in spec.search)
          + f"; results in {summary['out']}/results.md, best config {summary['out']}/best.yaml, "
          f"refiner {summary['out']}/best/export")


def _interrupted(signum: int) -> NoReturn:
    exit_interrupted(signum, next((a for a in sys.argv[1:] if not a.startswith("-")), ""))


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, on_stop_signal)  # and again once Ray has started (runtime.ensure_ray)
    try:
        code = app(standalone_mode=False)
    except SimganError as e:
        # Raised inside a Ray task, it arrives as RayTaskError(SimganError): print the original.
        _echo(f"error: {user_error(e)}")
        sys.exit(2)
    except _click_exception() as e:  # usage errors: click's own message and exit code 2
        e.show()
        sys.exit(e.exit_code)
    except typer.Abort:
        _echo("Aborted!")
        sys.exit(1)
    except KeyboardInterrupt:
        _interrupted(stopped_by())
    except Exception as e:
        from ray.train import TrainingFailedError

        if (cause := user_error(e)) is not None:  # e.g. Ray Data's UserCodeException of a refine actor
            _echo(f"error: {cause}")
            sys.exit(2)
        if not isinstance(e, TrainingFailedError):
            raise
        _echo(f"error: training failed: {root_cause(e)}")
        sys.exit(1)
    if code == 128 + signal.SIGINT:  # typer's answer to a KeyboardInterrupt in a command
        _interrupted(stopped_by())
    sys.exit(code or 0)


def _click_exception() -> type[Exception]:
    """ClickException of the click that typer runs on: typer 0.2x vendors its own copy (a private
    module), older releases use click itself; `typer.BadParameter`, public in both, derives from it."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


# The commands that make image sets live in their own module; importing it registers them on `app`.
from simgan_ray import cli_sets  # noqa: E402, F401

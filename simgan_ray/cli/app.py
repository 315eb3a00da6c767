"""The `simgan-ray` app and what its commands share: the typed options, the enumerated values,
and how a command prints (notes and progress on stderr, its result on stdout), ends a dry run and
submits itself to a cluster. The commands register on `app` from their own modules."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from simgan_ray.common.errors import SimganError

# click's plain help (flags as --x / --no-x, choices as [a|b]), -h as well as --help.
HELP = {"no_args_is_help": True, "rich_markup_mode": None, "context_settings": {"help_option_names": ["-h", "--help"]}}
app = typer.Typer(help="Distributed SimGAN (Shrivastava et al., CVPR 2017) on Ray.", pretty_exceptions_enable=False,
                  **HELP)
data_app = typer.Typer(help="Fetch and prepare real image sets.", **HELP)

# evaluate's options naming data locations (noted by a dry run for a cluster when local).
EVAL_LOCATIONS = ("synthetic", "refiner", "refined", "real_train", "real_test", "real_pool", "out")

# The values of enumerated options, shown by --help as choices and checked by click.
ImageFormat = StrEnum("ImageFormat", ["parquet", "png"])
ImageEncoding = StrEnum("ImageEncoding", ["png", "raw"])
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
Encoding = Annotated[ImageEncoding, typer.Option(help="how the shards hold each image: png, or raw uint8 pixels "
                                                     "(zstd-compressed; decoding is a reshape)")]


def note(msg: str) -> None:
    """Logs, notes and progress: stderr."""
    typer.echo(msg, err=True)


def emit_result(text: str, summary: dict, as_json: bool) -> None:
    """A command's result: stdout, as text or (`--json`) as one JSON object."""
    import json

    typer.echo(json.dumps(summary) if as_json else text)


def configure_output(verbose: bool) -> None:
    from simgan_ray.runtime.session import set_verbose

    set_verbose(verbose)


def submit_if_cluster(cluster: Path | None, address: str | None, wait: bool, job) -> None:
    from simgan_ray.runtime.cluster import submit_if_asked

    submit_if_asked(cluster, address, wait, job, note)


def end_dry_run(what: str, cluster: Path | None = None, address: str | None = None,
             needs: tuple[dict[str, float], int, str, float] = ({"CPU": 1}, 1, "", 0),
             locations: dict[str, str | None] | None = None) -> None:
    """The end of a --dry-run: where the command would run, checked as far as can be without starting
    or submitting anything (--cluster's file as `ray up` checks it, that the cluster's Jobs API
    answers, the local paths its nodes would not see; or RAY_ADDRESS, or whether `needs` (per
    worker, workers, the options asking, spare CPUs) fit a local Ray here), then what would run."""
    from simgan_ray.runtime.cluster import load_cluster, plan_submission
    from simgan_ray.runtime.session import plan_here

    if cluster is not None:
        load_cluster(cluster)
    where = plan_submission(cluster, address, locations or {}, note) or plan_here(*needs)
    note(f"dry run: {what}, {where}; nothing started")


def s3_options(endpoint: str | None):
    from simgan_ray.storage import S3Options

    try:
        return S3Options(endpoint_url=endpoint)
    except ValueError as e:
        raise SimganError(f"--s3-endpoint: {str(e).removeprefix('endpoint_url: ')}") from None



"""The `simgan-ray` app and what its commands share: the typed options, the enumerated values,
and how a command prints (notes and progress on stderr, its result on stdout), ends a dry run and
submits itself to a cluster. The commands register on `app` from their own modules."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
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


@dataclasses.dataclass(frozen=True)
class Common:
    """The options every command shares, given to it as one argument by `shared`: where it runs (here, on
    `--cluster` or at `--address`), whether it only checks (`--dry-run`) and how it prints."""

    s3_endpoint: str | None = None
    cluster: Path | None = None
    address: str | None = None
    wait: bool = True
    dry_run: bool = False
    verbose: bool = False
    json_: bool = False

    def s3(self):
        """--s3-endpoint as the storage layer's options (a bad URL is named as the option's)."""
        from simgan_ray.storage import S3Options

        try:
            return S3Options(endpoint_url=self.s3_endpoint)
        except ValueError as e:
            raise SimganError(f"--s3-endpoint: {str(e).removeprefix('endpoint_url: ')}") from None

    def emit(self, text: str, summary: dict) -> None:
        """The command's result: stdout, as text or (`--json`) as one JSON object."""
        typer.echo(json.dumps(summary) if self.json_ else text)

    def submit_if_cluster(self, job) -> None:
        """With --cluster or --address: submit `job()` (a JobSpec) there, follow it (--wait) and exit."""
        from simgan_ray.runtime.cluster import submit_if_asked

        submit_if_asked(self.cluster, self.address, self.wait, job, note)

    def end_dry_run(self, what: str, needs: tuple[dict[str, float], int, str, float] = ({"CPU": 1}, 1, "", 0),
                    locations: dict[str, str | None] | None = None) -> None:
        """The end of a --dry-run: where the command would run, checked as far as can be without starting
        or submitting anything (--cluster's file as `ray up` checks it, that the cluster's Jobs API
        answers, the local paths its nodes would not see; or RAY_ADDRESS, or whether `needs` (per
        worker, workers, the options asking, spare CPUs) fit a local Ray here), then what would run."""
        from simgan_ray.runtime.cluster import load_cluster, plan_submission
        from simgan_ray.runtime.session import plan_here

        if self.cluster is not None:
            load_cluster(self.cluster)
        where = plan_submission(self.cluster, self.address, locations or {}, note) or plan_here(*needs)
        note(f"dry run: {what}, {where}; nothing started")


# Each shared option: its typed declaration and its default (Common's).
SHARED_OPTIONS = {"s3_endpoint": S3Endpoint, "cluster": Cluster, "address": Address, "wait": Wait,
                  "dry_run": DryRun, "verbose": Verbose, "json_": Json}


def shared(*names: str):
    """Give a typer command the shared options `names` (declared once, above; listed after its own
    options in --help) as one `common: Common` argument, Ray's output already set by --verbose.
    typer reads a command's options from its signature, so the wrapper shows the command's own
    parameters plus these, and hands the command the rest."""

    def wrap(fn):
        hints = typing.get_type_hints(fn, include_extras=True)  # the command module's string annotations, resolved
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(fn).parameters.values()
               if p.name != "common"]
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=SHARED_OPTIONS[n],
                                   default=getattr(Common, n)) for n in names]

        @functools.wraps(fn)
        def command(**given):
            common = Common(**{n: given.pop(n) for n in names})
            from simgan_ray.runtime.session import set_verbose

            set_verbose(common.verbose)
            return fn(**given, common=common)

        command.__signature__ = inspect.Signature(own + extra)
        command.__annotations__ = {p.name: p.annotation for p in own + extra}
        return command

    return wrap

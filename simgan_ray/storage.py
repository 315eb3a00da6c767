"""The only module that knows about object storage.

A location is a local path, a `file://` URI or an `s3://bucket/prefix` URI. S3-compatible servers
(MinIO, Ceph, moto) are reached through an explicit endpoint in the config: pyarrow does not read
one from the environment. Credentials come from the usual AWS environment/profile chain; they are
never stored in configs or printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow.fs as pafs

from simgan_ray.errors import SimganError


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None  # e.g. "http://127.0.0.1:9000" for MinIO/moto
    region: str | None = None

    __pydantic_config__ = {"extra": "forbid"}


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _local_path(uri: str) -> str:
    return str(Path(uri.removeprefix("file://")).expanduser().resolve())


@cache
def _s3_filesystem(options: S3Options) -> pafs.S3FileSystem:
    kwargs: dict = {}
    if options.region:
        kwargs["region"] = options.region
    if options.endpoint_url:
        scheme, _, host = options.endpoint_url.partition("://")
        kwargs["endpoint_override"] = host or scheme
        kwargs["scheme"] = scheme if host else "https"
        kwargs.setdefault("region", "us-east-1")
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, options: S3Options = S3Options()) -> tuple[pafs.FileSystem, str]:
    """URI -> (pyarrow filesystem, path inside it) as Ray Data and Ray Train expect them."""
    if is_s3(uri):
        return _s3_filesystem(options), uri.removeprefix("s3://").rstrip("/")
    return pafs.LocalFileSystem(), _local_path(uri)


def normalize(uri: str) -> str:
    """Canonical spelling: absolute local path, or s3://bucket/key without trailing slash."""
    return uri.rstrip("/") if is_s3(uri) else _local_path(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts]) if is_s3(uri) else os.path.join(uri, *parts)


def exists(uri: str, options: S3Options = S3Options()) -> bool:
    fs, path = resolve(uri, options)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as e:
        raise SimganError(f"cannot reach {uri}: {e}") from e


def read_bytes(uri: str, options: S3Options = S3Options()) -> bytes:
    fs, path = resolve(uri, options)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise SimganError(f"{uri}: not found") from e


def write_bytes(uri: str, data: bytes, options: S3Options = S3Options()) -> None:
    """Write a whole object; locally via a temp file + rename so readers never see half a file."""
    fs, path = resolve(uri, options)
    if is_s3(uri):
        with fs.open_output_stream(path) as f:  # an S3 PUT is atomic by itself
            f.write(data)
        return
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def make_dirs(uri: str, options: S3Options = S3Options()) -> None:
    if not is_s3(uri):
        os.makedirs(_local_path(uri), exist_ok=True)


def copy_dir_to(local_dir: str, uri: str, options: S3Options = S3Options()) -> None:
    """Upload/copy a local directory tree under `uri`."""
    fs, path = resolve(uri, options)
    make_dirs(uri, options)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

"""The only module that knows about object storage.

A location is a local path, a `file://` URI or an `s3://bucket/prefix` URI. S3-compatible servers
(MinIO, Ceph, moto) are reached through an explicit endpoint in the config: pyarrow does not read
one from the environment. Credentials come from the usual AWS environment/profile chain; they are
never stored in configs or printed.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import pyarrow.fs as pafs

from simgan_ray.errors import SimganError


@dataclass(frozen=True)
class S3Options:
    """How to reach S3. Credentials are not options: they come from the AWS chain
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, instance
    roles) on whichever machine opens the filesystem, so they never travel in configs or logs."""

    endpoint_url: str | None = None  # e.g. "http://127.0.0.1:9000" for MinIO/moto/Ceph
    region: str | None = None
    anonymous: bool = False  # public buckets: sign nothing
    retries: int = 5  # attempts per request (AWS standard retry strategy: backoff with jitter)

    __pydantic_config__ = {"extra": "forbid"}


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _local_path(uri: str) -> str:
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


@cache
def _s3_filesystem(options: S3Options) -> pafs.S3FileSystem:
    kwargs: dict = {
        "anonymous": options.anonymous,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=options.retries),
        "connect_timeout": 10,
        "request_timeout": 60,
    }
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


def is_within(uri: str, parent: str) -> bool:
    """True if `uri` is `parent` or lies under it (after normalizing both)."""
    a, b = normalize(uri), normalize(parent).rstrip("/")
    return a == b or a.startswith(b + "/")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts]) if is_s3(uri) else os.path.join(uri, *parts)


_REASONS = (
    (("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId", "AccessDenied"),
     "access denied: check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"),
    (("NO_SUCH_BUCKET", "NoSuchBucket"), "the bucket does not exist"),
    (("NETWORK_CONNECTION", "Could not connect", "curlCode"), "cannot connect to the S3 endpoint"),
)


def _reason(error: Exception) -> str:
    text = str(error)
    for needles, reason in _REASONS:
        if any(n in text for n in needles):
            return reason
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def _reporting(uri: str):
    """OSErrors of storage calls -> SimganError naming the object and a short reason."""
    try:
        yield
    except FileNotFoundError:
        raise SimganError(f"{uri}: not found") from None
    except OSError as e:
        raise SimganError(f"{uri}: {_reason(e)}") from None


def exists(uri: str, options: S3Options = S3Options()) -> bool:
    fs, path = resolve(uri, options)
    with _reporting(uri):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def missing_bucket(uri: str, options: S3Options = S3Options()) -> str | None:
    """The bucket of an absent s3:// `uri` when that bucket itself does not exist, else None."""
    if not is_s3(uri):
        return None
    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    return None if exists(f"s3://{bucket}", options) else bucket


def read_bytes(uri: str, options: S3Options = S3Options()) -> bytes:
    fs, path = resolve(uri, options)
    with _reporting(uri), fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes, options: S3Options = S3Options()) -> None:
    """Write a whole object; locally via a temp file + rename so readers never see half a file."""
    fs, path = resolve(uri, options)
    if is_s3(uri):
        with _reporting(uri), fs.open_output_stream(path) as f:  # an S3 PUT is atomic by itself
            f.write(data)
        return
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def list_files(uri: str, suffixes: tuple[str, ...], options: S3Options = S3Options()) -> list[str]:
    """URIs of the files under `uri` whose names end with one of `suffixes` (case-insensitive),
    sorted. For ingesting a folder of image files; image *sets* are never listed."""
    fs, path = resolve(uri, options)
    with _reporting(uri):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=False))
    base = uri.rstrip("/") if is_s3(uri) else path
    prefix_len = len(path.rstrip("/")) + 1
    return sorted(
        join(base, i.path[prefix_len:]) for i in infos
        if i.type == pafs.FileType.File and i.path.lower().endswith(suffixes)
    )


def delete_tree(uri: str, options: S3Options = S3Options()) -> None:
    """Remove everything under `uri` (nothing if it does not exist)."""
    fs, path = resolve(uri, options)
    with _reporting(uri):
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return
        fs.delete_dir_contents(path, missing_dir_ok=True)


def make_dirs(uri: str, options: S3Options = S3Options()) -> None:
    if not is_s3(uri):
        os.makedirs(_local_path(uri), exist_ok=True)


def copy_dir_to(local_dir: str, uri: str, options: S3Options = S3Options()) -> None:
    """Upload/copy a local directory tree under `uri`."""
    fs, path = resolve(uri, options)
    make_dirs(uri, options)
    with _reporting(uri):
        pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

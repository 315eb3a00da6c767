"""Locations: which local paths and URIs simgan-ray takes, and the pyarrow filesystem that reaches
each (the package's docstring says which schemes and how)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from typing import Literal

import pyarrow.fs as pafs

from simgan_ray.common.errors import SimganError

_HOST = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?")  # name or [IPv6], then :port


@dataclass(frozen=True)
class S3Options:
    """How to reach S3. Credentials are not options: they come from the AWS chain
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, instance
    roles) on whichever machine opens the filesystem, so they never travel in configs or logs."""

    endpoint_url: str | None = None
    """an S3-compatible server, e.g. http://127.0.0.1:9000 for MinIO, Ceph or moto; null: AWS"""
    region: str | None = None
    """the bucket's region"""
    anonymous: bool = False
    """sign nothing (public buckets)"""
    retries: int = 5
    """attempts per request (AWS standard retry strategy: backoff with jitter)"""
    client: Literal["pyarrow", "s3fs"] = "pyarrow"
    """`pyarrow`: pyarrow's native S3 client (C++, the fast path); `s3fs`: s3fs (Python, through
    fsspec), where a proxy or a credential source only s3fs understands stands in the way"""

    __pydantic_config__ = {"extra": "forbid", "use_attribute_docstrings": True}

    def __post_init__(self) -> None:
        # Messages start with "<field>: " so a config loader can name the field in full.
        if self.endpoint_url is not None:
            scheme, host = _endpoint(self.endpoint_url)
            if scheme not in ("http", "https") or not _HOST.fullmatch(host):
                raise ValueError(f"endpoint_url: {self.endpoint_url!r} is not an http(s)://HOST[:PORT] URL")
        if self.retries < 1:
            raise ValueError(f"retries: must be >= 1, got {self.retries}")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_local(uri: str) -> bool:
    """A local path or file:// URI (anything else is a remote location: s3:// or an fsspec scheme)."""
    return uri.startswith("file://") or not _SCHEME.match(uri)


_READ_ONLY = ("http", "https")
# fsspec schemes that are no place for image sets and runs, refused when a location is parsed rather
# than after the work: Ray's workers (other processes, other machines) must see what the driver does.
_MEMORY = "keeps files in one process's memory, which Ray's workers do not see and which vanishes at exit"
_SERVER = "is a file server without the atomic writes and listings simgan-ray's outputs rely on"
_UNUSABLE = {"memory": _MEMORY, "ftp": _SERVER, "sftp": _SERVER, "ssh": _SERVER, "smb": _SERVER}


def _fsspec_class(scheme: str, uri: str):
    """fsspec's filesystem class for `scheme`; SimganError naming the package to install when its
    package is missing, or the schemes there are when fsspec has none."""
    import fsspec
    from fsspec.registry import known_implementations

    if scheme not in known_implementations and scheme not in fsspec.available_protocols():
        raise SimganError(f"{uri}: unsupported scheme {scheme}:// (use a local path, file://, s3://, or a scheme "
                          "fsspec knows: gs://, az://, abfs://, hf://, http(s)://, ...)")
    try:
        return fsspec.get_filesystem_class(scheme)
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None) or known_implementations[scheme]["class"].split(".")[0]
        raise SimganError(f"{uri}: {scheme}:// needs the Python package {missing}, which is not installed: "
                          f"pip install {missing}") from None


# Up to 63 letters, digits, '.', '-', '_' (S3's rules, loosened to what older buckets still have).
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def bad_segment(path: str) -> str | None:
    """Why `path` is not a plain relative path ('a/b.png'), or None: every writer joins such paths
    under its output, so none may climb out ('..'), start at the root, or hide a separator."""
    if not path:
        return "empty"
    if any(ord(c) < 32 for c in path):
        return "holds a control character"
    if "\\" in path:
        return "holds a backslash"
    if path.startswith("/"):
        return "is absolute"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "has an empty, '.' or '..' segment"
    return None


def check_uri(uri: str) -> str:
    """`uri` if it is a location simgan-ray can use, else a SimganError saying what is wrong."""
    if not isinstance(uri, str) or not uri.strip():
        raise SimganError(f"{uri!r}: empty location")
    if "\0" in uri:
        raise SimganError(f"{uri!r}: holds a NUL character")
    scheme = _SCHEME.match(uri)
    if scheme and (why := _UNUSABLE.get(scheme.group(1))):
        raise SimganError(f"{uri}: {scheme.group(1)}:// {why}; use a local path or object storage (s3://, gs://, "
                          "az://, ...)")
    if "::" in uri and "://" in uri.partition("::")[2]:
        raise SimganError(f"{uri}: chained fsspec URLs (with '::') are not supported; use a local path or object "
                          "storage")
    if scheme and scheme.group(1) not in ("s3", "file"):
        _fsspec_class(scheme.group(1), uri)
        _, _, key = uri[scheme.end():].partition("/")  # after the host, bucket or repository
        if key.rstrip("/") and (why := bad_segment(key.rstrip("/"))):
            raise SimganError(f"{uri}: the path {why}")
    if is_s3(uri):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise SimganError(f"{uri}: {bucket!r} is not an S3 bucket name (s3://BUCKET/PREFIX)")
        key = key.rstrip("/")
        if key and (why := bad_segment(key)):
            raise SimganError(f"{uri}: the key {why}")
    return uri


def local_path(uri: str) -> str:
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def _endpoint(url: str) -> tuple[str, str]:
    """'http://host:9000/' -> ('http', 'host:9000'); a bare 'host:9000' is reached over https."""
    scheme, sep, host = url.partition("://")
    return (scheme, host.rstrip("/")) if sep else ("https", url.rstrip("/"))


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
        kwargs["scheme"], kwargs["endpoint_override"] = _endpoint(options.endpoint_url)
        kwargs.setdefault("region", "us-east-1")
    return pafs.S3FileSystem(**kwargs)


@cache
def _fsspec_filesystem(scheme: str, options: S3Options) -> pafs.PyFileSystem:
    """fsspec's filesystem for `scheme` (s3: s3fs, configured as `options` say), wrapped for pyarrow."""
    kwargs: dict = {}
    if scheme == "s3":
        kwargs = {"anon": options.anonymous, "config_kwargs": {"retries": {"max_attempts": options.retries}},
                  "client_kwargs": {"region_name": options.region or "us-east-1"} if options.endpoint_url or
                  options.region else {}}
        if options.endpoint_url:
            kwargs["endpoint_url"] = options.endpoint_url
    return pafs.PyFileSystem(pafs.FSSpecHandler(_fsspec_class(scheme, scheme + "://")(**kwargs)))


def resolve(uri: str, options: S3Options = S3Options()) -> tuple[pafs.FileSystem, str]:
    """URI -> (pyarrow filesystem, path inside it) as Ray Data and Ray Train expect them."""
    check_uri(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    if is_s3(uri) and options.client == "pyarrow":
        return _s3_filesystem(options), uri.removeprefix("s3://").rstrip("/")
    scheme = _SCHEME.match(uri).group(1)
    fs = _fsspec_filesystem(scheme, options)
    # fsspec's own spelling of the path: bucket/key for object stores, the whole URL for http(s).
    return fs, fs.handler.fs._strip_protocol(uri).rstrip("/")


def check_writable(uri: str) -> str:
    """`uri`, or a SimganError when its scheme is read-only (http(s)://)."""
    scheme = _SCHEME.match(uri)
    if scheme and scheme.group(1) in _READ_ONLY:
        raise SimganError(f"{uri}: {scheme.group(1)}:// is read-only here; write to a local path or object storage")
    return uri


def normalize(uri: str) -> str:
    """Canonical spelling: absolute local path, or a URI (s3://bucket/key, ...) without trailing slash."""
    check_uri(uri)
    return local_path(uri) if is_local(uri) else uri.rstrip("/")


def is_within(uri: str, parent: str) -> bool:
    """True if `uri` is `parent` or lies under it. Local paths are compared after resolving
    symbolic links, so an alias of a folder is that folder."""
    a, b = normalize(uri), normalize(parent).rstrip("/")
    if is_local(a) and is_local(b):
        a, b = os.path.realpath(a), os.path.realpath(b).rstrip("/")
    return a == b or a.startswith(b + "/")


def overlap(a: str, b: str) -> bool:
    """Whether one of two locations lies inside the other (or they are the same)."""
    return is_within(a, b) or is_within(b, a)


def refuse_overlap(output: tuple[str, str], inputs: dict[str, str], why: str) -> None:
    """The one check that a command's output stays apart from its inputs: `output` (its option or
    name, location) overlapping any of `inputs` (option -> location), local paths compared with
    symbolic links resolved, raises a SimganError naming both and `why`."""
    name, location = output
    for option, other in inputs.items():
        if overlap(location, other):
            raise SimganError(f"{name} {location} overlaps {option} {other}: {why}")


def join(uri: str, *parts: str) -> str:
    """`uri`/part/...; each part a plain relative path (`bad_segment`), so the result stays under
    `uri` whatever the parts came from (ids and shard names are read from users' files)."""
    for part in parts:
        if why := bad_segment(part):
            raise SimganError(f"{uri}: refusing to join {part!r}: it {why}")
    return os.path.join(uri, *parts) if is_local(uri) else "/".join([uri.rstrip("/"), *parts])

"""The only module that knows about object storage.

A location is a local path, a `file://` URI, an `s3://bucket/prefix` URI or a URI of any scheme
fsspec has a filesystem for (gs://, az:// / abfs://, hf://, http(s):// read-only, ...; the package
it needs is named when missing). Everything goes through pyarrow filesystems, as Ray Data and Ray
Train take them: s3:// through pyarrow's native S3 client (the fast path; `s3.client: s3fs` uses
s3fs instead), the other schemes through fsspec wrapped for pyarrow. S3-compatible servers (MinIO,
Ceph, moto) are reached through an explicit endpoint in the config: pyarrow does not read one from
the environment. Credentials come from each backend's usual chain (AWS environment/profile,
gcloud, Azure, HF tokens); they are never stored in configs or printed.
"""

from __future__ import annotations

import json
import os
import re
import stat
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from typing import Literal

import pyarrow.fs as pafs

from simgan_ray.errors import SimganError, first_line

_HOST = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?")  # name or [IPv6], then :port


@dataclass(frozen=True)
class S3Options:
    """How to reach S3. Credentials are not options: they come from the AWS chain
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, instance
    roles) on whichever machine opens the filesystem, so they never travel in configs or logs."""

    endpoint_url: str | None = None  # e.g. "http://127.0.0.1:9000" for MinIO/moto/Ceph
    region: str | None = None
    anonymous: bool = False  # public buckets: sign nothing
    retries: int = 5  # attempts per request (AWS standard retry strategy: backoff with jitter)
    # pyarrow: pyarrow's native S3 client (C++, the fast path); s3fs: s3fs (Python, through fsspec),
    # e.g. where a proxy or a credential source only s3fs understands stands in the way.
    client: Literal["pyarrow", "s3fs"] = "pyarrow"

    __pydantic_config__ = {"extra": "forbid"}

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


def _local_path(uri: str) -> str:
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
        return pafs.LocalFileSystem(), _local_path(uri)
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
    return _local_path(uri) if is_local(uri) else uri.rstrip("/")


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


def read_json(uri: str, options: S3Options, what: str, fmt: str | None = None, hint: str = "") -> dict:
    """The one way a JSON document simgan-ray wrote (a manifest, an export's refiner.json, a probe,
    a job record) is read back: a JSON object whose "format" is `fmt`; otherwise a SimganError
    saying that `uri` is not `what` and why, then `hint` (what to do)."""
    try:
        doc = json.loads(read_bytes(uri, options))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SimganError(f"{uri}: not {what} (not JSON: {first_line(e)}){hint}") from None
    if not isinstance(doc, dict):
        raise SimganError(f"{uri}: not {what} (a JSON {type(doc).__name__}, not an object){hint}")
    if fmt is not None and doc.get("format") != fmt:
        raise SimganError(f"{uri}: not {what}: format {doc.get('format')!r}, expected {fmt!r}{hint}")
    return doc


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
    return first_line(error)


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


def size(uri: str, options: S3Options = S3Options()) -> int:
    """Bytes of the file at `uri` (a SimganError naming it when there is none)."""
    fs, path = resolve(uri, options)
    with _reporting(uri):
        info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise SimganError(f"{uri}: not found" if info.type == pafs.FileType.NotFound else f"{uri}: not a file")
    return info.size


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
    fs, path = resolve(check_writable(uri), options)
    if not is_local(uri):
        with _reporting(uri), fs.open_output_stream(path) as f:  # an object PUT is atomic by itself
            f.write(data)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:  # disk full, permission denied, a file where a folder should be: no temp file left
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise SimganError(f"{uri}: cannot write: {e.strerror or first_line(e)}") from None


def create_exclusive(uri: str, data: bytes, options: S3Options = S3Options()) -> bool:
    """Write `uri` only if nothing is there, atomically -> whether this call created it. Local:
    O_CREAT|O_EXCL; s3://: a conditional PUT (If-None-Match: *), which S3 and its compatible servers
    honour; other schemes: check, then write (not atomic: say so where it matters)."""
    fs, path = resolve(check_writable(uri), options)
    if is_local(uri):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise SimganError(f"{uri}: cannot write: {e.strerror or first_line(e)}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if is_s3(uri):
        return _s3_put_if_absent(uri, data, options)
    if exists(uri, options):
        return False
    write_bytes(uri, data, options)
    return True


def _s3_put_if_absent(uri: str, data: bytes, options: S3Options) -> bool:
    import botocore.session  # s3fs's dependency: pyarrow's S3 client has no conditional PUT
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    config = Config(retries={"max_attempts": options.retries}, **({"signature_version": UNSIGNED}
                                                                   if options.anonymous else {}))
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=options.endpoint_url, config=config,
        region_name=options.region or ("us-east-1" if options.endpoint_url else None))
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            return False
        raise SimganError(f"{uri}: {_reason(e)}") from None
    except BotoCoreError as e:
        raise SimganError(f"{uri}: {_reason(e)}") from None
    return True


@dataclass(frozen=True)
class Entry:
    """One entry under a folder or prefix: its path relative to it, what it is, and its size."""

    rel: str
    kind: Literal["file", "dir", "other"]  # other: a symbolic link, FIFO, socket or device
    size: int


def entries(uri: str, options: S3Options = S3Options()) -> list[Entry]:
    """Everything under `uri`, sorted, symbolic links not followed (each one an "other" entry)."""
    if is_local(uri):
        root, found = _local_path(uri), []
        for folder, dirs, files in os.walk(root, onerror=_raise):
            for name in sorted(dirs) + sorted(files):
                full = os.path.join(folder, name)
                st = os.lstat(full)
                kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
                found.append(Entry(os.path.relpath(full, root), kind, st.st_size if kind == "file" else 0))
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        return sorted(found, key=lambda e: e.rel)
    fs, path = resolve(uri, options)
    with _reporting(uri):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    n = len(path.rstrip("/")) + 1
    return sorted((Entry(i.path[n:], "file" if i.type == pafs.FileType.File else "dir", i.size or 0)
                   for i in infos if i.path[n:]), key=lambda e: e.rel)


def _raise(error: OSError) -> None:
    raise SimganError(f"{error.filename}: cannot list: {error.strerror}")


def delete_file(uri: str, options: S3Options = S3Options()) -> None:
    fs, path = resolve(check_writable(uri), options)
    with _reporting(uri):
        fs.delete_file(path)


def remove_empty_dir(uri: str) -> None:
    """Remove a local folder if it is empty (object stores have no folders)."""
    if is_local(uri):
        with suppress(OSError):
            os.rmdir(_local_path(uri))


def local_obstacle(uri: str) -> str | None:
    """Why a local `uri` cannot be written, or None: a regular file at it or above it, or no write
    permission on the nearest folder that exists. Remote locations: None (their servers say)."""
    if not is_local(uri):
        return None
    path = _local_path(uri)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"no permission to write in {path}"
    return None


def list_files(uri: str, suffixes: tuple[str, ...] = (), options: S3Options = S3Options()) -> list[str]:
    """Paths, relative to `uri`, of the files under it whose names end with one of `suffixes`
    (case-insensitive; all files when none are given), sorted. For ingesting a folder of image
    files and for checking what an output holds before replacing it; image sets are never listed."""
    fs, path = resolve(uri, options)
    with _reporting(uri):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix_len = len(path.rstrip("/")) + 1
    return sorted(
        i.path[prefix_len:] for i in infos
        if i.type == pafs.FileType.File and i.path.lower().endswith(tuple(x.lower() for x in suffixes) or "")
    )


def make_dirs(uri: str, options: S3Options = S3Options()) -> None:
    """A local directory (object stores have none to make)."""
    if is_local(check_writable(uri)):
        os.makedirs(_local_path(uri), exist_ok=True)


def copy_dir_to(local_dir: str, uri: str, options: S3Options = S3Options()) -> None:
    """Upload/copy a local directory tree under `uri`."""
    fs, path = resolve(check_writable(uri), options)
    make_dirs(uri, options)
    with _reporting(uri):
        pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

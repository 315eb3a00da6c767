"""Files at locations: read, write (atomically, and exclusively for a claim's lock), list and
delete, with storage errors as one-line SimganErrors naming the object."""

from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Literal

import pyarrow.fs as pafs

from simgan_ray.common.errors import SimganError, first_line
from simgan_ray.storage.locations import S3Options, check_writable, is_local, is_s3, local_path, resolve


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


_REASONS = (
    (("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId", "AccessDenied"),
     "access denied: check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"),
    (("NO_SUCH_BUCKET", "NoSuchBucket"), "the bucket does not exist"),
    (("NETWORK_CONNECTION", "Could not connect", "curlCode"), "cannot connect to the S3 endpoint"),
)
_NO_ENDPOINT = _REASONS[-1][1]


def _reason(error: Exception, options: S3Options) -> str:
    text = str(error)
    for needles, reason in _REASONS:
        if any(n in text for n in needles):
            if reason == _NO_ENDPOINT:
                return f"{reason} {options.endpoint_url}" if options.endpoint_url else f"{reason} of AWS"
            return reason
    return first_line(error)


@contextmanager
def _reporting(uri: str, options: S3Options):
    """OSErrors of storage calls -> SimganError naming the object and a short reason (for an endpoint
    that does not answer, the endpoint)."""
    try:
        yield
    except FileNotFoundError:
        raise SimganError(f"{uri}: not found") from None
    except OSError as e:
        raise SimganError(f"{uri}: {_reason(e, options)}") from None


def exists(uri: str, options: S3Options = S3Options()) -> bool:
    fs, path = resolve(uri, options)
    with _reporting(uri, options):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def size(uri: str, options: S3Options = S3Options()) -> int:
    """Bytes of the file at `uri` (a SimganError naming it when there is none)."""
    fs, path = resolve(uri, options)
    with _reporting(uri, options):
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
    with _reporting(uri, options), fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes, options: S3Options = S3Options()) -> None:
    """Write a whole object; locally via a temp file + rename so readers never see half a file."""
    fs, path = resolve(check_writable(uri), options)
    if not is_local(uri):
        with _reporting(uri, options), fs.open_output_stream(path) as f:  # an object PUT is atomic by itself
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
        root, found = local_path(uri), []
        for folder, dirs, files in os.walk(root, onerror=_raise):
            for name in sorted(dirs) + sorted(files):
                full = os.path.join(folder, name)
                st = os.lstat(full)
                kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
                found.append(Entry(os.path.relpath(full, root), kind, st.st_size if kind == "file" else 0))
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        return sorted(found, key=lambda e: e.rel)
    fs, path = resolve(uri, options)
    with _reporting(uri, options):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    n = len(path.rstrip("/")) + 1
    return sorted((Entry(i.path[n:], "file" if i.type == pafs.FileType.File else "dir", i.size or 0)
                   for i in infos if i.path[n:]), key=lambda e: e.rel)


def _raise(error: OSError) -> None:
    raise SimganError(f"{error.filename}: cannot list: {error.strerror}")


def delete_file(uri: str, options: S3Options = S3Options()) -> None:
    fs, path = resolve(check_writable(uri), options)
    with _reporting(uri, options):
        fs.delete_file(path)


def remove_empty_dir(uri: str) -> None:
    """Remove a local folder if it is empty (object stores have no folders)."""
    if is_local(uri):
        with suppress(OSError):
            os.rmdir(local_path(uri))


def local_obstacle(uri: str) -> str | None:
    """Why a local `uri` cannot be written, or None: a regular file at it or above it, or no write
    permission on the nearest folder that exists. Remote locations: None (their servers say)."""
    if not is_local(uri):
        return None
    path = local_path(uri)
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
    with _reporting(uri, options):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix_len = len(path.rstrip("/")) + 1
    return sorted(
        i.path[prefix_len:] for i in infos
        if i.type == pafs.FileType.File and i.path.lower().endswith(tuple(x.lower() for x in suffixes) or "")
    )


def make_dirs(uri: str, options: S3Options = S3Options()) -> None:
    """A local directory (object stores have none to make)."""
    if is_local(check_writable(uri)):
        os.makedirs(local_path(uri), exist_ok=True)


def copy_dir_to(local_dir: str, uri: str, options: S3Options = S3Options()) -> None:
    """Upload/copy a local directory tree under `uri`."""
    fs, path = resolve(check_writable(uri), options)
    make_dirs(uri, options)
    with _reporting(uri, options):
        pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

"""The only package that knows about object storage.

A location is a local path, a `file://` URI, an `s3://bucket/prefix` URI or a URI of any scheme
fsspec has a filesystem for (gs://, az:// / abfs://, hf://, http(s):// read-only, ...; the package
it needs is named when missing). Everything goes through pyarrow filesystems, as Ray Data and Ray
Train take them: s3:// through pyarrow's native S3 client (the fast path; `s3.client: s3fs` uses
s3fs instead), the other schemes through fsspec wrapped for pyarrow. S3-compatible servers (MinIO,
Ceph, moto) are reached through an explicit endpoint in the config: pyarrow does not read one from
the environment. Credentials come from each backend's usual chain (AWS environment/profile,
gcloud, Azure, HF tokens); they are never stored in configs or printed.

`locations` says which locations are valid and how each is reached; `files` reads and writes
there. The names below are the package's API; the rest of simgan_ray uses only them.
"""

from simgan_ray.storage.files import (
    Entry,
    copy_dir_to,
    create_exclusive,
    delete_file,
    entries,
    exists,
    list_files,
    local_obstacle,
    make_dirs,
    missing_bucket,
    read_bytes,
    read_json,
    remove_empty_dir,
    size,
    write_bytes,
)
from simgan_ray.storage.locations import (
    S3Options,
    bad_segment,
    check_uri,
    check_writable,
    is_local,
    is_s3,
    is_within,
    join,
    normalize,
    overlap,
    refuse_overlap,
    resolve,
)

__all__ = [
    "Entry", "S3Options", "bad_segment", "check_uri", "check_writable", "copy_dir_to", "create_exclusive",
    "delete_file", "entries", "exists", "is_local", "is_s3", "is_within", "join", "list_files", "local_obstacle",
    "make_dirs", "missing_bucket", "normalize", "overlap", "read_bytes", "read_json", "refuse_overlap",
    "remove_empty_dir", "resolve", "size", "write_bytes",
]

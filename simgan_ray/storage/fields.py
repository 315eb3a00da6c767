"""`Location`, the config field of a location: apart from the rest of storage, which loads without
pydantic (the GPU benchmarks run where only torch is)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from simgan_ray.common.errors import SimganError
from simgan_ray.storage.locations import normalize


def _location(uri: str) -> str:
    try:
        return normalize(uri)
    except SimganError as e:
        raise ValueError(str(e)) from None  # pydantic then names the field


# A local path or s3:// URI, made absolute when the config is resolved: Ray Train workers and Tune
# trials run in other working directories, so a relative path would point elsewhere there.
Location = Annotated[str, AfterValidator(_location)]

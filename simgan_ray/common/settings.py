"""What every config in simgan-ray is made of: `Section`, a pydantic model that forbids unknown keys,
inf and NaN and takes each field's docstring as its description; `from_options`, a section from a
command's options. (Locations, paths or URIs made absolute when resolved: `storage.fields.Location`.)"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from simgan_ray.common.errors import SimganError


class Section(BaseModel):
    # No inf or NaN in any number: `lr: .inf` validated as a positive float and failed in the workers.
    # validate_default: a default location is made absolute too, as one given in a file is.
    # use_attribute_docstrings: each field's docstring is its description (the config reference, docs/config.md).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True,
                              use_attribute_docstrings=True)


def from_options(model: type[Section], **options) -> Section:
    """A section from a command's options; a bad one -> SimganError naming the option (--test-images)."""
    try:
        return model(**options)
    except ValidationError as e:
        raise SimganError("; ".join(f"--{'.'.join(map(str, x['loc'])).replace('_', '-')}: {x['msg']}"
                                    for x in e.errors())) from None

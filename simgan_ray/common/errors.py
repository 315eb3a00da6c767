"""One exception type for every problem a user can fix (bad config, missing data, bad files).

Raised anywhere in the package; turned into a one-line message and exit code 2 only in the CLI.
"""

import difflib


class SimganError(Exception):
    """A user-facing error; its message names the file, field or object at fault."""


def first_line(error: BaseException) -> str:
    """The first non-blank line of an exception's message, or its type's name when it has none
    (a library's message may span many lines, or be empty, as torch.load's is on a 0-byte file)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _did_you_mean(model, loc: list[str]) -> str:
    """For a field `loc` that `model` (a pydantic model class) does not have: the closest field of
    the section it is in, as a hint, or that section's fields."""
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        model = getattr(field, "annotation", None)
    names = list(getattr(model, "model_fields", {}))
    if not names:
        return "not a field"
    if close := difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6):
        return f"not a field; did you mean {'.'.join([*loc[:-1], close[0]])}?"
    return f"not a field (the fields here: {', '.join(names)})"


def format_errors(source: str, err, most: int = 3, model=None) -> str:
    """A pydantic ValidationError as one line: `source: dotted.field: why; ...`, its first `most`
    problems (a file that is no config at all would otherwise fill the screen with its keys). With
    `model` (the validated class), an unknown field gets the closest known one as a hint."""
    lines = []
    problems = err.errors()
    for e in problems[:most]:
        loc, msg = [str(p) for p in e["loc"]], e["msg"]
        if e["type"] == "extra_forbidden" and model is not None:
            msg = _did_you_mean(model, loc)
        # The network configs' own checks say "<field>: why" (they are plain dataclasses, the
        # error is located at their section): name the field in full.
        msg = msg.removeprefix("Value error, ")
        inner, sep, why = msg.partition(": ")
        if e["type"] == "value_error" and sep and inner.isidentifier():
            loc, msg = [*loc, inner], why
        lines.append(f"{source}: {'.'.join(loc) or '(top level)'}: {msg}")
    more = f" (and {len(problems) - most} more)" if len(problems) > most else ""
    return "; ".join(lines) + more


def user_error(exc: BaseException) -> SimganError | None:
    """The SimganError behind `exc`, if any: Ray wraps one raised in a task or actor (RayTaskError,
    Ray Data's UserCodeException) and keeps it as a cause."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # a RayTaskError(SimganError) is a SimganError too: unwrap it first
        if isinstance(cause, BaseException):
            exc = cause
        elif isinstance(exc, SimganError):
            return exc
        else:
            exc = exc.__cause__ or exc.__context__
    return None


def root_cause(exc: BaseException) -> str:
    """The innermost message of a (possibly Ray-wrapped) error, on one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(exc).__name__)


class BadItems:
    """The one policy for an item (an image, a row, a file) that cannot be used: with `strict` the
    first fails the job (a SimganError naming it); otherwise it is skipped and its reason kept in
    `reasons`, for the job's count and list of skipped items."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.reasons: list[str] = []

    def skip(self, reason: str) -> None:
        if self.strict:
            raise SimganError(reason)
        self.reasons.append(reason)

    def attempt(self, where: str, fn, *args):
        """fn(*args), or None when it raises a SimganError, skipped (or raised) as `where: why`."""
        try:
            return fn(*args)
        except SimganError as e:
            self.skip(f"{where}: {e}")
            return None


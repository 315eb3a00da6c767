"""One exception type for every problem a user can fix (bad config, missing data, bad files).

Raised anywhere in the package; turned into a one-line message and exit code 2 only in the CLI.
"""


class SimganError(Exception):
    """A user-facing error; its message names the file, field or object at fault."""

"""`simgan-ray` command line: thin typed shells over the package's functions, one module per stage
of the data flow (`sets`: make image sets; `training`: probe, train, tune; `apply`: refine and
evaluate with a trained refiner), registered on the app of `app`.

Each command imports what it runs inside its body, not at the top: `simgan-ray --help`, a usage
error or a dry run then costs no import of torch or Ray (seconds).

Errors become exit codes only here: a SimganError (bad input the user can fix) -> one line and
exit 2; a usage error -> click's Usage/Error lines and exit 2; a failed training run -> the
workers' root cause in one line and exit 1.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

import typer

from simgan_ray.cli.app import app, note
from simgan_ray.common.errors import SimganError, root_cause, user_error
from simgan_ray.runtime.session import exit_interrupted, on_stop_signal, stopped_by

# Each module registers its commands on `app`; --help lists them in the order the data flows.
# isort: off
from simgan_ray.cli import sets, training, apply  # noqa: E402, F401
# isort: on

__all__ = ["app", "main"]


def _interrupted(signum: int) -> NoReturn:
    exit_interrupted(signum, next((a for a in sys.argv[1:] if not a.startswith("-")), ""))


def main() -> None:
    signal.signal(signal.SIGTERM, on_stop_signal)  # and again once Ray has started (runtime.ensure_ray)
    try:
        code = app(standalone_mode=False)
    except SimganError as e:
        # Raised inside a Ray task, it arrives as RayTaskError(SimganError): print the original.
        note(f"error: {user_error(e)}")
        sys.exit(2)
    except _click_exception() as e:  # usage errors: click's own message and exit code 2
        e.show()
        sys.exit(e.exit_code)
    except typer.Abort:
        note("Aborted!")
        sys.exit(1)
    except KeyboardInterrupt:
        _interrupted(stopped_by())
    except Exception as e:
        from ray.train import TrainingFailedError  # imports Ray Train: only on this path, not for every --help

        if (cause := user_error(e)) is not None:  # e.g. Ray Data's UserCodeException of a refine actor
            note(f"error: {cause}")
            sys.exit(2)
        if not isinstance(e, TrainingFailedError):
            raise
        note(f"error: training failed: {root_cause(e)}")
        sys.exit(1)
    if code == 128 + signal.SIGINT:  # typer's answer to a KeyboardInterrupt in a command
        _interrupted(stopped_by())
    sys.exit(code or 0)


def _click_exception() -> type[Exception]:
    """ClickException of the click that typer runs on: typer 0.2x vendors its own copy (a private
    module), older releases use click itself; `typer.BadParameter`, public in both, derives from it."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

"""The installed console script run in a process of its own, forked from a server that has already
imported the package: a fresh interpreter pays ~1.5 s (simulate) to ~5 s (train, tune) of CPU for
start-up and imports before a command does anything, and the suite runs a few hundred small
commands (86 dry runs in one test). The server (multiprocessing's forkserver, one per pytest
worker) imports the command modules once; each command is the script file itself, run as
`__main__` with its own argv, environment, working directory, stdout and stderr, and its exit
handlers (a local Ray's shutdown) run before it exits, as at a real interpreter's exit.

What a fresh interpreter adds and this does not (its own start, and settings a module reads from
the environment when it is imported, here before the command's environment is set) is covered by
the tests that start `BIN` itself: tests/cli, the signal tests, the install test and the cluster
tests."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import traceback
from multiprocessing.connection import wait

# What the commands import at their top and at use: imported once by the server, before it forks.
PRELOAD = ["simgan_ray.cli", "simgan_ray.training.train", "simgan_ray.sweeps.tune", "simgan_ray.apply.refine",
           "simgan_ray.apply.evaluate", "simgan_ray.measures.probe", "simgan_ray.sets.simulate",
           "simgan_ray.sets.ingest", "simgan_ray.sets.mnist"]

_context = None
# multiprocessing's Popen is not thread-safe: a process's exit code is 8 bytes the forkserver writes
# down a pipe, and every Process.start() polls the other live processes, so two threads can read that
# pipe at once; the one that finds it empty records 255 (a command that exited 2 read as 255). Every
# start and every read of an exit code holds this lock; waiting for an exit does not.
_reading = threading.Lock()


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _exit_code(e: SystemExit) -> int:
    if e.code is None or isinstance(e.code, int):
        return e.code or 0
    print(e.code, file=sys.stderr)  # sys.exit("message"), as the interpreter does
    return 1


def _command(script: str, args: list[str], env: dict[str, str], cwd: str | None, out: str, err: str) -> None:
    """In the forked process: become `script ARGS` and exit as it would."""
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [script, *args]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = _exit_code(e)
    except BaseException:  # an uncaught exception: the traceback and exit 1, as the interpreter gives
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # os._exit below skips them: a local Ray's shutdown is one
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(script: str, args: list[str], *, env: dict[str, str], cwd=None, timeout: float) -> subprocess.CompletedProcess:
    """`script ARGS` in a forked process, as subprocess.run(..., capture_output=True, text=True) gives it."""
    with tempfile.TemporaryDirectory(prefix="simgan-console-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        for path in (out, err):
            open(path, "w").close()
        process = _forkserver().Process(target=_command, args=(script, list(args), env,
                                                               None if cwd is None else str(cwd), out, err))
        with _reading:
            process.start()
        ended = wait([process.sentinel], timeout)  # select() on the pipe: reads nothing
        with _reading:
            if not ended:
                process.kill()
            process.join()
            code = process.exitcode
        if not ended:
            raise subprocess.TimeoutExpired([script, *args], timeout)
        with open(out) as o, open(err) as e:
            return subprocess.CompletedProcess([script, *args], code, o.read(), e.read())

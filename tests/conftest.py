"""Shared fixtures: one local Ray for the whole session, tiny image sets on local disk.

The suite leaves no Ray state on the machine: every Ray it starts (the session's, drivers
of subprocesses, `ray start` nodes) keeps its files, including `ray_current_cluster`, under a
temporary RAY_TMPDIR, and authenticates with a token of its own (RAY_AUTH_TOKEN_PATH), so that
neither Ray's default temp dir nor ~/.ray/auth_token is written. Set here, before anything imports
Ray, so that this process and everything it starts inherit them; `leaves_no_ray_state` checks it.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def _state(path: Path) -> tuple | None:
    """What a file is now (None when absent), to tell whether the suite changed it."""
    try:
        return path.stat().st_mtime_ns, path.read_bytes()
    except FileNotFoundError:
        return None


# Where Ray would keep its files and token without the settings below (Ray 2.60: RAY_TMPDIR, else
# TMPDIR, else /tmp; ray._common.utils.get_default_ray_temp_dir). Found once, by the process pytest
# started: its xdist workers inherit the settings below and must check the same places.
os.environ.setdefault("SIMGAN_TESTS_RAY_DEFAULT_TMP",
                      os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp")
_RAY_STATE = [Path(os.environ["SIMGAN_TESTS_RAY_DEFAULT_TMP"]) / "ray" / "ray_current_cluster",
              Path.home() / ".ray" / "auth_token"]
_BEFORE = {path: _state(path) for path in _RAY_STATE}
# Each process its own (pytest's and each xdist worker's): two workers' Rays never share files.
RAY_TMP = Path(tempfile.mkdtemp(prefix="sgray", dir="/tmp"))  # short: Ray's socket paths go under it
atexit.register(shutil.rmtree, RAY_TMP, True)  # also where no session fixture runs (xdist's controller)
(RAY_TMP / "auth_token").write_text(uuid.uuid4().hex + uuid.uuid4().hex)
os.environ.update(RAY_TMPDIR=str(RAY_TMP), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(RAY_TMP / "auth_token"))
os.environ.pop("RAY_AUTH_TOKEN", None)

import numpy as np  # noqa: E402  (after the environment above)
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from simgan_ray import storage  # noqa: E402
from simgan_ray.sets import shards, simulate  # noqa: E402
from tests import forkedcli  # noqa: E402
from tests.s3server import MotoServer, use_fake_credentials  # noqa: E402

use_fake_credentials()  # before the session's Ray starts, so its workers inherit them

# The smallest networks; and no portable formats at the end of a run (seconds each: the tests that
# load TorchScript, torch.export or ONNX turn them back on).
TINY = {"refiner.features": 8, "refiner.blocks": 1, "discriminator.widths": [8, 8, 8, 8], "run.portable_export": False}


def small_run(sets: dict, storage, name: str = "run", **fields) -> dict:
    """The train-config overrides of a small run on `sets` ({"synthetic": ..., "real": ...}) under
    `storage`: TINY networks, one worker, batches of 8, a history of 16, 2 + 2 pretraining steps and
    8 adversarial ones. `fields`: dotted fields that differ, as **{"run.num_workers": 2}."""
    return {**TINY, "data.synthetic": sets["synthetic"], "data.real": sets["real"], "run.storage": str(storage),
            "run.name": name, "run.num_workers": 1, "batch_size": 8, "history_size": 16,
            "schedule.pretrain_refiner_steps": 2, "schedule.pretrain_discriminator_steps": 2, "schedule.steps": 8,
            **fields}


# registry/simgan-ray:<package>-ray<Ray>-py<Python>-cu<CUDA>, as cluster/Dockerfile says to tag it.
IMAGE = re.compile(r"[\w.-]+(/[\w.-]+)*/simgan-ray:(?P<package>[\d.]+)-ray(?P<ray>[\d.]+)-py311-cu(?P<cuda>\d+)")


def pinned_image(image: str) -> bool:
    """Whether `image` is the one image of cluster/Dockerfile, tagged with this package's and Ray's
    versions and the Dockerfile's CUDA (never :latest)."""
    from importlib.metadata import version

    import ray

    dockerfile = Path(__file__).resolve().parents[1] / "cluster" / "Dockerfile"
    base = re.search(r"ARG BASE=rayproject/ray:([\d.]+)-py311-cu(\d+)", dockerfile.read_text())
    m = IMAGE.fullmatch(image)
    return bool(m and base and m["ray"] == ray.__version__ == base[1] and m["cuda"] == base[2]
                and m["package"] == version("simgan-ray"))


def image_bytes(w: int, h: int, mode: str = "RGB", fmt: str = "PNG", value: int = 200) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), value if mode == "L" else (value, value // 2, 0)).save(buf, format=fmt)
    return buf.getvalue()



class UserFiles:
    """Writes files under `prefix` as a user's own: no claim, no record (what shards.write_* write
    through, in place of a claimed ownership.Output)."""

    def __init__(self, prefix, s3: storage.S3Options = storage.S3Options()) -> None:
        self.prefix, self.s3 = str(prefix), s3

    def write(self, files: dict[str, bytes]) -> int:
        for rel, data in files.items():
            storage.write_bytes(storage.join(self.prefix, rel), data, self.s3)
        return sum(map(len, files.values()))


BIN = Path(sys.executable).with_name("simgan-ray")  # the installed console script


def console(*args: str, cwd=None, s3: storage.S3Options | None = None, timeout: float = 300, env=None):
    """`simgan-ray ARGS` as a user runs it: the installed console script in a process of its own
    (forked from one that has imported the package: tests/forkedcli.py says why and what differs;
    `env`: variables set for it on top of this process's)."""
    if s3 is not None and s3.endpoint_url:
        args = (*args, "--s3-endpoint", s3.endpoint_url)
    return forkedcli.run(str(BIN), list(args), env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


def kill_session(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL a command started with start_new_session=True and every process of its session, then
    wait until none is left: a machine that dies takes them all. Its local Ray's raylet and GCS share
    its process group, but Ray's workers each lead a group of their own and outlive their raylet by a
    second or more, still training and writing, so killing the group alone leaves a run going on."""
    def members() -> list[int]:
        pids = []
        for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:  # gone meanwhile
                continue
            state, _, _, session = stat[stat.rindex(")") + 2:].split()[:4]
            if int(session) == proc.pid and state != "Z":
                pids.append(pid)
        return pids

    deadline = time.monotonic() + timeout
    while pids := members():
        assert time.monotonic() < deadline, f"processes of session {proc.pid} still alive: {pids}"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    proc.wait()


def one_line_refusal(done, *needles: str) -> str:
    """Assert that a console run refused in one line (exit 2, no traceback) holding `needles` -> it."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines and lines[-1].startswith("error: "), (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


SNAPSHOT_BYTES = 1 << 20  # larger files are compared by size and modification time, never read whole


def snapshot(uri: str, s3: storage.S3Options = storage.S3Options()) -> dict:
    """Everything under a local folder or object prefix: path -> what it is (a file's bytes, or for
    a file over SNAPSHOT_BYTES its size and mtime; a link's target, 'dir', 'fifo'), to tell whether a
    command changed anything there."""
    if not storage.is_local(uri):
        return {e.rel: storage.read_bytes(storage.join(uri, e.rel), s3) if e.kind == "file" else e.kind
                for e in storage.entries(uri, s3)} if storage.exists(uri, s3) else {}
    root, out = Path(uri.removeprefix("file://")), {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink() or not path.is_file():
            out[rel] = f"link->{os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir() else "fifo"
            continue
        st = path.stat()
        out[rel] = path.read_bytes() if st.st_size <= SNAPSHOT_BYTES else ("large", st.st_size, st.st_mtime_ns)
    return out


def users_set(prefix, s3: storage.S3Options = storage.S3Options()) -> None:
    """A one-image set a user made by hand: a manifest and a shard, no owner record."""
    out = UserFiles(prefix, s3)
    table = shards.make_table(["a"], np.zeros((1, 1, 28, 28), np.uint8), [None])
    shards.write_manifest(out, shards.Manifest(kind="real", count=1, shape=[1, 28, 28],
                                               shards=[shards.write_shard(out, 0, table)]))


def fake_checkpoint(run, name: str, intact: bool = True) -> None:
    """A checkpoint folder as a worker leaves it: state.pt (a torch zip), metrics.json; or cut short."""
    import io

    import torch  # here: importing torch costs seconds, and most tests never need it

    buf = io.BytesIO()
    torch.save({"step": 1}, buf)
    state = buf.getvalue() if intact else buf.getvalue()[:100]
    run.write({f"{name}/state.pt": state, f"{name}/metrics.json": b"[]"})


def checkpoint_list(*names: str, latest: str | None = None) -> bytes:
    results = [{"checkpoint_dir_name": n, "metrics": {}} for n in names]
    return json.dumps({"ray_version": "2.60.0", "checkpoint_results": results,
                       "checkpoint_report_indices": list(range(len(names))),
                       "latest_checkpoint_result": {"checkpoint_dir_name": latest or names[-1], "metrics": {}},
                       "pending_training_results": [], "pending_validation_specs": [], "current_report_index": 9,
                       "validated_checkpoint_dir_names": [], "timed_out_validation_checkpoint_dir_names": [],
                       "failed_validation_checkpoint_dir_names": []}).encode()


def write_set(prefix, kind: str, images: np.ndarray, labels, shard_size: int, encoding: str = "png") -> shards.Manifest:
    """images: uint8 (n, C, H, W) -> a complete shard set (shards + manifest) at prefix, a user's."""
    ids = [f"{kind}-{i:06d}" for i in range(len(images))]
    out = UserFiles(prefix)
    written = [
        shards.write_shard(out, i, shards.make_table(ids[s : s + shard_size], images[s : s + shard_size],
                                                     labels[s : s + shard_size], encoding), encoding)
        for i, s in enumerate(range(0, len(images), shard_size))
    ]
    manifest = shards.Manifest(kind=kind, count=len(images), shape=list(images.shape[1:]), shards=written,
                               encoding=encoding)
    shards.write_manifest(out, manifest)
    return manifest


# Fixtures that start Ray or a server: a test that uses one (directly or through another) is slow.
_SLOW_FIXTURES = {"ray_session", "s3_server"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if _SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def _quick(config) -> bool:
    """Whether this is the quick tier: `-m` deselects slow tests (scripts/test.sh --quick)."""
    return "not slow" in (config.getoption("markexpr") or "")


@pytest.fixture(autouse=True)
def quick_tier_starts_nothing(request, monkeypatch):
    """In the quick tier, a test that starts Ray or a process fails, saying so: mark it slow (or
    network). So the tier stays quick as tests are added, and `slow` means what it says."""
    if not _quick(request.config):
        yield
        return
    import ray

    def refuse(what: str):
        def refused(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} starts {what}: mark it @pytest.mark.slow")
        return refused

    monkeypatch.setattr(ray, "init", refuse("Ray"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("a subprocess"))
    monkeypatch.setattr(forkedcli, "run", refuse("a console command"))
    yield


@pytest.fixture(scope="session", autouse=True)
def leaves_no_ray_state():
    """Fails the session if it wrote Ray's default `ray_current_cluster` or ~/.ray/auth_token (a stale
    `ray_current_cluster` captures any later bare `ray.init()` on the machine). Autouse and first, so
    it ends after the session's Ray has stopped."""
    yield
    changed = [str(path) for path in _RAY_STATE if _state(path) != _BEFORE[path]]
    shutil.rmtree(RAY_TMP, ignore_errors=True)
    assert not changed, f"the test session changed {changed}"


@pytest.fixture(scope="session")
def digit_sets(tmp_path_factory):
    """256 synthetic digits (labelled) and 256 'real' ones (another seed, blurred, unlabelled)."""
    root = tmp_path_factory.mktemp("digits")
    fonts = simulate.discover_fonts(tuple(str(d) for d in simulate.default_font_dirs()))
    _, syn, labels = simulate.render_range(0, 256, 0, fonts)
    _, real, _ = simulate.render_range(0, 256, 1, fonts)
    real = (real.astype(np.float32) * 0.8).astype(np.uint8)  # a different 'domain'
    write_set(root / "synthetic", "synthetic", syn, labels, 64)
    write_set(root / "real", "real", real, [None] * len(real), 64)
    return {"synthetic": str(root / "synthetic"), "real": str(root / "real"), "labels": [json.loads(x) for x in labels]}


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session (starting Ray costs seconds; a TorchTrainer, more)."""
    import ray

    from simgan_ray.runtime.session import start_local_ray

    start_local_ray(4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def joined_ray(ray_session) -> dict[str, str]:
    """The environment in which a console command joins the session's Ray (RAY_ADDRESS) instead of
    starting its own, for tests that are not about the Ray a command starts: a local Ray's start
    costs ~15 s of CPU, most of what a small command costs."""
    return {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free loopback port for the whole session; stopped by PID."""
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def labelled_real_sets(tmp_path_factory):
    """Labelled 'real' sets (another simulator seed, dimmed) standing in for MNIST dev / val / test,
    each of its split's manifest kind."""
    root = tmp_path_factory.mktemp("labelled")
    fonts = simulate.discover_fonts(tuple(str(d) for d in simulate.default_font_dirs()))
    out = {}
    for name, seed in (("dev", 21), ("val", 23), ("test", 22)):
        _, images, labels = simulate.render_range(0, 300, seed, fonts)
        write_set(root / name, name, (images.astype(np.float32) * 0.8).astype(np.uint8),
                  [json.dumps({"digit": json.loads(x)["digit"]}) for x in labels], 100)
        out[name] = str(root / name)
    return out

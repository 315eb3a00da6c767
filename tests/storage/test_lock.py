"""One writer at a time: the claim's lock is created atomically (local: O_EXCL; S3: a conditional
PUT that moto and S3 honour); a second writer is refused in one line naming the holder; a lock
whose process is gone, or whose heartbeat is older than the bound, is taken over with a note; a
claim whose lock was taken over writes nothing more, in any process."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.storage import lock, ownership
from tests.conftest import BIN, one_line_refusal, snapshot


def lock_doc(**changes) -> bytes:
    doc = {"format": lock.LOCK_FORMAT, "command": "refine", "id": "x" * 32, "host": socket.gethostname(),
           "pid": 1, "since": "2026-01-01T00:00:00Z", "heartbeat": time.time()}
    return json.dumps({**doc, **changes}).encode()


def test_a_held_claim_refuses_a_second_writer_naming_the_holder(tmp_path):
    with ownership.claimed(str(tmp_path / "out"), "refine"):
        with pytest.raises(SimganError, match=r"out is being written by `simgan-ray refine` \(lock [0-9a-f]{32}, pid "
                                              rf"\d+ on {socket.gethostname()}, since .*\); wait for it to end"):
            ownership.plan(str(tmp_path / "out"), "refine", resume=True)
    ownership.release(ownership.claim(str(tmp_path / "out"), "refine", resume=True))  # free again


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # a pid no process can have
    for stale in (lock_doc(pid=gone), lock_doc(host="elsewhere", heartbeat=time.time() - 3600), b"{half"):
        out = tmp_path / "out"
        (out / ".simgan-ray").mkdir(parents=True, exist_ok=True)
        (out / ".simgan-ray" / "lock.json").write_bytes(stale)
        claim = ownership.claim(str(out), "refine", resume=True)
        assert json.loads((out / ".simgan-ray" / "lock.json").read_text())["pid"] != gone
        ownership.release(claim)
        assert "taking over the lock" in capsys.readouterr().err
    (out / ".simgan-ray" / "lock.json").write_bytes(lock_doc(host="elsewhere"))  # alive, on another machine
    with pytest.raises(SimganError, match="being written by .* on elsewhere"):
        ownership.claim(str(out), "refine", resume=True)


def test_a_claim_whose_lock_was_taken_over_writes_nothing_more_in_any_process(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    out_dir = tmp_path / "out"
    out = ownership.claim(str(out_dir), "refine")
    out.write({"a.txt": b"1"})
    # Another job takes the output over (as it would once this one's process looked gone).
    (out_dir / ".simgan-ray" / "lock.json").write_bytes(lock_doc(id="y" * 32, pid=os.getpid()))
    before = snapshot(str(out_dir))
    taken = (r"out: no longer this `simgan-ray refine`'s to write \(`simgan-ray refine` "
             rf"\(lock y{{32}}, pid {os.getpid()}")
    with pytest.raises(SimganError, match=taken + r".*\); stopped before writing there"):
        out.write({"b.txt": b"2"})
    with pytest.raises(SimganError, match=taken):
        out.at("sub").record({"c.txt": 1})
    with pytest.raises(SimganError, match=taken):  # a copy as a Ray worker gets it (the run's workers: test_faults)
        pickle.loads(pickle.dumps(out)).write({"b.txt": b"2"})
    time.sleep(0.3)  # heartbeats due: the old holder no longer refreshes a lock that is not its own
    assert json.loads((out_dir / ".simgan-ray" / "lock.json").read_text())["id"] == "y" * 32
    ownership.release(out)  # and does not delete it
    assert snapshot(str(out_dir)) == before


def test_a_released_claim_or_one_whose_lock_is_damaged_writes_nothing_more(tmp_path):
    out = ownership.claim(str(tmp_path / "out"), "refine")
    (tmp_path / "out" / ".simgan-ray" / "lock.json").write_bytes(b"{half")
    with pytest.raises(SimganError, match=r"no longer this `simgan-ray refine`'s to write \(its lock is damaged\)"):
        out.write({"late.txt": b"1"})
    ownership.release(out)
    (tmp_path / "out" / ".simgan-ray" / "lock.json").unlink()
    with pytest.raises(SimganError, match=r"no longer this `simgan-ray refine`'s to write \(its lock is gone\)"):
        out.write({"late.txt": b"1"})
    assert not (tmp_path / "out" / "late.txt").exists()


@pytest.mark.slow
def test_s3_claims_are_atomic(s3_server):
    s3 = storage.S3Options(endpoint_url=s3_server.endpoint)
    bucket = s3_server.make_bucket("simgan-lock")
    assert storage.create_exclusive(f"{bucket}/a/lock.json", b"1", s3)
    assert not storage.create_exclusive(f"{bucket}/a/lock.json", b"2", s3)
    assert storage.read_bytes(f"{bucket}/a/lock.json", s3) == b"1"

    def try_claim(i: int):
        try:
            return ownership.claim(f"{bucket}/race", "simulate", s3, resume=True)
        except SimganError as e:
            return str(e)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(try_claim, range(4)))
    won = [r for r in results if isinstance(r, ownership.Output)]
    assert len(won) == 1, results
    assert all("is being written by" in r or "took the lock first" in r for r in results if isinstance(r, str))
    ownership.release(won[0])
    assert not storage.exists(f"{bucket}/race/.simgan-ray/lock.json", s3)


@pytest.mark.slow
def test_two_jobs_into_one_output_one_is_refused(tmp_path, joined_ray):
    out = tmp_path / "out"
    # The first on the session's Ray (the lock is the output's, whatever Ray a job runs on); the second
    # is refused before it would start one.
    first = subprocess.Popen([str(BIN), "simulate", "--count", "400", "--shard-size", "100", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **joined_ray})
    try:
        deadline = time.monotonic() + 120
        while not (out / ".simgan-ray" / "lock.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run([str(BIN), "simulate", "--count", "10", "--out", str(out)], capture_output=True,
                                text=True, timeout=120)
        one_line_refusal(second, "out is being written by `simgan-ray simulate`", f"pid {first.pid}")
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    files = sorted(rel for rel in snapshot(str(out)) if not rel.startswith(".simgan-ray"))
    assert files == ["manifest.json", *(f"shard-{i:05d}.parquet" for i in range(4))]

"""One writer at a time: the lock a claimed output holds while its command runs (`ownership`).

    <output>/.simgan-ray/lock.json   {"format", "command", "id", "host", "pid", "since", "heartbeat"}

The lock is created atomically (local: O_EXCL; S3: a conditional PUT) and refreshed every
HEARTBEAT_S seconds while its command runs. A lock whose process is gone (same host) or whose
heartbeat is older than STALE_AFTER_S is taken over, with a note. A holder whose lock was taken over
stops refreshing it, and every write under the claim checks first that the lock is still its own
(`ownership.Output.check`), in whichever process writes: a command's Ray workers outlive a driver
killed under them for a second or more, and must not write into an output that another job took.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import time
import uuid

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.storage import S3Options

LOCK_FORMAT = "simgan-ray-lock/1"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 60.0  # four missed heartbeats: the holder is gone (a node lost, a pod killed and retried)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def holder(lock: dict) -> str:
    return (f"`simgan-ray {lock.get('command')}` (lock {lock.get('id')}, pid {lock.get('pid')} on "
            f"{lock.get('host')}, since {lock.get('since')})")


def read(path: str, s3: S3Options) -> dict | None:
    """The lock at `path`, None where there is none; one that is not a lock (half written by a
    writer cut short) as {"format": "damaged"}, which is stale. Storage errors are raised: an
    unreachable lock is neither free nor stale."""
    if not storage.exists(path, s3):
        return None
    try:
        text = storage.read_bytes(path, s3)
    except SimganError:
        if storage.exists(path, s3):
            raise
        return None  # released just now
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    return doc if isinstance(doc, dict) and doc.get("format") == LOCK_FORMAT else {"format": "damaged"}


def stale(lock: dict) -> bool:
    if lock.get("format") != LOCK_FORMAT or not isinstance(lock.get("heartbeat"), (int, float)):
        return True
    if time.time() - lock["heartbeat"] > STALE_AFTER_S:
        return True
    if lock.get("host") == socket.gethostname() and isinstance(lock.get("pid"), int):
        try:
            os.kill(lock["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


_HELD: dict[str, Lock] = {}  # this process's locks, by id


class Lock:
    """A held lock: a thread refreshes its heartbeat while it is still this one's; `release` deletes
    it (at exit at the latest). `uri`: the output it is the lock of."""

    def __init__(self, uri: str, path: str, doc: dict, s3: S3Options) -> None:
        self.uri, self.path, self.doc, self.s3 = uri, path, doc, s3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="simgan-ray-lock", daemon=True)
        self._thread.start()
        _HELD[doc["id"]] = self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                current = read(self.path, self.s3)
                if current is not None and current.get("id") != self.doc["id"]:
                    return  # taken over: the output is another job's now, and its lock with it
                storage.write_bytes(self.path, json.dumps({**self.doc, "heartbeat": time.time()}).encode(), self.s3)
            except SimganError:
                pass  # storage unreachable for a while: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)  # a beat under way must not write the lock again after it went
        _HELD.pop(self.doc["id"], None)
        current = read(self.path, self.s3)
        if current is not None and current.get("id") == self.doc["id"]:
            storage.delete_file(self.path, self.s3)


def acquire(uri: str, path: str, command: str, s3: S3Options) -> Lock:
    """Take the lock at `path` for `command` writing `uri`, taking over a stale one with a note; a
    SimganError naming the holder of a live one."""
    doc = {"format": LOCK_FORMAT, "command": command, "id": uuid.uuid4().hex, "host": socket.gethostname(),
           "pid": os.getpid(), "since": now(), "heartbeat": time.time()}
    for _ in range(2):
        if storage.create_exclusive(path, json.dumps(doc).encode(), s3):
            return Lock(uri, path, doc, s3)
        held = read(path, s3)
        if held is not None and not stale(held):
            raise SimganError(f"{uri} is being written by {holder(held)}; wait for it to end")
        if held is not None:
            print(f"note: {uri}: taking over the lock of {holder(held)}, whose process is gone", file=sys.stderr)
            if read(path, s3) == held:  # not taken over by another writer meanwhile
                storage.delete_file(path, s3)
    raise SimganError(f"{uri}: another writer took the lock first; try again")


def release(uri: str) -> None:
    """Release this process's locks of the output `uri`."""
    for lock in [lk for lk in _HELD.values() if lk.uri == uri]:
        lock.release()


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD.values()):
        try:
            lock.release()
        except SimganError:
            pass

"""Who owns an output: the one rule every command that writes follows.

A command claims its output before it writes anything there. The claim may create a missing folder
or prefix, take an empty one, or continue / replace one whose owner record says that the same kind
of command wrote it; anything else is refused, naming it. Everything a command then writes goes
through its `Output`, which records each file (its path and size) before writing it. `--overwrite`
deletes only what that record lists, and only while every entry there is in the record with its
recorded size: a file the record does not list, one whose size changed, a symbolic link, a FIFO or
an empty folder of someone else's makes it refuse, deleting nothing. A dry run computes the same
plan read-only.

    <output>/.simgan-ray/owner.json         {"format", "command", "job", "created", "identity"}
    <output>/.simgan-ray/lock.json          the writer now (`storage/lock.py`)
    <output>/.simgan-ray/files/<part>.json  {"format", "job", "files": {path: [sizes]}}, written before
                                            the files it lists

One writer at a time: a claim holds the output's lock (`storage/lock.py`) while its command runs,
and every write through its `Output`, in the driver or in a Ray worker, first checks that the lock
is still the claim's: once another job took the output over, nothing more is written there.
Outputs never overlap the command's inputs (`storage.refuse_overlap`, symbolic links resolved).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.storage import S3Options, lock

RECORD_DIR, OWNER, LOCK, FILES = ".simgan-ray", "owner.json", "lock.json", "files"
OWNER_FORMAT, FILES_FORMAT = "simgan-ray-owner/1", "simgan-ray-files/1"
_WHAT = {"train": "a simgan-ray training run", "tune": "a simgan-ray sweep"}  # in refusals; others: "the output of"
_KEEP_SIZES = 2  # a file rewritten in place: its last two recorded sizes (a rewrite may have been cut short)


def _record(uri: str, *parts: str) -> str:
    return storage.join(uri, RECORD_DIR, *parts)


@dataclass(frozen=True)
class Output:
    """A claimed output (picklable: Ray tasks write through it). `lock`: the id of the claim's lock;
    `base`: a folder inside the claim this view writes under (fetch-mnist's splits), '' for its root."""

    uri: str
    command: str
    job: str
    lock: str
    s3: S3Options = S3Options()
    base: str = ""

    def at(self, sub: str) -> Output:
        """The same claim, writing under its folder `sub`."""
        return Output(self.uri, self.command, self.job, self.lock, self.s3, f"{self.base}/{sub}" if self.base else sub)

    def check(self) -> None:
        """Refuse, naming the writer now, once the output's lock is no longer this claim's: taken over
        by another job (this one's holder judged gone) or released. Before every write under the
        claim, and before anything writes there on the claim's behalf (Ray Train's checkpoints)."""
        held = lock.read(_record(self.uri, LOCK), self.s3)
        if held is None or held.get("id") != self.lock:
            now = ("its lock is gone" if held is None else "its lock is damaged" if held["format"] == "damaged"
                   else f"{lock.holder(held)} holds it now")
            raise SimganError(f"{self.uri}: no longer this `simgan-ray {self.command}`'s to write ({now}); "
                              "stopped before writing there")

    @property
    def location(self) -> str:
        return storage.join(self.uri, self.base) if self.base else self.uri

    def write(self, files: dict[str, bytes]) -> int:
        """Record, then write, `files` (path relative to this view -> bytes), in their order (so the
        last is a commit marker) -> bytes written."""
        rels = {(f"{self.base}/{rel}" if self.base else rel): data for rel, data in files.items()}
        self.check()
        self._record({rel: len(data) for rel, data in rels.items()})
        for rel, data in rels.items():
            storage.write_bytes(storage.join(self.uri, rel), data, self.s3)
        return sum(len(d) for d in rels.values())

    def record(self, sizes: dict[str, int]) -> None:
        """Record files a library wrote in place under this view (path -> bytes now): for those
        only, such as an event file that grows by appends; everything else goes through `write`."""
        self.check()
        self._record({(f"{self.base}/{rel}" if self.base else rel): size for rel, size in sizes.items()})

    def _record(self, sizes: dict[str, int]) -> None:
        # One part per set of paths: a file rewritten (metrics, a re-run shard) keeps one entry.
        part = hashlib.sha256("\n".join(sorted(sizes)).encode()).hexdigest()[:32] + ".json"
        uri = _record(self.uri, FILES, part)
        old = _read_part(uri, self.s3, self.job) if storage.exists(uri, self.s3) else {}
        merged = {rel: ([s for s in old.get(rel, []) if s != size] + [size])[-_KEEP_SIZES:]
                  for rel, size in sizes.items()}
        doc = {"format": FILES_FORMAT, "job": self.job, "files": merged}
        storage.write_bytes(uri, json.dumps(doc).encode(), self.s3)


def _read_part(uri: str, s3: S3Options, job: str) -> dict[str, list[int]]:
    """A record part of job `job` -> {path: sizes}; a SimganError if it is not one."""
    doc = storage.read_json(uri, s3, "a simgan-ray file record", FILES_FORMAT)
    files = doc.get("files")
    if doc.get("job") != job or not isinstance(files, dict) or not all(
            isinstance(k, str) and not storage.bad_segment(k) and isinstance(v, list)
            and all(isinstance(s, int) and s >= 0 for s in v) for k, v in files.items()):
        raise SimganError(f"{uri}: a damaged or foreign file record (job {doc.get('job')!r})")
    return files


def read_owner(uri: str, s3: S3Options = S3Options()) -> dict | None:
    """The owner record of `uri`, or None where there is none; a damaged one is a SimganError."""
    record = _record(uri, OWNER)
    if not storage.exists(record, s3):
        return None
    doc = storage.read_json(record, s3, "a simgan-ray owner record", OWNER_FORMAT,
                            "; nothing was changed: pick another output")
    if not all(isinstance(doc.get(k), str) for k in ("command", "job")) or not isinstance(doc.get("identity", {}),
                                                                                         dict):
        raise SimganError(f"{record}: a damaged owner record; nothing was changed: pick another output")
    return doc


@dataclass
class Plan:
    """What a claim would do, found read-only: `action` is create (a new or empty output),
    continue (this command's own earlier output, kept) or replace (--overwrite: `delete` first)."""

    uri: str
    command: str
    action: Literal["create", "continue", "replace"]
    owner: dict | None
    delete: list[str] = field(default_factory=list)  # recorded files present now, relative paths
    existed: bool = True  # whether the folder or prefix was there (create: an empty one taken)

    def describe(self) -> str:
        if self.action == "replace":
            return f"replace {self.uri} (delete the {len(self.delete)} file(s) its record lists)"
        return f"{'continue' if self.action == 'continue' else 'create'} {self.uri}"


def plan(uri: str, command: str, s3: S3Options = S3Options(), *, inputs: dict[str, str | None] | None = None,
         overwrite: bool = False, resume: bool = False, refusal: str = "pass --overwrite to replace it",
         _holding: str | None = None) -> Plan:
    """Every check of `claim`, changing nothing. `resume`: continue this command's earlier output
    (the caller decides, from `read_owner`, that it is the same job); `refusal`: what the message
    for such an output says to do when neither `resume` nor `overwrite` is given. `_holding`: the id
    of the lock `claim` holds there."""
    uri = storage.normalize(storage.check_writable(uri))
    storage.refuse_overlap(("output", uri), {k: v for k, v in (inputs or {}).items() if v},
                           "a command never writes into what it reads")
    if why := storage.local_obstacle(uri):
        raise SimganError(f"{uri}: cannot write here: {why}")
    owner = read_owner(uri, s3)
    held = lock.read(_record(uri, LOCK), s3)
    if held is not None and not lock.stale(held) and held.get("id") != _holding:
        raise SimganError(f"{uri} is being written by {lock.holder(held)}; wait for it to end")
    found = storage.entries(uri, s3) if storage.exists(uri, s3) else []
    if owner is None:
        # A claim cut short leaves at most its record folder and lock (taken over above when stale).
        if other := [e.rel for e in found if e.rel not in (RECORD_DIR, f"{RECORD_DIR}/{LOCK}")]:
            raise SimganError(f"{uri} holds files no simgan-ray command wrote ({other[0]} first): pick an empty or new "
                              "output")
        return Plan(uri, command, "create", None, existed=bool(found) or storage.exists(uri, s3))
    if owner["command"] != command:
        raise SimganError(f"{uri} belongs to `simgan-ray {owner['command']}` (job {owner['job']}), not to "
                          f"`{command}`: pick another output")
    if overwrite:
        return Plan(uri, command, "replace", owner, _deletable(uri, owner, found, s3))
    if not resume and any(e.rel.partition("/")[0] != RECORD_DIR for e in found):
        what = _WHAT.get(command, f"the output of an earlier `simgan-ray {command}`")
        raise SimganError(f"{uri} already holds {what}: {refusal}")
    # Continued: asked for, or nothing there yet beside the record (it stopped before its first file).
    return Plan(uri, command, "continue", owner)


def _deletable(uri: str, owner: dict, found: list[storage.Entry], s3: S3Options) -> list[str]:
    """The recorded files present under `uri`; a SimganError naming the first entry that is not one
    (or whose size is not a recorded one): --overwrite then deletes nothing."""
    recorded: dict[str, set[int]] = {}
    parts = {e.rel for e in found if e.rel.startswith(f"{RECORD_DIR}/{FILES}/") and e.kind == "file"}
    for rel in sorted(parts):
        for path, sizes in _read_part(storage.join(uri, rel), s3, owner["job"]).items():
            recorded.setdefault(path, set()).update(sizes)
    folders = {"/".join(p.split("/")[:i]) for p in [*recorded, *parts, f"{RECORD_DIR}/{OWNER}"]
               for i in range(1, p.count("/") + 1)}
    for e in found:
        ours = (e.kind == "file" and (e.rel in parts or e.rel in (f"{RECORD_DIR}/{OWNER}", f"{RECORD_DIR}/{LOCK}")
                                      or e.size in recorded.get(e.rel, ()))) or (e.kind == "dir" and e.rel in folders)
        if not ours:
            what = ("which is not a regular file" if e.kind == "other" else "a folder its record does not explain"
                    if e.kind == "dir" else f"of {e.size} bytes, not a size its record lists" if e.rel in recorded
                    else "which its record does not list")
            raise SimganError(f"{uri} holds {e.rel}, {what}: nothing was deleted; move it away or pick another output")
    return sorted(e.rel for e in found if e.rel in recorded)


def claim(uri: str, command: str, s3: S3Options = S3Options(), *, inputs: dict[str, str | None] | None = None,
          overwrite: bool = False, resume: bool = False, identity: dict | None = None,
          refusal: str = "pass --overwrite to replace it") -> Output:
    """Claim `uri` for `command` (checks: `plan`), take its lock, delete what --overwrite replaces,
    write the owner record -> the Output to write through. The lock is held until `release` (or
    the process ends)."""
    return _claim(uri, command, s3, inputs=inputs, overwrite=overwrite, resume=resume, identity=identity,
                  refusal=refusal)[0]


def _claim(uri: str, command: str, s3: S3Options, *, inputs: dict[str, str | None] | None, overwrite: bool,
           resume: bool, identity: dict | None, refusal: str) -> tuple[Output, Plan]:
    checked = plan(uri, command, s3, inputs=inputs, overwrite=overwrite, resume=resume, refusal=refusal)
    uri = checked.uri
    held = lock.acquire(uri, _record(uri, LOCK), command, s3)
    try:
        if read_owner(uri, s3) != checked.owner:  # changed between the read-only plan and taking the lock
            checked = plan(uri, command, s3, inputs=inputs, overwrite=overwrite, resume=resume, refusal=refusal,
                           _holding=held.doc["id"])
        if checked.action == "replace":
            _delete(uri, checked.delete, s3)
        owner = checked.owner if checked.action == "continue" else {
            "format": OWNER_FORMAT, "command": command, "job": uuid.uuid4().hex, "created": lock.now(),
            "identity": identity or {}}
        if checked.action != "continue":
            storage.write_bytes(_record(uri, OWNER), json.dumps(owner, indent=1).encode(), s3)
    except BaseException:
        held.release()
        raise
    return Output(uri, command, owner["job"], held.doc["id"], s3), checked


def _delete(uri: str, files: list[str], s3: S3Options) -> None:
    """Recorded files first, then the record's parts (so an interrupted delete leaves a record of
    what remains), then the folders they leave empty (local only; never one that is not empty)."""
    for rel in files:
        storage.delete_file(storage.join(uri, rel), s3)
    for e in storage.entries(_record(uri, FILES), s3) if storage.exists(_record(uri, FILES), s3) else []:
        if e.kind == "file":
            storage.delete_file(storage.join(_record(uri, FILES), e.rel), s3)
    for folder in sorted({rel.rsplit("/", 1)[0] for rel in files if "/" in rel}, key=lambda f: -f.count("/")):
        while folder:
            storage.remove_empty_dir(storage.join(uri, folder))
            folder = folder.rpartition("/")[0]


def release(out: Output) -> None:
    """End the claim on `out`: its lock goes (its record and files stay)."""
    lock.release(out.uri)


@contextmanager
def claimed(uri: str, command: str, s3: S3Options = S3Options(), *, inputs: dict[str, str | None] | None = None,
            overwrite: bool = False, resume: bool = False, identity: dict | None = None,
            refusal: str = "pass --overwrite to replace it") -> Iterator[Output]:
    """`claim` for the length of a with-block, then `release`. A new claim whose block fails before
    it recorded a file is undone: nothing is left where nothing was written."""
    out, checked = _claim(uri, command, s3, inputs=inputs, overwrite=overwrite, resume=resume, identity=identity,
                          refusal=refusal)
    try:
        yield out
    except BaseException:
        wrote = storage.exists(_record(out.uri, FILES), s3) and storage.entries(_record(out.uri, FILES), s3)
        if checked.action == "create" and not wrote:
            storage.delete_file(_record(out.uri, OWNER), s3)  # still holding the lock
        release(out)
        if checked.action == "create" and not wrote:
            storage.remove_empty_dir(_record(out.uri))
            if not checked.existed:
                storage.remove_empty_dir(out.uri)
        raise
    release(out)

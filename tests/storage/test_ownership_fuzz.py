"""The ownership rule against generated output folders: files named as the commands name theirs,
a user's files, FIFOs, symbolic links, nested and empty folders, a record of some other command or
a damaged one. Every command's claim, with and without --overwrite, and its dry run, either
refuses with the tree unchanged or changes only what its own record lists (and adds its record)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simgan_ray.common.errors import SimganError
from simgan_ray.storage import ownership
from tests.conftest import snapshot

COMMANDS = ("simulate", "ingest", "fetch-mnist", "probe", "evaluate", "train", "tune", "refine")
NAMES = ("manifest.json", "shard-00000.parquet", "config.yaml", "holiday.png", "png/shard-00000/a.png",
         "_done/shard-00000.json", "export/refiner.pt", "deep/er/x.bin")
entry = st.tuples(st.sampled_from(NAMES), st.sampled_from(("file", "fifo", "link", "dir")), st.binary(max_size=8))
record = st.one_of(st.none(), st.just("damaged"),
                   st.tuples(st.sampled_from(COMMANDS), st.lists(st.tuples(st.sampled_from(NAMES), st.booleans()),
                                                                 max_size=4)))


def build(root: Path, entries, rec) -> set[str]:
    """The folder: `rec` first (a claim that wrote files, some then changed in size), then the
    entries (a user's) -> the files its record lists (the only ones --overwrite may delete)."""
    recorded = set()
    if rec == "damaged":
        (root / ".simgan-ray").mkdir(parents=True)
        (root / ".simgan-ray" / "owner.json").write_text("{\"format\": \"simgan-ray-owner/1\"")
    elif rec is not None:
        command, files = rec
        with ownership.claimed(str(root), command) as out:
            for name, grown in files:
                out.write({name: b"ours"})
                if grown:
                    (root / name).write_bytes(b"ours, changed")
                recorded.add(name)
    for name, kind, data in entries:
        path = root / name
        if path.exists() or path.is_symlink() or any(p.is_file() for p in path.parents if p != root):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "file":
            path.write_bytes(data)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "link":
            os.symlink("/nonexistent", path)
        else:
            path.mkdir()
    return recorded


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(entry, max_size=5), rec=record, command=st.sampled_from(COMMANDS),
       overwrite=st.booleans(), dry_run=st.booleans(), resume=st.booleans())
def test_a_claim_refuses_unchanged_or_changes_only_its_own(entries, rec, command, overwrite, dry_run, resume):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "out"
        recorded = build(root, entries, rec)
        before = snapshot(str(root))
        try:
            if dry_run:
                ownership.plan(str(root), command, overwrite=overwrite, resume=resume)
            else:
                ownership.release(ownership.claim(str(root), command, overwrite=overwrite, resume=resume))
        except SimganError as e:
            assert "\n" not in str(e)
            assert snapshot(str(root)) == before
            return
        after = snapshot(str(root))
        if dry_run:
            assert after == before
            return
        gone = {rel for rel in before if rel not in after}
        record_files = {rel for rel in before if rel.startswith(".simgan-ray/files/")}
        folders = {str(Path(r).parents[i]) for r in recorded for i in range(len(Path(r).parents) - 1)}
        assert gone <= recorded | record_files | folders, (gone, recorded)
        assert all(before[rel] == "dir" or isinstance(before[rel], bytes) for rel in gone)  # no link or FIFO
        for rel, what in after.items():  # anything new or changed is the claim's own record
            assert before.get(rel) == what or rel.startswith(".simgan-ray"), rel
        owner = json.loads((root / ".simgan-ray" / "owner.json").read_text())
        assert owner["command"] == command
        if rec is not None and rec != "damaged" and not overwrite and not resume:
            assert not any(not rel.startswith(".simgan-ray") for rel in before)  # taken over only when empty

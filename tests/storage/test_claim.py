"""Claim before writing: a command takes a new, empty or its own kind's output, and refuses any
other in one line, changing nothing there (the console script, on local folders and on moto)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.storage import ownership
from tests.conftest import console, one_line_refusal, snapshot, users_set, write_set


def test_a_claim_takes_a_new_or_empty_folder_and_refuses_anything_else(tmp_path):
    made = ownership.claim(str(tmp_path / "new" / "deep"), "simulate")
    ownership.release(made)
    assert json.loads((tmp_path / "new" / "deep" / ".simgan-ray" / "owner.json").read_text())["command"] == "simulate"
    assert not (tmp_path / "new" / "deep" / ".simgan-ray" / "lock.json").exists()  # released
    (tmp_path / "empty").mkdir()
    ownership.release(ownership.claim(str(tmp_path / "empty"), "probe"))
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    before = snapshot(str(tmp_path))
    with pytest.raises(SimganError, match=r"theirs holds files no simgan-ray command wrote \(notes.txt first\)"):
        ownership.claim(str(tmp_path / "theirs"), "probe")
    with pytest.raises(SimganError, match=r"empty belongs to `simgan-ray probe` \(job [0-9a-f]+\), not to `evaluate`"):
        ownership.claim(str(tmp_path / "empty"), "evaluate")
    assert snapshot(str(tmp_path)) == before


@pytest.mark.slow
def test_writers_refuse_a_users_image_set_and_change_nothing(tmp_path, digit_sets):
    users_set(tmp_path / "set")
    (tmp_path / "set" / "config.yaml").write_text("seed: 0\n")  # a user's file of a name train writes
    before = snapshot(str(tmp_path))
    for args in (["simulate", "--count", "4", "--out", str(tmp_path / "set")],
                 ["ingest", "--src", str(tmp_path / "set"), "--out", str(tmp_path / "set")],
                 ["simulate", "--count", "4", "--out", "file://"],  # run from inside the set
                 ["data", "fetch-mnist", "--out", str(tmp_path / "set")]):
        done = console(*args, cwd=tmp_path / "set")
        one_line_refusal(done, str(tmp_path / "set"))
    for resume in ([], ["--resume"], ["--auto-resume"]):
        done = console("train", "--set", f"data.synthetic={digit_sets['synthetic']}", "--set",
                       f"data.real={digit_sets['real']}", "--storage", str(tmp_path), "--name", "set", *resume)
        line = one_line_refusal(done, str(tmp_path / "set"))
        assert "--resume" not in line  # a folder that is not a simgan-ray run is never offered to --resume
    assert snapshot(str(tmp_path)) == before


@pytest.mark.slow
def test_another_commands_output_and_a_damaged_record_are_refused(tmp_path, s3_server):
    s3 = storage.S3Options(endpoint_url=s3_server.endpoint)
    bucket = s3_server.make_bucket("simgan-claim")
    for root, options in ((str(tmp_path), storage.S3Options()), (bucket, s3)):
        with ownership.claimed(storage.join(root, "sim"), "simulate", options) as out:
            out.write({"manifest.json": b"{}"})
        damaged = storage.join(root, "damaged")
        storage.write_bytes(storage.join(damaged, ".simgan-ray", "owner.json"), b"{not json", options)
        users_set(storage.join(root, "users"), options)
        before = snapshot(root, options)
        done = console("ingest", "--src", str(tmp_path / "nowhere"), "--out", storage.join(root, "sim"), s3=options)
        one_line_refusal(done, "sim belongs to `simgan-ray simulate`", "not to `ingest`")
        done = console("simulate", "--count", "4", "--out", damaged, s3=options)
        one_line_refusal(done, "owner.json: not a simgan-ray owner record")
        done = console("simulate", "--count", "4", "--out", storage.join(root, "users"), s3=options)
        one_line_refusal(done, "users holds files no simgan-ray command wrote (manifest.json first)")
        assert snapshot(root, options) == before


def test_the_sets_a_test_writes_by_hand_have_no_owner(tmp_path):
    write_set(tmp_path / "s", "real", np.zeros((2, 1, 28, 28), np.uint8), [None, None], 2)
    assert ownership.read_owner(str(tmp_path / "s")) is None

"""Delete only from the record: `--overwrite` removes the files its owner record lists, with their
recorded sizes, and refuses (deleting nothing) while anything else is there: a user's file of a
name the command writes, a FIFO, a symbolic link, an empty folder, a file whose size changed."""

from __future__ import annotations

import os

import pytest

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.model.export import write_export
from simgan_ray.storage import ownership
from tests.conftest import console, one_line_refusal, snapshot, users_set


def recorded_output(root: str, s3=storage.S3Options()) -> None:
    """An output `refine --format png` could have left: shards, PNGs, markers, all recorded."""
    with ownership.claimed(root, "refine", s3) as out:
        out.write({"shard-00000.parquet": b"p" * 10, "png/shard-00000/a.png": b"png", "png/labels/shard-00000.jsonl":
                   b"{}\n", "_done/shard-00000.json": b"{}", "manifest.json": b"{}"})


def test_overwrite_refuses_what_its_record_does_not_explain(tmp_path):
    root = str(tmp_path / "out")
    recorded_output(root)
    hostile = {
        "a user's file named as refine names its PNGs": lambda: (tmp_path / "out/png/shard-00000/holiday.png")
        .write_bytes(b"mine"),
        "a parquet file it did not write": lambda: (tmp_path / "out/shard-00009.parquet").write_bytes(b"x"),
        "a FIFO": lambda: os.mkfifo(tmp_path / "out/png/pipe"),
        "a dangling symbolic link": lambda: os.symlink("/nonexistent", tmp_path / "out/_done/link.json"),
        "an empty folder": lambda: (tmp_path / "out/png/empty").mkdir(),
        "a recorded file grown": lambda: (tmp_path / "out/manifest.json").write_bytes(b"{} "),
        "a record part of another job": lambda: (tmp_path / "out/.simgan-ray/files/x.json").write_text(
            '{"format": "simgan-ray-files/1", "job": "other", "files": {}}'),
    }
    for what, make in hostile.items():
        before = snapshot(root)
        make()
        spoiled = snapshot(root)
        for dry_run in (False, True):
            with pytest.raises(SimganError, match="nothing was deleted|damaged or foreign"):
                (ownership.plan if dry_run else ownership.claim)(root, "refine", overwrite=True)
            assert snapshot(root) == spoiled, what
        for rel in set(spoiled) - set(before):  # undo it
            path = tmp_path / "out" / rel
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        (tmp_path / "out/manifest.json").write_bytes(b"{}")
        assert snapshot(root) == before, what


def test_overwrite_deletes_exactly_the_recorded_files(tmp_path):
    root = str(tmp_path / "out")
    recorded_output(root)
    plan = ownership.plan(root, "refine", overwrite=True)
    assert plan.action == "replace" and plan.delete == [
        "_done/shard-00000.json", "manifest.json", "png/labels/shard-00000.jsonl", "png/shard-00000/a.png",
        "shard-00000.parquet"]
    out = ownership.claim(root, "refine", overwrite=True)
    ownership.release(out)
    assert sorted(snapshot(root)) == [".simgan-ray", ".simgan-ray/files", ".simgan-ray/owner.json"]


@pytest.mark.slow
def test_the_console_overwrites_its_own_output_only(tmp_path, s3_server, joined_ray):
    """`simulate --overwrite` over its own output, on a local folder and on the moto bucket: a user's
    file there stops it; once moved away, the old shards go and the new set is all that remains."""
    s3 = storage.S3Options(endpoint_url=s3_server.endpoint)
    bucket = s3_server.make_bucket("simgan-record")
    for root, options in ((str(tmp_path / "syn"), storage.S3Options()), (f"{bucket}/syn", s3)):
        done = console("simulate", "--count", "20", "--shard-size", "10", "--out", root, s3=options, env=joined_ray)
        assert done.returncode == 0, done.stderr[-2000:]
        one_line_refusal(console("simulate", "--count", "10", "--out", root, s3=options),
                         "already holds the output of an earlier `simgan-ray simulate`: pass --overwrite")
        storage.write_bytes(storage.join(root, "holiday.png"), b"mine", options)
        before = snapshot(root, options)
        one_line_refusal(console("simulate", "--count", "10", "--out", root, "--overwrite", s3=options),
                         "holds holiday.png, which its record does not list: nothing was deleted")
        assert snapshot(root, options) == before
        storage.delete_file(storage.join(root, "holiday.png"), options)
        done = console("simulate", "--count", "10", "--shard-size", "10", "--out", root, "--overwrite", s3=options,
                       env=joined_ray)
        assert done.returncode == 0, done.stderr[-2000:]
        files = sorted(rel for rel in snapshot(root, options) if not rel.startswith(".simgan-ray"))
        assert files == ["manifest.json", "shard-00000.parquet"]


@pytest.mark.slow
def test_refine_overwrite_dry_run_on_a_users_set_changes_nothing(tmp_path, digit_sets):
    from simgan_ray.model.networks import Refiner, RefinerConfig

    write_export(tmp_path / "export", Refiner(RefinerConfig(features=4, blocks=1)),
                             {"step": 0, "image_shape": [1, 28, 28]})
    users_set(tmp_path / "set")
    before = snapshot(str(tmp_path))
    for extra in (["--overwrite", "--dry-run"], ["--overwrite"], ["--dry-run"]):
        done = console("refine", "--model", str(tmp_path / "export"), "--input", digit_sets["synthetic"],
                       "--output", str(tmp_path / "set"), *extra)
        one_line_refusal(done, "set holds files no simgan-ray command wrote (manifest.json first)")
    assert snapshot(str(tmp_path)) == before

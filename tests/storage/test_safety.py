"""Data safety: no command loses or misplaces a user's files, and every bad input is one
line and exit 2. The data-loss cases run the real refine / train / ingest on local folders and check
that the user's files are intact, that nothing appears outside the output and that the input is
unchanged."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from simgan_ray import cli, storage
from simgan_ray.apply.refine import RefineJob, refine
from simgan_ray.common.errors import SimganError
from simgan_ray.model.export import load_export, write_export
from simgan_ray.model.networks import Refiner, RefinerConfig
from simgan_ray.sets import shards
from simgan_ray.sets.data import head_images
from simgan_ray.sets.ingest import Target, ingest
from simgan_ray.storage import ownership
from simgan_ray.training.config import load_config
from simgan_ray.training.train import TRAIN_SNAPSHOT, fit
from tests.conftest import BIN, TINY, UserFiles, write_set


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (symbolic links not followed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    torch.manual_seed(0)
    export = tmp_path_factory.mktemp("model") / "export"
    write_export(export, Refiner(RefinerConfig(features=4, blocks=1)),
                             {"step": 0, "image_shape": [1, 28, 28]})
    return str(export)


def raw_set(prefix: Path, ids: list, labels: list, count: int | None = None) -> None:
    """A one-shard set written with pyarrow directly, so ids and labels are whatever a user's file
    may hold (shards.make_table refuses bad ids)."""
    png = shards.encode_png(np.full((1, 28, 28), 90, np.uint8))
    table = pa.table({"id": ids, "image": [png] * len(ids), "label": labels})
    prefix.mkdir(parents=True)
    pq.write_table(table, prefix / "shard-00000.parquet")
    manifest = shards.Manifest(kind="synthetic", count=len(ids) if count is None else count, shape=[1, 28, 28],
                               shards=[{"name": "shard-00000.parquet", "rows": len(ids)}])
    shards.write_manifest(UserFiles(prefix), manifest)


# --- data loss -----------------------------------------------------------------------------------

def test_ids_never_become_paths_outside_the_output(ray_session, model, tmp_path):
    escape = tmp_path / "x" / "ESCAPED"
    ids = [f"../../../../{escape}", "/etc/passwd", "sub/a.png", "..", "a\\b", "a.png", "a", "bad\0id"]
    raw_set(tmp_path / "in", ids, [json.dumps({"digit": i}) for i in range(len(ids))])
    before = tree(tmp_path / "in")
    summary = refine(RefineJob(model=model, input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                 format="png"))

    assert not (tmp_path / "x").exists() and not escape.with_suffix(".png").exists()
    assert tree(tmp_path / "in") == before
    out = tmp_path / "out"
    for path in out.rglob("*"):  # nothing reached through a link, nothing hidden but the claim's record
        hidden = path.relative_to(out).parts[0] != ownership.RECORD_DIR and path.name.startswith(".")
        assert path.resolve().is_relative_to(out.resolve()) and not hidden
    # "a" would take "a.png"'s file: skipped and listed, like the id holding a NUL.
    assert summary.rows_out == 6 and len(summary.skipped_images) == 2
    assert any("'bad\\x00id'" in s for s in summary.skipped_images)
    assert any("image a: its PNG file name a.png is already that of image a.png" in s for s in summary.skipped_images)
    entries = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert {e["id"] for e in entries} == set(ids[:6])  # ids kept as data, byte for byte
    for e in entries:
        file = out / e["file"]
        assert file.parent == out / "png" / "shard-00000" and file.read_bytes()[:4] == b"\x89PNG"
    assert sorted(pq.read_table(out / "shard-00000.parquet")["id"].to_pylist()) == sorted(ids[:6])


def test_ingest_skips_files_whose_names_are_no_ids(ray_session, tmp_path):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    png = shards.encode_png(np.full((1, 30, 30), 200, np.uint8))
    for name in ("a.png", "sub/b.png", "back\\slash.png", "ctrl\x01.png"):
        (src / name).write_bytes(png)
    manifest = ingest(str(src), str(tmp_path / "real"), Target(28, 28, 1))
    assert manifest.count == 2 and manifest.source["skipped"] == 2
    assert [s.split(": ", 1)[1] for s in manifest.source["skipped_files"]] == [
        "unusable as an image id: it holds a backslash", "unusable as an image id: it holds a control character"]
    ids, _, _ = head_images(str(tmp_path / "real"), shards.read_manifest(str(tmp_path / "real")), 5)
    assert sorted(ids) == ["a.png", "sub/b.png"]
    with pytest.raises(Exception, match="unusable as an image id: it holds a backslash"):
        ingest(str(src), str(tmp_path / "strict"), Target(28, 28, 1), strict=True)


def test_overwrite_deletes_only_what_refine_wrote(ray_session, model, digit_sets, tmp_path):
    user = tmp_path / "mine"
    (user / "photos").mkdir(parents=True)
    (user / "thesis.txt").write_text("four years")
    (user / "photos" / "a.jpg").write_bytes(b"\xff\xd8 holiday")
    before = tree(user)
    for overwrite in (False, True):
        message = r"mine holds files no simgan-ray command wrote \(photos first\)"
        with pytest.raises(SimganError, match=message):
            refine(RefineJob(model=model, input=digit_sets["synthetic"], output=str(user), overwrite=overwrite))
        assert tree(user) == before

    # An earlier job's output (PNGs too) plus one file of the user's: refused whole, nothing deleted.
    out = tmp_path / "out"
    refine(RefineJob(model=model, input=digit_sets["synthetic"], output=str(out), format="png"))
    (out / "png" / "notes.md").write_text("mine")
    before = tree(out)
    with pytest.raises(SimganError, match="holds png/notes.md, which its record does not list: nothing was deleted"):
        refine(RefineJob(model=model, input=digit_sets["synthetic"], output=str(out), overwrite=True))
    assert tree(out) == before
    # Only refine's files: replaced by the new job's.
    (out / "png" / "notes.md").unlink()
    summary = refine(RefineJob(model=model, input=digit_sets["synthetic"], output=str(out), overwrite=True))
    assert summary.shards_done == 4 and not (out / "png").exists() and not (out / "labels.jsonl").exists()


def test_a_symlinked_alias_is_the_folder_it_names(ray_session, model, digit_sets, tmp_path):
    data = Path(digit_sets["synthetic"])
    alias = tmp_path / "alias"
    alias.symlink_to(data)
    before = tree(data)
    with pytest.raises(SimganError, match="overlaps --input"):
        refine(RefineJob(model=model, input=str(data), output=str(alias), overwrite=True))
    with pytest.raises(SimganError, match="overlaps --input"):
        refine(RefineJob(model=model, input=str(alias), output=str(data / "refined"), overwrite=True))
    cfg = load_config(None, {**TINY, "data.synthetic": str(data), "data.real": digit_sets["real"],
                             "run.storage": str(alias), "run.name": "run"})
    with pytest.raises(SimganError, match="overlaps data.synthetic"):
        fit(cfg)
    src = tmp_path / "photos"
    src.mkdir()
    (src / "a.png").write_bytes(shards.encode_png(np.zeros((1, 28, 28), np.uint8)))
    (tmp_path / "photos-alias").symlink_to(src)
    with pytest.raises(SimganError, match="overlaps --src"):
        ingest(str(src), str(tmp_path / "photos-alias" / "set"), Target(28, 28, 1))
    assert tree(data) == before and sorted(os.listdir(src)) == ["a.png"]


def test_the_output_never_holds_the_model(model, digit_sets):
    before = tree(Path(model))
    for output in (model, str(Path(model) / "refined"), str(Path(model).parent)):
        with pytest.raises(SimganError, match="overlaps --model"):
            refine(RefineJob(model=model, input=digit_sets["synthetic"], output=output, overwrite=True))
    assert tree(Path(model)) == before


# --- hangs, waste and tracebacks -----------------------------------------------------------------

def test_malformed_uris_are_refused(tmp_path):
    for uri, why in (("s3://", "'' is not an S3 bucket name"), ("s3:///x", "'' is not an S3 bucket name"),
                     ("s3://b/a/../x", "the key has an empty, '.' or '..' segment"),
                     ("nosuch://b/x", "unsupported scheme nosuch://"),
                     ("gs://b/x", r"gs:// needs the Python package gcsfs, which is not installed: pip install gcsfs$"),
                     ("http://h/a/../b", "the path has an empty, '.' or '..' segment")):
        with pytest.raises(SimganError, match=why):
            storage.normalize(uri)
    with pytest.raises(SimganError, match="refusing to join '../x'"):
        storage.join(str(tmp_path), "../x")
    with pytest.raises(SimganError, match=r"http://127.0.0.1:1/o: http:// is read-only here"):
        storage.write_bytes("http://127.0.0.1:1/o", b"x")


def test_resources_the_cluster_lacks_fail_fast_naming_them(ray_session, model, digit_sets, tmp_path):
    start = time.monotonic()
    with pytest.raises(SimganError, match=r"1 GPU each do not fit the local Ray .* no autoscaler"):
        refine(RefineJob(model=model, input=digit_sets["synthetic"], output=str(tmp_path / "o"), gpus_per_worker=1))
    cfg = load_config(None, {**TINY, "data.synthetic": digit_sets["synthetic"], "data.real": digit_sets["real"],
                             "run.storage": str(tmp_path / "runs"), "run.gpus_per_worker": 1, "batch_size": 8})
    with pytest.raises(SimganError, match=r"run.gpus_per_worker: 2 worker\(s\) of 1 CPU, 1 GPU each do not fit"):
        fit(cfg)
    # Workers holding every CPU of the session's Ray (4) would leave Ray Data's read tasks none: a
    # run that waits forever, were it not refused.
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"gpus_per_worker": 0, "num_workers": 4})})
    with pytest.raises(SimganError, match=r"4 worker\(s\) of 1 CPU each leave less than 1 CPU for reading data "
                                          r"\(Ray Data's tasks\) in the local Ray \(4 CPU in all"):
        fit(cfg)
    assert time.monotonic() - start < 30


def test_an_export_claiming_huge_sizes_is_refused_before_building_it(model, tmp_path):
    for field, value, why in (("blocks", 1_000_000, "blocks: must be in"),
                              ("features", 1_000_000, "features: must be in"),
                              ("blocks", 3, r"\(1, 4, 3, 3\) does not match the weights .* which have \(1, 4, 3, 1\)")):
        bad = tmp_path / f"{field}-{value}"
        bad.mkdir()
        (bad / "refiner.pt").write_bytes((Path(model) / "refiner.pt").read_bytes())
        meta = json.loads((Path(model) / "refiner.json").read_text())
        meta["refiner"][field] = value
        (bad / "refiner.json").write_text(json.dumps(meta))
        start = time.monotonic()
        with pytest.raises(SimganError, match=why):
            load_export(str(bad))
        assert time.monotonic() - start < 5


def test_labels_that_are_not_json_are_skipped_or_fail_before_their_shard_is_written(ray_session, model, tmp_path):
    raw_set(tmp_path / "in", ["good", "bad"], ['{"digit": 1}', "{digit: 1"])
    summary = refine(RefineJob(model=model, input=str(tmp_path / "in"), output=str(tmp_path / "o1")))
    assert summary.rows_out == 1 and len(summary.skipped_images) == 1
    assert "shard-00000.parquet: image bad: label is not JSON" in summary.skipped_images[0]
    with pytest.raises(Exception, match=r"shard-00000.parquet: image bad: label is not JSON"):
        refine(RefineJob(model=model, input=str(tmp_path / "in"), output=str(tmp_path / "o2"), strict=True))
    assert not (tmp_path / "o2" / "shard-00000.parquet").exists()


def test_a_manifest_whose_count_disagrees_is_refused_before_anything_is_written(model, tmp_path):
    raw_set(tmp_path / "in", ["a", "b"], [None, None], count=999)
    with pytest.raises(SimganError, match="manifest.json: count is 999 but the shards hold 2 rows"):
        refine(RefineJob(model=model, input=str(tmp_path / "in"), output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


# --- one line, exit 2 ----------------------------------------------------------------------------

def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """`simgan-ray ARGS` in this process (the console script's main): -> (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["simgan-ray", *args])
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        signal.signal(signal.SIGTERM, handler)
    return e.value.code, capsys.readouterr().err


def assert_one_line_exit_2(code: int, err: str, *needles: str) -> None:
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in last, (needle, last)


def bad_manifest(root: Path, name: str, change) -> str:
    """A copy of a 64-image set whose manifest is changed by change(dict)."""
    prefix = root / name
    write_set(prefix, "synthetic", np.zeros((64, 1, 28, 28), np.uint8), [None] * 64, 64)
    doc = json.loads((prefix / "manifest.json").read_text())
    change(doc)
    (prefix / "manifest.json").write_text(json.dumps(doc))
    return str(prefix)


def test_bad_configs_and_overrides_are_one_line(monkeypatch, capsys, tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("seed: 1 # caf\xe9".encode("latin-1"))
    cases = [
        (["train", "--config", str(tmp_path)], "a directory, not a config file"),
        (["train", "--config", str(tmp_path / "latin1.yaml")], "not UTF-8 text"),
        (["refine", "--config", str(tmp_path)], "a directory, not a refine job file"),
        (["tune", "--config", str(tmp_path / "latin1.yaml")], "not UTF-8 text"),
        (["train", "--set", "batch_size=[1,"], "override 'batch_size=[1,': the value is not YAML"),
        (["train", "--set", "seed=\t1"], "the value is not YAML"),
        (["train", "--set", "seed=!!python/object/apply:os.system ['echo pwned']"],
         "could not determine a constructor"),
        (["train", "--set", "optimizer_r.betas=[5.0,-3.0]"], "optimizer_r.betas.0"),
        (["train", "--set", f"seed={2**64 + 1}"], "seed: Input should be less than 4294967296"),
        (["train", "--set", "optimizer_r.lr=.inf"], "optimizer_r.lr: Input should be a finite number"),
        (["train", "--set", "data.synthetic=s3://"], "data.synthetic: s3://: '' is not an S3 bucket name"),
        (["refine", "--model", "m", "--input", "i", "--output", "o", "--cpus-per-worker", "-1"],
         "cpus_per_worker: Input should be greater than 0"),
        (["refine", "--model", "m", "--input", "i", "--output", "o", "--s3-endpoint", "http://"],
         "s3.endpoint_url: 'http://' is not an http(s)://HOST[:PORT] URL"),
        (["refine", "--model", "m", "--input", "i", "--output", "s3:///x"], "'' is not an S3 bucket name"),
        (["evaluate", "--synthetic", "s", "--real-train", "r", "--real-test", "t", "--real-pool", "p", "--out", "o",
          "--refined", "x", "--test-images", "0"], "--test-images: Input should be greater than or equal to 1"),
        (["probe", "--real-train", "r", "--reference", "p", "--out", "o", "--s3-endpoint", "ftp://x"],
         "--s3-endpoint: 'ftp://x' is not an http(s)://HOST[:PORT] URL"),
    ]
    for args, needle in cases:
        assert_one_line_exit_2(*run_cli(monkeypatch, capsys, *args), needle)
    assert not Path("s3:").exists()


def test_bad_manifests_shards_and_exports_are_one_line(monkeypatch, capsys, model, digit_sets, tmp_path):
    def drop_name(doc):
        del doc["shards"][0]["name"]

    def wrong_schema(doc):
        pq.write_table(pa.table({"id": ["a"] * 64, "pixels": [b"x"] * 64}), tmp_path / "schema" / "shard-00000.parquet")

    sets = {
        "noname": (drop_name, "shards.0.name: Field required"),
        "notlist": (lambda d: d.update(shards={"name": "x"}), "shards: Input should be a valid list"),
        "rowstext": (lambda d: d["shards"][0].update(rows="64"), "shards.0.rows: Input should be a valid integer"),
        "climb": (lambda d: d["shards"][0].update(name="../x.parquet"), "shards.0.name: '../x.parquet' is not a shard"),
        "absolute": (lambda d: d["shards"][0].update(name="/etc/passwd"), "shards.0.name: '/etc/passwd' is not"),
        "count": (lambda d: d.update(count=999), "count is 999 but the shards hold 64 rows"),
        "schema": (wrong_schema, "wrong schema: no column 'image' (binary); no column 'label' (string) (columns "
                                 "simgan-ray does not write: pixels)"),
    }
    for name, (change, needle) in sets.items():
        prefix = bad_manifest(tmp_path, name, change)
        code, err = run_cli(monkeypatch, capsys, "train", "--set", f"data.synthetic={prefix}", "--set",
                            f"data.real={digit_sets['real']}", "--storage", str(tmp_path / "runs"), "--name", name)
        assert_one_line_exit_2(code, err, needle)

    exports = {"empty": (lambda d: (d / "refiner.pt").write_bytes(b""), "refiner.pt: not a simgan-ray tensor file"),
               "shape": (lambda d: (d / "refiner.json").write_text(json.dumps(
                   {**json.loads((d / "refiner.json").read_text()), "image_shape": 5})), "image_shape: 5 is not")}
    for name, (spoil, needle) in exports.items():
        export = tmp_path / name
        export.mkdir()
        for f in ("refiner.pt", "refiner.json"):
            (export / f).write_bytes((Path(model) / f).read_bytes())
        spoil(export)
        code, err = run_cli(monkeypatch, capsys, "refine", "--model", str(export), "--input", digit_sets["synthetic"],
                            "--output", str(tmp_path / f"out-{name}"))
        assert_one_line_exit_2(code, err, needle)

    record = tmp_path / "record" / ownership.RECORD_DIR
    record.mkdir(parents=True)
    (record / ownership.OWNER).write_text("{not json")
    code, err = run_cli(monkeypatch, capsys, "refine", "--model", model, "--input", digit_sets["synthetic"],
                        "--output", str(record.parent))
    assert_one_line_exit_2(code, err, "owner.json: not a simgan-ray owner record")


def test_history_beyond_memory_and_a_run_without_checkpoint_are_one_line(monkeypatch, capsys, digit_sets, tmp_path):
    base = ["train", "--set", f"data.synthetic={digit_sets['synthetic']}", "--set", f"data.real={digit_sets['real']}",
            "--storage", str(tmp_path)]
    code, err = run_cli(monkeypatch, capsys, *base, "--name", "big", "--set", "history_size=1000000000000")
    assert_one_line_exit_2(code, err, "history_size: 1000000000000 images of 1x28x28 take", "GiB of float32 per worker")
    # A run that stopped before its first checkpoint leaves config.yaml only.
    with ownership.claimed(str(tmp_path / "early"), "train") as early:
        early.write({"config.yaml": b"seed: 0\n"})
    code, err = run_cli(monkeypatch, capsys, *base, "--name", "early")
    assert_one_line_exit_2(code, err, "already holds a simgan-ray training run: continue it with --resume, or pick "
                           "another run.name")
    code, err = run_cli(monkeypatch, capsys, *base, "--name", "early", "--resume", "--set",
                        "history_size=1000000000000")
    assert "has no checkpoint (the run stopped before its first one): starting it over from step 0" in err
    assert_one_line_exit_2(code, err, "history_size")  # refused after the note, before any Ray work


@pytest.mark.slow
def test_the_console_script_refuses_an_output_without_a_bucket(tmp_path):
    out = subprocess.run([str(BIN), "refine", "--model", "m", "--input", "i", "--output", "s3://"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert_one_line_exit_2(out.returncode, out.stderr, "output: s3://: '' is not an S3 bucket name")
    assert os.listdir(tmp_path) == []


# --- interrupts ----------------------------------------------------------------------------------

def test_the_interrupt_line_comes_after_the_workers_open_progress_bars(monkeypatch, capsys):
    """A split stopped part-way leaves its bar open in the driver, where Ray's print() redraws the
    open bars after each line it prints: seen once on CI as a bar below the interrupt line."""
    from ray.experimental import tqdm_ray

    from simgan_ray.runtime.session import exit_interrupted

    monkeypatch.setattr(tqdm_ray, "_manager", tqdm_ray._BarManager())  # this test's own bars
    monkeypatch.setattr("builtins.print", tqdm_ray.safe_print)  # as Ray patches it in a driver with bars
    bar = {"desc": "- split(1, equal=True)", "total": 2000, "unit": "row", "pos": 0, "x": 925, "uuid": "u",
           "closed": False, "ip": "10.0.0.9", "pid": 31044}  # a worker's bar, as its update arrives
    tqdm_ray.instance().process_state_update(bar)
    monkeypatch.setattr("os._exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    monkeypatch.setattr("ray.shutdown", lambda: None)  # not the test session's shared Ray
    with pytest.raises(SystemExit) as stopped:
        exit_interrupted(signal.SIGINT, "train")
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert "split(1, equal=True)" in err  # the bar was drawn, then cleared before the line
    assert err.strip().splitlines()[-1] == ("interrupted (SIGINT): run the same command with --resume (or "
                                            "--auto-resume) to continue from the last checkpoint")


@pytest.mark.slow
def test_sigterm_during_refine_and_sigint_during_train_say_how_to_continue(digit_sets, model, tmp_path, joined_ray):
    """The real console script, stopped part-way: one last line, exit 143 / 130; then the rerun
    finishes the refine, and the same train command line (--auto-resume) continues the run (both
    reruns on the session's Ray)."""
    big = tmp_path / "big"
    noise = np.random.default_rng(0).integers(0, 255, (1000, 1, 28, 28), np.uint8)
    write_set(big, "synthetic", noise, [None] * 1000, 25)
    refine_args = [str(BIN), "refine", "--model", model, "--input", str(big), "--output", str(tmp_path / "out"),
                   "--batch-size", "5"]
    proc = subprocess.Popen(refine_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while len(list((tmp_path / "out" / "_done").glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err and "SIGTERM received" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == ("interrupted (SIGTERM): run the same command again to finish: "
                                             "finished shards are kept")
    assert len(list((tmp_path / "out" / "_done").glob("*.json"))) < 40
    again = subprocess.run(refine_args, capture_output=True, text=True, timeout=300, env={**os.environ, **joined_ray})
    assert again.returncode == 0 and "already done" in again.stdout

    # One command line for the first attempt and the retry (a RayJob's pod restarted, a spot node lost).
    train_args = [str(BIN), "train", "--storage", str(tmp_path / "runs"), "--name", "r", "--num-workers", "1",
                  "--auto-resume", "--set", f"data.synthetic={big}", "--set", f"data.real={digit_sets['real']}",
                  "--set", "batch_size=8", "--set", "history_size=64", "--set", "schedule.pretrain_refiner_steps=10",
                  "--set", "schedule.pretrain_discriminator_steps=10", "--set", "schedule.steps=80", "--set",
                  "run.checkpoint_every=20", *[x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]]
    proc = subprocess.Popen(train_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "runs" / "r" / TRAIN_SNAPSHOT).exists() and proc.poll() is None:  # a committed checkpoint
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == ("interrupted (SIGINT): run the same command with --resume (or "
                                             "--auto-resume) to continue from the last checkpoint")
    # Stopped before its end: nothing the driver writes after training (the live metrics.jsonl is there).
    assert not (tmp_path / "runs" / "r" / "curves.png").exists()
    assert (tmp_path / "runs" / "r" / "metrics.jsonl").exists()
    again = subprocess.run(train_args, capture_output=True, text=True, timeout=300, env={**os.environ, **joined_ray})
    assert again.returncode == 0 and "resumed at step" in again.stdout + again.stderr, again.stderr[-2000:]
    assert "done: step 100" in again.stdout
    steps = [json.loads(line)["step"] for line in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 101, 10))  # every report once

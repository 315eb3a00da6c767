"""A dry run changes nothing anywhere: every writing command's `--dry-run`, with and without
`--overwrite`, run as the console script against an output of its own kind (with recorded files),
a user's image set and a new location, on local folders and on the moto bucket; the whole local
tree and the whole bucket are compared before and after."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from simgan_ray import storage
from simgan_ray.model.export import write_export
from simgan_ray.model.networks import Refiner, RefinerConfig
from simgan_ray.sets import shards
from simgan_ray.storage import ownership
from simgan_ray.training.config import dump_config, load_config
from tests.conftest import TINY, console, snapshot, users_set


def commands(root: str, inputs: dict[str, str], tmp_path) -> dict[str, list[str]]:
    """Each writing command's arguments, writing to the output `root`/<command>."""
    out = {name: storage.join(root, name) for name in ("simulate", "ingest", "fetch-mnist", "probe", "evaluate",
                                                      "refine")}
    return {
        "simulate": ["simulate", "--count", "8", "--out", out["simulate"]],
        "ingest": ["ingest", "--src", inputs["pngs"], "--out", out["ingest"]],
        "fetch-mnist": ["data", "fetch-mnist", "--out", out["fetch-mnist"], "--cache", str(tmp_path / "cache")],
        "probe": ["probe", "--real-train", inputs["dev"], "--reference", inputs["real"], "--out", out["probe"]],
        "evaluate": ["evaluate", "--synthetic", inputs["synthetic"], "--real-train", inputs["dev"], "--real-test",
                     inputs["val"], "--real-pool", inputs["real"], "--refiner", inputs["export"], "--out",
                     out["evaluate"]],
        "refine": ["refine", "--model", inputs["export"], "--input", inputs["synthetic"], "--output", out["refine"]],
    }


@pytest.mark.slow
def test_every_dry_run_changes_nothing(tmp_path, s3_server, digit_sets, labelled_real_sets):
    s3 = storage.S3Options(endpoint_url=s3_server.endpoint)
    bucket = s3_server.make_bucket("simgan-dry")
    write_export(tmp_path / "export", Refiner(RefinerConfig(features=4, blocks=1)),
                             {"step": 0, "image_shape": [1, 28, 28]})
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "a.png").write_bytes(shards.encode_png(np.zeros((1, 28, 28), np.uint8)))
    inputs = {**digit_sets, **labelled_real_sets, "export": str(tmp_path / "export"), "pngs": str(tmp_path / "pngs")}
    runs = []
    for root, options in ((str(tmp_path / "outputs"), storage.S3Options()), (f"{bucket}/outputs", s3)):
        for name, args in commands(root, inputs, tmp_path).items():
            target = args[args.index("--output" if name == "refine" else "--out") + 1]
            for state in ("own", "users", "new"):
                where = storage.join(target, state)
                if state == "own":  # an earlier output of this command, its files recorded
                    with ownership.claimed(where, name, options) as out:
                        out.write({"manifest.json": b"{}", "shard-00000.parquet": b"x"})
                elif state == "users":
                    users_set(where, options)
                argv = [*args[:-1], where, "--dry-run"]
                runs += [(argv, options), ([*argv, "--overwrite"], options)]
        cfg = load_config(None, {**TINY, "data.synthetic": digit_sets["synthetic"], "data.real": digit_sets["real"],
                                 "data.s3.endpoint_url": options.endpoint_url})
        base = tmp_path / f"base-{len(runs)}.yaml"
        base.write_text(dump_config(cfg))
        spec = {"base": str(base), "search": {"loss.lam": {"choice": [0.1]}}, "num_samples": 1,
                "storage": storage.join(root, "sweeps"), "name": "t",
                "probe": {"uri": storage.join(root, "probe-t"), "real_train": digit_sets["synthetic"],
                          "reference": digit_sets["real"]}}
        spec_file = tmp_path / f"tune-{len(runs)}.yaml"
        spec_file.write_text(yaml.safe_dump(spec))
        runs.append((["tune", "--config", str(spec_file), "--dry-run"], None))
        train = ["train", "--config", str(base), "--storage", storage.join(root, "runs"), "--dry-run"]
        with ownership.claimed(storage.join(root, "runs", "own"), "train", options) as out:
            out.write({"config.yaml": dump_config(cfg).encode()})
        users_set(storage.join(root, "runs", "users"), options)
        runs += [([*train, "--name", name, *resume], None) for name in ("own", "users", "new")
                 for resume in ([], ["--resume"])]

    before = snapshot(str(tmp_path)), snapshot(bucket, s3)
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda run: console(*run[0], s3=run[1]), runs))
    for (argv, _), result in zip(runs, done, strict=True):
        assert result.returncode in (0, 2) and "Traceback" not in result.stderr, (argv, result.stderr[-2000:])
        if result.returncode == 0:
            assert "nothing started" in result.stderr.splitlines()[-1], (argv, result.stderr[-500:])
    assert (snapshot(str(tmp_path)), snapshot(bucket, s3)) == before
    # What the dry runs say, for a few: a new output is created, one's own replaced by --overwrite.
    said = {" ".join(argv): result.stderr.strip().splitlines()[-1]
            for (argv, _), result in zip(runs, done, strict=True)}
    local = str(tmp_path / "outputs" / "simulate")
    new = said[f"simulate --count 8 --out {local}/new --dry-run"]
    assert f"create {local}/new, on a local Ray (" in new and new.endswith("; nothing started")
    assert "replace" in said[f"simulate --count 8 --out {local}/own --dry-run --overwrite"]
    assert "holds files no simgan-ray command wrote" in said[f"simulate --count 8 --out {local}/users --dry-run "
                                                             "--overwrite"]
    assert sum(result.returncode == 0 for result in done) >= len(runs) // 3

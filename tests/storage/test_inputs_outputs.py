"""Inputs never become outputs: for every command, an output equal to, inside or containing any of
its inputs (image sets, exports, the probe, run folders, font folders) is refused in one line,
after resolving symbolic links, file:// and relative spellings; nothing is written."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from simgan_ray.model.export import write_export
from simgan_ray.model.networks import Refiner, RefinerConfig
from simgan_ray.sets import simulate
from tests.conftest import console, one_line_refusal, snapshot


@pytest.mark.slow
def test_no_command_writes_into_what_it_reads(tmp_path, digit_sets, labelled_real_sets):
    data = tmp_path / "data"
    for name, prefix in (("synthetic", digit_sets["synthetic"]), ("real", digit_sets["real"]),
                         *labelled_real_sets.items()):
        shutil.copytree(prefix, data / name)
    write_export(data / "export", Refiner(RefinerConfig(features=4, blocks=1)),
                             {"step": 0, "image_shape": [1, 28, 28]})
    (data / "fonts").mkdir()
    fonts = simulate.discover_fonts(tuple(str(d) for d in simulate.default_font_dirs()))
    shutil.copy(fonts[0], data / "fonts")
    os.symlink(data, tmp_path / "alias")  # another name for the data folder
    syn, dev, val, real, export = (str(data / n) for n in ("synthetic", "dev", "val", "real", "export"))
    sets = [f"--set=data.synthetic={syn}", f"--set=data.real={real}"]
    cases = [  # (arguments, the input named in the refusal)
        (["evaluate", "--synthetic", syn, "--real-train", dev, "--real-test", val, "--real-pool", real, "--refiner",
          export, "--out", "file://" + val], "--real-test"),
        (["evaluate", "--synthetic", syn, "--real-train", dev, "--real-test", val, "--real-pool", real, "--refined",
          syn, "--out", str(tmp_path / "alias" / "synthetic" / "report")], "--synthetic"),
        (["probe", "--real-train", dev, "--reference", real, "--out", "data/real"], "--reference"),  # relative
        (["probe", "--real-train", dev, "--reference", real, "--out", str(tmp_path)], "--real-train"),  # contains
        (["refine", "--model", export, "--input", syn, "--output", str(tmp_path / "alias" / "export" / "r")],
         "--model"),
        (["refine", "--model", export, "--input", syn, "--output", "file://" + str(tmp_path / "alias")], "--input"),
        (["ingest", "--src", str(data / "fonts"), "--out", str(tmp_path / "alias" / "fonts" / "set")], "--src"),
        (["simulate", "--count", "4", "--font-dir", str(data / "fonts"), "--out", str(tmp_path / "alias")],
         "--font-dir"),
        (["train", *sets, "--storage", str(tmp_path / "alias"), "--name", "synthetic"], "data.synthetic"),
        (["train", *sets, "--storage", str(tmp_path), "--name", "data"], "data.synthetic"),
        (["data", "fetch-mnist", "--out", str(tmp_path), "--cache", str(data / "cache")], "--cache"),
    ]
    before = snapshot(str(tmp_path))
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda case: console(*case[0], cwd=tmp_path), cases))
    for (args, option), result in zip(cases, done, strict=True):
        line = one_line_refusal(result, "overlaps", option)
        assert "never writes into what it reads" in line or "apart from" in line, (args, line)
    assert snapshot(str(tmp_path)) == before

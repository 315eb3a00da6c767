"""Bad input, fuzzed: whatever the bytes, a config file, a job file, a cluster file or an image
either loads as something valid or is refused with a one-line SimganError naming the file (or
image) and field; never another exception, never a silently wrong result."""

import io
import json
import os
import string
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from simgan_ray import storage
from simgan_ray.apply.refine import load_refine_job
from simgan_ray.common.errors import SimganError
from simgan_ray.runtime.cluster import load_cluster
from simgan_ray.sets import data, shards
from simgan_ray.training.config import load_config
from tests.conftest import write_set

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = ["seed", "batch_size", "history_size", "refiner", "discriminator", "loss", "optimizer_r", "schedule", "data",
        "run", "probe", "guard", "min_label_acc", "max_rollbacks", "warmup_steps", "lam", "features", "blocks",
        "widths", "k_g", "k_d", "steps", "storage", "name", "num_workers",
        "psi", "reduction", "lr", "betas", "channels", "kernel", "norm", "logits", "model", "input", "output",
        "provider", "head_ip", "cluster_name", "bogus"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=12),
                    st.sampled_from(["identity", "sum", "adam", "local", "1e300"]))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                     max_leaves=12)
DIGITS = yaml.safe_load((Path(__file__).resolve().parents[1] / "jobs" / "digits.yaml").read_text())


def refused_in_one_line(error: SimganError, path) -> None:
    assert str(path) in str(error) and "\n" not in str(error)


def write(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


@SETTINGS
@given(tree=trees)
def test_any_config_file_is_valid_or_refused_by_name(tmp_path, tree):
    path = write(tmp_path, "fuzz.yaml", {"x": tree} if not isinstance(tree, dict) else tree)
    try:
        cfg = load_config(path)
    except SimganError as e:
        refused_in_one_line(e, path)
        return
    assert load_config(write(tmp_path, "again.yaml", cfg.to_dict())) == cfg  # what it accepts reads back the same


@SETTINGS
@given(section=st.sampled_from(sorted(DIGITS)), key=st.sampled_from(KEYS), value=scalars)
def test_one_bad_field_in_a_real_job_is_named(tmp_path, section, key, value):
    """jobs/digits.yaml with one field set to anything: valid, or refused naming that field."""
    job = yaml.safe_load(yaml.safe_dump(DIGITS))
    if isinstance(job[section], dict):
        job[section][key] = value
        field = f"{section}.{key}"
    else:
        job[section] = value
        field = section
    path = write(tmp_path, "job.yaml", job)
    try:
        load_config(path)
    except SimganError as e:
        refused_in_one_line(e, path)
        assert field in str(e) or "channels" in str(e)  # channels: the R/D agreement check names both


@SETTINGS
@given(tree=trees, text=st.text(max_size=60))
def test_any_refine_or_cluster_file_is_valid_or_refused_by_name(tmp_path, tree, text):
    for content in (tree if isinstance(tree, dict) else {"x": tree}, text):
        path = write(tmp_path, "f.yaml", content)
        try:
            job = load_refine_job(path, {})
        except SimganError as e:
            refused_in_one_line(e, path)
            continue
        assert load_refine_job(write(tmp_path, "again.yaml", job.model_dump(mode="json")), {}) == job
        try:
            load_cluster(path)
        except SimganError as e:
            refused_in_one_line(e, path)


def _png(shape, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros(shape, np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


GOOD = _png((28, 28))
image_bytes = st.one_of(
    st.binary(max_size=300),  # noise, including b"" (a zero-byte object)
    st.integers(0, len(GOOD)).map(lambda n: GOOD[:n]),  # truncated PNGs
    st.tuples(st.integers(8, len(GOOD) - 1), st.integers(0, 255)).map(  # one corrupted byte
        lambda p: GOOD[: p[0]] + bytes([p[1]]) + GOOD[p[0] + 1:]),
    st.sampled_from([_png((28, 27)), _png((28, 28, 3), "RGB"), _png((56, 56)), GOOD]),  # wrong sizes / channels
)


@settings(max_examples=300, deadline=None)
@given(blob=image_bytes)
def test_any_image_bytes_decode_right_or_are_refused_by_id(blob):
    try:
        image = data.decode_image("img-7", blob, [1, 28, 28])
    except SimganError as e:
        assert str(e).startswith("image img-7: ") and "\n" not in str(e)
    else:
        assert image.shape == (1, 28, 28) and image.dtype == np.uint8  # (C, H, W) as the set declares


def test_empty_real_set_is_refused(tmp_path, digit_sets):
    write_set(tmp_path / "empty", "real", np.zeros((0, 1, 28, 28), np.uint8), [], 10)
    with pytest.raises(SimganError, match=r"real set .*empty has 0 images, fewer than one batch"):
        data.check_training_sets(digit_sets["synthetic"], str(tmp_path / "empty"), 1, 8)


# --- ids and manifests come from users' files -----------------------------------------

@settings(max_examples=400, deadline=None)
@given(image_id=st.text(max_size=300), other=st.text(max_size=40))
def test_any_id_becomes_one_plain_file_name_under_its_folder(tmp_path_factory, image_id, other):
    name = shards.png_file_name(image_id)
    assert storage.bad_segment(name) is None and "/" not in name and "\\" not in name
    assert not name.startswith(".") and name.endswith(".png") and len(name) <= 204
    root = "/out"
    assert storage.join(root, "png", "shard-00000", name).startswith(root + "/png/shard-00000/")
    # Distinct valid ids get distinct files, but for a trailing .png (refine skips the second, naming both).
    valid = shards.id_problem(image_id) is None and shards.id_problem(other) is None
    if valid and image_id != other and not {image_id, other} & {i + ".png" for i in (image_id, other)} \
            and len(name) < 180:
        assert shards.png_file_name(other) != name
    try:
        shards.make_table([image_id], [np.zeros((1, 2, 2), np.uint8)], [None])
    except SimganError as e:
        assert shards.id_problem(image_id) is not None and "\n" not in str(e)
    else:
        assert shards.id_problem(image_id) is None


MANIFEST_KEYS = ["format", "kind", "count", "shape", "shards", "source", "name", "rows", "extra"]
manifest_values = st.recursive(
    st.one_of(scalars, st.sampled_from([shards.FORMAT, "shard-00000.parquet", "../x.parquet", "/etc/passwd", 64])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(MANIFEST_KEYS), inner,
                                                                         max_size=6)),
    max_leaves=14)


@SETTINGS
@given(doc=manifest_values, field=st.sampled_from(MANIFEST_KEYS[:6]), value=manifest_values)
def test_any_manifest_is_valid_or_refused_by_name(tmp_path, doc, field, value):
    valid = {"format": shards.FORMAT, "kind": "real", "count": 64, "shape": [1, 28, 28],
             "shards": [{"name": "shard-00000.parquet", "rows": 64}], "source": {}}
    for content in (doc, {**valid, field: value}):
        (tmp_path / "manifest.json").write_text(json.dumps(content))
        try:
            m = shards.read_manifest(str(tmp_path))
        except SimganError as e:
            assert str(tmp_path / "manifest.json") in str(e) and "\n" not in str(e)
        else:  # what readers rely on: every shard a plain file beside the manifest, the rows add up
            assert m.count == sum(s["rows"] for s in m.shards) and len(m.shape) == 3
            for uri in shards.shard_uris(str(tmp_path), m):
                assert os.path.dirname(uri) == str(tmp_path) and uri.endswith(".parquet")

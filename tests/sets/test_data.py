import hashlib
import json

import numpy as np
import pytest
from ray.data._internal.execution.execution_callback import ExecutionCallback

from simgan_ray.common.errors import SimganError
from simgan_ray.sets import data, shards
from tests.conftest import UserFiles, write_set


def test_unit_range_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 7, 9), dtype=np.uint8)
    x = data.unit_range(images)
    assert x.shape == (5, 3, 7, 9) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(data.to_uint8(x), images)  # NCHW in, NCHW out
    assert np.array_equal(shards.decode_png(shards.encode_png(images[0])), images[0])  # the codec keeps CHW


def test_check_training_sets(digit_sets, tmp_path):
    syn, real = data.check_training_sets(digit_sets["synthetic"], digit_sets["real"], 1, 64)
    assert syn.count == real.count == 256
    with pytest.raises(SimganError, match="fewer than one batch"):
        data.check_training_sets(digit_sets["synthetic"], digit_sets["real"], 1, 1000)
    with pytest.raises(SimganError, match="refiner.channels is 3"):
        data.check_training_sets(digit_sets["synthetic"], digit_sets["real"], 3, 8)
    other = tmp_path / "big"
    write_set(other, "real", np.zeros((4, 1, 32, 32), np.uint8), [None] * 4, 4)
    with pytest.raises(SimganError, match=r"1x28x28 .* are 1x32x32"):
        data.check_training_sets(digit_sets["synthetic"], str(other), 1, 1)
    with pytest.raises(SimganError, match="dataset not found"):
        data.check_training_sets(str(tmp_path / "missing"), digit_sets["real"], 1, 1)
    (tmp_path / "incomplete").mkdir()
    with pytest.raises(SimganError, match="manifest.json: missing"):
        data.check_training_sets(str(tmp_path / "incomplete"), digit_sets["real"], 1, 1)


def test_decode_names_the_bad_image():
    good = shards.encode_png(np.zeros((1, 28, 28), np.uint8))
    wrong = shards.encode_png(np.zeros((1, 20, 28), np.uint8))
    assert data.decode_image("a", good, [1, 28, 28]).shape == (1, 28, 28)
    with pytest.raises(SimganError, match="image b: shape 1x20x28"):
        data.decode_image("b", wrong, [1, 28, 28])
    with pytest.raises(SimganError, match="image c: cannot decode"):
        data.decode_image("c", b"not a png", [1, 28, 28])


def test_raw_shards_hold_the_same_pixels_and_a_bad_one_is_named(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 3, 7, 9), dtype=np.uint8)
    for encoding in ("png", "raw"):
        write_set(tmp_path / encoding, "real", images, [None] * 20, 8, encoding)
        manifest = shards.read_manifest(str(tmp_path / encoding))
        assert manifest.encoding == encoding
        _, read, _ = data.head_images(str(tmp_path / encoding), manifest, 20)
        assert np.array_equal(read, images)
        ids, read, labels = data.head_images(str(tmp_path / encoding), manifest, 13)  # shards of 8: one and a part
        assert np.array_equal(read, images[:13]) and len(ids) == len(labels) == 13
    doc = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert doc["encoding"] == "raw"
    # A set written before the field existed holds PNGs.
    del doc["encoding"]
    (tmp_path / "raw" / "manifest.json").write_text(json.dumps(doc))
    assert shards.read_manifest(str(tmp_path / "raw")).encoding == "png"
    (tmp_path / "raw" / "manifest.json").write_text(json.dumps({**doc, "encoding": "jpeg"}))
    with pytest.raises(SimganError, match=r"manifest.json: encoding: Input should be 'png' or 'raw'"):
        shards.read_manifest(str(tmp_path / "raw"))
    with pytest.raises(SimganError, match=r"image c: cannot decode \(3 bytes, not the 189 raw pixels of 3x7x9\)"):
        data.decode_image("c", b"abc", [3, 7, 9], "raw")


def test_raw_pixels_are_one_copy_and_a_bad_image_falls_back_to_being_named():
    import pyarrow as pa

    from simgan_ray.common.errors import BadItems

    images = np.random.default_rng(1).integers(0, 256, (6, 3, 7, 9), dtype=np.uint8)
    table = shards.make_table([f"r{i}" for i in range(6)], images, [None] * 6, "raw")
    column = pa.chunked_array([table["image"].combine_chunks()[:2], table["image"].combine_chunks()[2:]])
    assert np.array_equal(shards.raw_pixels(column, [3, 7, 9]), images)  # chunks, a slice's offset
    assert shards.raw_pixels(column.combine_chunks()[4:], [3, 7, 9]).shape == (2, 3, 7, 9)
    assert shards.raw_pixels(table["image"], [3, 9, 7]) is not None  # sizes match: the manifest's shape rules
    assert shards.raw_pixels(table["image"], [3, 7, 8]) is None
    assert shards.raw_pixels(table["image"][:0], [3, 7, 9]).shape == (0, 3, 7, 9)
    blobs = table["image"].to_pylist()
    short = table.set_column(1, "image", pa.array(blobs[:3] + [b"abc"] + blobs[4:], pa.binary()))
    null = table.set_column(1, "image", pa.array(blobs[:3] + [None] + blobs[4:], pa.binary()))
    assert shards.raw_pixels(short["image"], [3, 7, 9]) is None and shards.raw_pixels(null["image"], [3, 7, 9]) is None
    assert np.array_equal(data.decode_shard("u", table, [3, 7, 9], "raw", BadItems(True)), images)
    with pytest.raises(SimganError, match=r"u: image r3: cannot decode \(3 bytes, not the 189 raw pixels"):
        data.decode_shard("u", short, [3, 7, 9], "raw", BadItems(True))
    lenient = BadItems(False)
    kept = data.decode_shard("u", short, [3, 7, 9], "raw", lenient)
    assert np.array_equal(kept, np.delete(images, 3, axis=0)) and len(lenient.reasons) == 1


def test_read_tasks_read_several_shards_and_hand_on_a_block_per_shard(ray_session, tmp_path):
    assert [data.shards_per_task(n, 4) for n in (1, 8, 16, 40, 100, 4096)] == [1, 1, 2, 5, 8, 8]
    images = np.random.default_rng(2).integers(0, 256, (16 * 20, 1, 28, 28), dtype=np.uint8)
    write_set(tmp_path / "set", "synthetic", images, [None] * len(images), 20, "raw")
    manifest = shards.read_manifest(str(tmp_path / "set"))
    ds = data.image_dataset(str(tmp_path / "set"), manifest, images=3 * len(images), shuffle_files=True, seed=0)
    read = ds.materialize()  # 48 reads on a Ray of 4 CPUs: 6 shards a task, 8 tasks
    assert read.num_blocks() == 48 and read.count() == 3 * len(images)
    assert "8 tasks executed, 48 blocks produced" in read.stats()
    streamed = np.concatenate([b["image"] for b in read.iter_batches(batch_size=None)])
    assert np.array_equal(np.unique(streamed, axis=0), np.unique(images, axis=0))


def test_ray_dataset_streams_decoded_images(ray_session, digit_sets):
    manifest = shards.read_manifest(digit_sets["synthetic"])
    ds = data.image_dataset(digit_sets["synthetic"], manifest)
    batch = next(iter(ds.iter_batches(batch_size=32)))
    assert batch["image"].shape == (32, 1, 28, 28) and batch["image"].dtype == np.uint8
    x = data.unit_range(batch["image"])
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert ds.count() == 256


def test_one_execution_reads_the_passes_its_consumers_take(ray_session, digit_sets):
    manifest = shards.read_manifest(digit_sets["synthetic"])  # 256 images
    ds = data.image_dataset(digit_sets["synthetic"], manifest, images=600, shuffle_files=True, seed=3)
    assert ds.count() == 3 * 256
    assert data.image_dataset(digit_sets["synthetic"], manifest, images=1).count() == 256
    uris = [f"s{i}" for i in range(8)]
    order = data.read_order(uris, 3, True, 3)
    passes = [order[i:i + 8] for i in range(0, 24, 8)]
    assert all(sorted(p) == uris for p in passes) and len({tuple(p) for p in passes}) == 3
    assert order == data.read_order(uris, 3, True, 3) != data.read_order(uris, 3, True, 4)
    assert data.read_order(uris, 2, False, None) == uris + uris


def test_ray_dataset_streams_raw_shards_as_the_same_images(ray_session, digit_sets, tmp_path):
    manifest = shards.read_manifest(digit_sets["synthetic"])
    _, images, labels = data.head_images(digit_sets["synthetic"], manifest, 256)
    write_set(tmp_path / "raw", "synthetic", images, labels, 64, "raw")
    raw = shards.read_manifest(str(tmp_path / "raw"))
    streamed = np.concatenate([b["image"] for b in data.image_dataset(str(tmp_path / "raw"), raw).iter_batches()])
    key = lambda x: sorted(hashlib.sha256(i.tobytes()).hexdigest() for i in x)  # noqa: E731
    assert streamed.shape == images.shape and key(streamed) == key(images)


def test_corrupt_image_in_a_shard_is_skipped_and_counted_or_fatal_when_strict(ray_session, tmp_path):
    images = np.full((10, 1, 28, 28), 100, np.uint8)
    write_set(tmp_path / "set", "real", images, [None] * 10, 5)
    manifest = shards.read_manifest(str(tmp_path / "set"))
    # Replace shard 1 with one whose third image is truncated PNG bytes.
    table = shards.make_table([f"x{i}" for i in range(5)], images[:5], [None] * 5)
    blobs = table["image"].to_pylist()
    blobs[2] = blobs[2][:20]
    import pyarrow as pa

    table = table.set_column(1, "image", pa.array(blobs, pa.binary()))
    shards.write_shard(UserFiles(tmp_path / "set"), 1, table)

    ledger = data.new_skip_ledger()
    ds = data.image_dataset(str(tmp_path / "set"), manifest, strict=False, ledger=ledger)
    assert ds.count() == 9
    skipped = ray_session.get(ledger.report.remote())
    assert len(skipped) == 1
    assert "shard-00001.parquet: image x2: cannot decode" in skipped[0]

    strict = data.image_dataset(str(tmp_path / "set"), manifest, strict=True)
    with pytest.raises(Exception, match=r"shard-00001.parquet: image x2: cannot decode"):
        strict.count()


def test_idle_backoff_sleeps_only_while_nothing_changes(monkeypatch):
    from types import SimpleNamespace

    from simgan_ray.runtime import rayinternals

    slept = []
    monkeypatch.setattr(rayinternals.time, "sleep", slept.append)

    class Op:  # hashable, as Ray's operators are
        metrics = SimpleNamespace(num_tasks_submitted=1, num_tasks_finished=0)

    op = Op()
    state = SimpleNamespace(total_enqueued_input_blocks=lambda: 0, total_enqueued_output_blocks=lambda: 2)
    executor = SimpleNamespace(_topology={op: state})
    cb = rayinternals.IdleBackoff()
    for _ in range(10):
        cb.on_execution_step(executor)
    assert slept == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.064, 0.064]  # first step: no history
    op.metrics.num_tasks_finished = 1  # progress: no sleep, back-off starts over
    cb.on_execution_step(executor)
    cb.on_execution_step(executor)
    assert slept[9:] == [0.001]


def test_known_limits_asks_again_while_the_limits_are_zero():
    from types import SimpleNamespace

    from simgan_ray.runtime import rayinternals

    manager = SimpleNamespace(_global_limits=SimpleNamespace(cpu=0, object_store_memory=0),
                              _global_limits_last_update_time=100.0)
    executor = SimpleNamespace(_resource_manager=manager)
    rayinternals.KnownLimits().on_execution_step(executor)
    assert manager._global_limits_last_update_time == 0  # asked again at the next step
    manager._global_limits, manager._global_limits_last_update_time = SimpleNamespace(cpu=4, object_store_memory=1), 5.0
    rayinternals.KnownLimits().on_execution_step(executor)
    assert manager._global_limits_last_update_time == 5.0  # known: Ray's own once a second


def test_training_datasets_carry_the_callbacks_and_a_block_size(ray_session, digit_sets):
    import ray.data

    from simgan_ray.runtime.rayinternals import IdleBackoff, KnownLimits

    manifest = shards.read_manifest(digit_sets["synthetic"])
    ds = data.image_dataset(digit_sets["synthetic"], manifest)
    assert {IdleBackoff, KnownLimits} <= set(ds.context.execution_callback_classes)
    assert ds.context.target_max_block_size == max(e["rows"] for e in manifest.shards) * 28 * 28
    ctx = ray.data.DataContext.get_current()
    assert IdleBackoff not in ctx.custom_execution_callback_classes
    assert KnownLimits not in ctx.custom_execution_callback_classes
    assert ctx.target_max_block_size != ds.context.target_max_block_size


class _BlocksMade(ExecutionCallback):
    """Execution callback (in the process that runs the executor: here the test's): the most blocks
    the read tasks had made at any step."""

    made = 0

    def __init__(self) -> None:
        _BlocksMade.made = 0

    def on_execution_step(self, executor) -> None:
        made = sum(op.metrics.num_task_outputs_generated for op in executor._topology)
        _BlocksMade.made = max(_BlocksMade.made, made)


@pytest.mark.parametrize("bounded", [True, False])
def test_reading_runs_ahead_of_a_slow_consumer_by_a_few_blocks_per_cpu(ray_session, tmp_path, bounded):
    import time

    images = np.random.default_rng(3).integers(0, 256, (16 * 20, 1, 28, 28), dtype=np.uint8)
    write_set(tmp_path / "set", "synthetic", images, [None] * len(images), 20, "raw")
    manifest = shards.read_manifest(str(tmp_path / "set"))
    ds = data.image_dataset(str(tmp_path / "set"), manifest, images=3 * len(images))  # 48 blocks of 20 images
    limits = ds.context.execution_options.resource_limits
    assert limits.object_store_memory == data.read_ahead_bytes(20 * 28 * 28, 4) == 16 * 20 * 28 * 28  # 4 CPUs
    if not bounded:  # Ray Data's own bound: half the object store
        ds.context.execution_options.resource_limits = limits.copy(object_store_memory=float("inf"))
    ds.context.custom_execution_callback_classes = [*ds.context.custom_execution_callback_classes, _BlocksMade]
    batches = iter(ds.iter_batches(batch_size=20))
    next(batches)
    time.sleep(3)  # a step that takes long
    assert _BlocksMade.made <= 24 if bounded else _BlocksMade.made == 48  # 16 blocks' bytes, or the whole set
    assert sum(len(b["image"]) for b in batches) == 3 * len(images) - 20  # then every image, all the same


def test_a_set_read_ahead_to_its_bound_leaves_the_cpu_to_the_other_set(ray_session, tmp_path):
    """Two sets and one CPU left for reading (the training workers hold the rest): a read task of
    the set whose consumers stopped taking must not keep that CPU while it waits, or the other
    set's reading never starts and the workers, waiting for it, never take from the first again."""
    import threading

    import ray

    images = np.random.default_rng(4).integers(0, 256, (16 * 20, 1, 28, 28), dtype=np.uint8)
    write_set(tmp_path / "set", "synthetic", images, [None] * len(images), 20, "raw")
    manifest = shards.read_manifest(str(tmp_path / "set"))
    held = ray.util.placement_group([{"CPU": ray.cluster_resources()["CPU"] - 1}])  # all CPUs but one
    ray.get(held.ready())
    try:
        first, second = (data.image_dataset(str(tmp_path / "set"), manifest, images=3 * len(images)) for _ in range(2))
        first = iter(first.iter_batches(batch_size=20))
        next(first)  # its reading runs ahead to its bound, then waits for this consumer
        got = []
        reader = threading.Thread(target=lambda: got.append(next(iter(second.iter_batches(batch_size=20)))),
                                  daemon=True)
        reader.start()
        reader.join(timeout=60)
        assert got, "the second set's reading never started: the first set's read task holds the CPU"
        assert sum(len(b["image"]) for b in first) == 3 * len(images) - 20
    finally:
        ray.util.remove_placement_group(held)

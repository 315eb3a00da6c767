
import numpy as np
import pytest

from simgan_ray.common.errors import SimganError
from simgan_ray.sets import shards
from simgan_ray.sets.data import head_images
from simgan_ray.sets.ingest import Target, fit_image, ingest
from tests.conftest import image_bytes


def test_fit_modes_give_target_size():
    wide = image_bytes(100, 50, value=255)
    for fit in ("resize", "crop", "pad"):
        out = fit_image(wide, Target(28, 28, 1, fit))
        assert out.shape == (1, 28, 28) and out.dtype == np.uint8  # (C, H, W)
    padded = fit_image(wide, Target(28, 28, 1, "pad"))[0]
    assert padded[0].max() == 0 and padded[14].min() > 0  # letterbox: black rows above the image
    assert fit_image(wide, Target(20, 30, 3, "crop")).shape == (3, 20, 30)


@pytest.fixture()
def image_folder(tmp_path):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(image_bytes(64, 48))
    (src / "b.jpg").write_bytes(image_bytes(30, 90, fmt="JPEG"))
    (src / "sub" / "c.PNG").write_bytes(image_bytes(28, 28, mode="L"))
    (src / "sub" / "broken.png").write_bytes(image_bytes(40, 40)[:60])  # truncated
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    return src


def test_ingest_packs_images_and_skips_unreadable(ray_session, image_folder, tmp_path):
    out = tmp_path / "real"
    manifest = ingest(str(image_folder), str(out), Target(28, 28, 1, "crop"), shard_size=2)
    assert manifest.count == 3 and manifest.shape == [1, 28, 28]
    assert manifest.source["skipped"] == 2
    assert {s.split(":")[0].rsplit("/", 1)[1] for s in manifest.source["skipped_files"]} == {"broken.png", "empty.jpg"}
    read = shards.read_manifest(str(out))
    ids, images, labels = head_images(str(out), read, 10)
    assert sorted(ids) == ["a.png", "b.jpg", "sub/c.PNG"]
    assert images.shape == (3, 1, 28, 28) and labels == [None] * 3


def test_ingest_strict_names_the_file(ray_session, image_folder, tmp_path):
    with pytest.raises(Exception, match=r"(broken\.png|empty\.jpg): not a readable image"):
        ingest(str(image_folder), str(tmp_path / "strict"), Target(28, 28, 1), strict=True)


def test_ingest_refuses_bad_locations(image_folder, tmp_path):
    with pytest.raises(SimganError, match="overlaps --src"):
        ingest(str(image_folder), str(image_folder / "out"), Target(28, 28, 1))
    with pytest.raises(SimganError, match="overlaps --src"):  # the source inside the output, too
        ingest(str(image_folder / "sub"), str(image_folder), Target(28, 28, 1))
    with pytest.raises(SimganError, match="not found"):
        ingest(str(tmp_path / "nothing"), str(tmp_path / "o"), Target(28, 28, 1))
    (tmp_path / "textonly").mkdir()
    (tmp_path / "textonly" / "a.txt").write_text("x")
    with pytest.raises(SimganError, match="no .png/.jpg/.jpeg files"):
        ingest(str(tmp_path / "textonly"), str(tmp_path / "o"), Target(28, 28, 1))


def test_ingest_takes_unityeyes_style_sidecar_labels(ray_session, tmp_path):
    """Renders with a JSON beside each (UnityEyes: 1.jpg + 1.json, the gaze as a "(x, y, z, 0)"
    string): packed as a 35x55 synthetic set whose labels hold the picked field as numbers."""
    import json

    src = tmp_path / "unityeyes"
    src.mkdir()
    for i, look in ((1, "(0.1, -0.2, -0.97, 0.0)"), (2, "(-0.3, 0.05, -0.95, 0.0)")):
        (src / f"{i}.jpg").write_bytes(image_bytes(80, 60, fmt="JPEG", value=40 * i))
        (src / f"{i}.json").write_text(json.dumps({"eye_details": {"look_vec": look, "pupil_size": "0.1"},
                                                   "interior_margin_2d": ["(1, 2)"]}))
    (src / "3.jpg").write_bytes(image_bytes(80, 60, fmt="JPEG"))  # no label file
    (src / "4.jpg").write_bytes(image_bytes(80, 60, fmt="JPEG"))
    (src / "4.json").write_text("[1, 2]")  # not an object
    (src / "5.jpg").write_bytes(image_bytes(80, 60, fmt="JPEG"))
    (src / "5.json").write_text(json.dumps({"eye_details": {}}))  # no look_vec
    out = tmp_path / "eyes"
    manifest = ingest(str(src), str(out), Target(35, 55, 1, "resize"), labels="sidecar",
                      label_fields=("eye_details.look_vec",), kind="synthetic")
    assert (manifest.kind, manifest.count, manifest.shape) == ("synthetic", 2, [1, 35, 55])
    assert manifest.source["label"] == "sidecar json" and manifest.source["skipped"] == 3
    reasons = sorted(x.split(": ", 1)[1] for x in manifest.source["skipped_files"])
    assert reasons == ["4.json: a JSON list, not an object", "its label has no field 'eye_details.look_vec'",
                       "no label file 3.json"]
    ids, images, labels = head_images(str(out), shards.read_manifest(str(out)), 10)
    assert ids == ["1.jpg", "2.jpg"] and images.shape == (2, 1, 35, 55)
    assert [json.loads(x) for x in labels] == [{"eye_details.look_vec": [0.1, -0.2, -0.97, 0.0]},
                                               {"eye_details.look_vec": [-0.3, 0.05, -0.95, 0.0]}]
    with pytest.raises(Exception, match=r"3\.jpg: no label file 3\.json"):
        ingest(str(src), str(tmp_path / "strict"), Target(35, 55, 1), labels="sidecar", strict=True)


def test_ingest_takes_labels_from_a_csv(ray_session, image_folder, tmp_path):
    import json

    table = tmp_path / "labels.csv"
    table.write_text('file,gaze,subject\na.png,"[0.1, -0.3]",p01\nb.jpg,"[0.2, 0.4]",p02\n')
    manifest = ingest(str(image_folder), str(tmp_path / "out"), Target(28, 28, 1), labels=str(table))
    assert manifest.count == 2 and manifest.source["label"] == f"csv {table}"
    assert any("sub/c.PNG: no row for it in the labels CSV" in x for x in manifest.source["skipped_files"])
    ids, _, labels = head_images(str(tmp_path / "out"), shards.read_manifest(str(tmp_path / "out")), 10)
    assert dict(zip(ids, map(json.loads, labels), strict=True)) == {
        "a.png": {"gaze": [0.1, -0.3], "subject": "p01"}, "b.jpg": {"gaze": [0.2, 0.4], "subject": "p02"}}
    (tmp_path / "bad.csv").write_text("name,gaze\na.png,1\n")
    with pytest.raises(SimganError, match=r"bad.csv: a labels CSV needs a header row with a 'file' column"):
        ingest(str(image_folder), str(tmp_path / "out2"), Target(28, 28, 1), labels=str(tmp_path / "bad.csv"))

import io

import numpy as np
import pytest
from PIL import Image

from simgan_ray import shards
from simgan_ray.data import head_images
from simgan_ray.errors import SimganError
from simgan_ray.ingest import Target, fit_image, ingest


def image_bytes(w: int, h: int, mode: str = "RGB", fmt: str = "PNG", value: int = 200) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), value if mode == "L" else (value, value // 2, 0)).save(buf, format=fmt)
    return buf.getvalue()


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

"""Digit simulator: labelled digits rendered from fonts, in two styles.

"mnist" (1 x 28 x 28): a digit glyph from a random font at a random size and stroke width, rotated,
sheared and blurred at 4x resolution, then (as MNIST was made) its bounding box is scaled to fit a
20x20 box with anti-aliasing and placed in a 28x28 frame with its centre of mass at the centre.
"color" (3 x 32 x 40, colour and not square): that 28x28 digit, in a random colour, at a random
offset over a random two-colour gradient with pixel noise (a texture).
Image i of a run depends only on (seed, i), so any sharding or worker count gives the same set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from simgan_ray.common.errors import SimganError
from simgan_ray.runtime.session import ensure_ray, run_tasks
from simgan_ray.sets import shards
from simgan_ray.storage import S3Options, ownership
from simgan_ray.storage.ownership import Output

SIMULATOR_VERSION = "digits-1"
SIZE, BOX = 28, 20  # MNIST frame and the box the digit is scaled into
CANVAS = 128  # render resolution, px
STYLES = {"mnist": (1, SIZE, SIZE), "color": (3, 32, 40)}  # style -> image shape (C, H, W)


@dataclass(frozen=True)
class DigitParams:
    """Ranges of the random nuisance factors (uniform)."""

    font_size: tuple[int, int] = (60, 90)  # px on the CANVAS
    stroke: tuple[int, int] = (0, 4)  # extra stroke width, px on the canvas
    rotation: tuple[float, float] = (-15.0, 15.0)  # degrees
    shear: tuple[float, float] = (-0.3, 0.3)  # x += shear * y
    blur: tuple[float, float] = (0.0, 2.5)  # gaussian radius, px on the canvas


def default_font_dirs() -> list[Path]:
    """matplotlib's bundled fonts (DejaVu, STIX, Computer Modern): the same on every machine with
    the pinned matplotlib, which keeps the simulator deterministic across machines."""
    return [Path(matplotlib.get_data_path()) / "fonts" / "ttf"]


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _draws_digits(path: Path) -> bool:
    """True if the font maps '0'..'9' to digit glyphs (symbol fonts such as cmsy10 map them to
    triangles and arrows). Old-style figures ('zerooldstyle') count as digits."""
    try:
        cmap = TTFont(str(path), lazy=True).getBestCmap() or {}
    except Exception:  # fontTools raises many types on broken files; such a font is skipped
        return False
    return all(str(cmap.get(ord(str(d)), "")).startswith(n) for d, n in enumerate(DIGIT_NAMES))


@cache
def discover_fonts(dirs: tuple[str, ...]) -> tuple[str, ...]:
    """Font files under `dirs` that draw the ten digits. Sorted, so the order is stable."""
    fonts = [str(p) for p in sorted({p for d in dirs for p in Path(d).rglob("*.tt[fc]")}) if _draws_digits(p)]
    if not fonts:
        raise SimganError(f"no usable digit fonts under {', '.join(dirs)}")
    return tuple(fonts)


@cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _mnist_frame(glyph: np.ndarray) -> np.ndarray:
    """(H, W) uint8 glyph on black -> (28, 28) uint8, bbox fit to 20x20, centre of mass centred."""
    ys, xs = np.nonzero(glyph > 8)
    crop = glyph[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.LANCZOS), dtype=np.float64)
    small = np.clip(small, 0, 255)
    mass = small.sum()
    cy = (small.sum(1) * np.arange(nh)).sum() / mass
    cx = (small.sum(0) * np.arange(nw)).sum() / mass
    top = int(round(SIZE / 2 - 0.5 - cy))
    left = int(round(SIZE / 2 - 0.5 - cx))
    top, left = min(max(top, 0), SIZE - nh), min(max(left, 0), SIZE - nw)
    out = np.zeros((SIZE, SIZE), dtype=np.uint8)
    out[top : top + nh, left : left + nw] = small.round().astype(np.uint8)
    return out


def render_digit(index: int, seed: int, fonts: tuple[str, ...], params: DigitParams = DigitParams()):
    """-> ((28, 28) uint8 image, annotation dict). Deterministic in (seed, index)."""
    rng = np.random.default_rng([seed, index])
    digit = int(rng.integers(10))
    font_path = fonts[int(rng.integers(len(fonts)))]
    size = int(rng.integers(params.font_size[0], params.font_size[1] + 1))
    stroke = int(rng.integers(params.stroke[0], params.stroke[1] + 1))
    angle = float(rng.uniform(*params.rotation))
    shear = float(rng.uniform(*params.shear))
    blur = float(rng.uniform(*params.blur))

    im = Image.new("L", (CANVAS, CANVAS))
    ImageDraw.Draw(im).text(
        (CANVAS / 2, CANVAS / 2), str(digit), fill=255, font=_font(font_path, size),
        anchor="mm", stroke_width=stroke, stroke_fill=255,
    )
    # Shear about the centre: output (x, y) samples input (x + shear * (y - c), y).
    c = CANVAS / 2
    im = im.transform(im.size, Image.AFFINE, (1, shear, -shear * c, 0, 1, 0), resample=Image.BILINEAR)
    im = im.rotate(angle, resample=Image.BILINEAR)
    if blur > 0:
        im = im.filter(ImageFilter.GaussianBlur(blur))
    image = _mnist_frame(np.asarray(im))
    annotation = {
        "digit": digit,
        "font": Path(font_path).stem,
        "size": size,
        "stroke": stroke,
        "rotation": round(angle, 3),
        "shear": round(shear, 4),
        "blur": round(blur, 3),
    }
    return image, annotation


def render_color(index: int, seed: int, fonts: tuple[str, ...]):
    """-> ((3, 32, 40) uint8 image, annotation dict): the digit of `render_digit` in a random colour
    at a random offset over a random gradient with noise. Deterministic in (seed, index)."""
    glyph, annotation = render_digit(index, seed, fonts)
    _, h, w = STYLES["color"]
    rng = np.random.default_rng([seed, index, 1])
    top, left = int(rng.integers(0, h - SIZE + 1)), int(rng.integers(0, w - SIZE + 1))
    start, end, ink = rng.uniform(0, 255, (3, 3))
    ramp = np.linspace(0.0, 1.0, w)[None, :, None]
    image = start * (1 - ramp) + end * ramp + rng.normal(0, 12, (h, w, 3))  # (H, W, 3)
    alpha = np.zeros((h, w, 1))
    alpha[top : top + SIZE, left : left + SIZE, 0] = glyph / 255.0
    image = image * (1 - alpha) + ink * alpha
    annotation.update(ink=[round(float(c)) for c in ink], offset=[top, left])
    return np.clip(image, 0, 255).round().astype(np.uint8).transpose(2, 0, 1), annotation


def render_range(start: int, count: int, seed: int, fonts: tuple[str, ...], style: str = "mnist"):
    """Images start..start+count-1 -> (ids, uint8 (count, C, H, W) of STYLES[style], JSON label strings)."""
    ids, images, labels = [], np.empty((count, *STYLES[style]), np.uint8), []
    for j in range(count):
        image, annotation = (render_color if style == "color" else render_digit)(start + j, seed, fonts)
        ids.append(f"syn-{seed}-{start + j:09d}")
        images[j] = image
        labels.append(json.dumps(annotation))
    return ids, images, labels


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    """[(start, n), ...] covering 0..count-1 in shards of at most shard_size."""
    return [(s, min(shard_size, count - s)) for s in range(0, count, shard_size)]


def font_names(fonts: tuple[str, ...]) -> list[str]:
    return [Path(f).stem for f in fonts]


def params_dict(params: DigitParams = DigitParams()) -> dict:
    return {k: list(v) for k, v in params.__dict__.items()}


def _render_shard(out: Output, index: int, start: int, count: int, seed: int, fonts, style: str,
                  encoding: str) -> dict:
    ids, images, labels = render_range(start, count, seed, fonts, style)
    return shards.write_shard(out, index, shards.make_table(ids, images, labels, encoding), encoding)


def check(count: int, shard_size: int, style: str) -> None:
    if count < 1 or shard_size < 1:
        raise SimganError(f"count and shard size must be >= 1, got {count} and {shard_size}")
    if style not in STYLES:
        raise SimganError(f"style: {style!r} is not one of {', '.join(STYLES)}")


def simulate(out: str, count: int, shard_size: int, seed: int, s3: S3Options = S3Options(),
             font_dirs: list[str] | None = None, style: str = "mnist", overwrite: bool = False,
             dry_run: bool = False, encoding: shards.Encoding = "png") -> shards.Manifest | ownership.Plan:
    """Render `count` digits of `style` into Parquet shards under `out` (claimed: `ownership`), one
    Ray task per shard, then write the manifest (last, so a set without one is visibly incomplete).
    `dry_run`: the checks only, writing nothing -> what the claim would do. `encoding`: how the shards
    hold each image (png, or raw pixels: decoding is a reshape)."""
    check(count, shard_size, style)
    fonts = discover_fonts(tuple(str(d) for d in (font_dirs or default_font_dirs())))
    inputs = {f"--font-dir {d}": d for d in font_dirs or []}
    if dry_run:
        return ownership.plan(out, "simulate", s3, overwrite=overwrite, inputs=inputs)
    ownership.plan(out, "simulate", s3, overwrite=overwrite, inputs=inputs)
    ensure_ray()  # after the output's checks, before its claim: nothing is written where Ray cannot start
    with ownership.claimed(out, "simulate", s3, overwrite=overwrite, inputs=inputs) as claim:
        calls = [(claim, i, start, n, seed, fonts, style, encoding)
                 for i, (start, n) in enumerate(shard_ranges(count, shard_size))]
        written = run_tasks(_render_shard, calls, "simulate shards")
        manifest = shards.Manifest(
            kind="synthetic",
            count=count,
            shape=list(STYLES[style]),
            shards=written,
            encoding=encoding,
            source={
                "simulator": SIMULATOR_VERSION,
                "seed": seed,
                "style": style,
                "fonts": font_names(fonts),
                "params": params_dict(),
                "label": "JSON annotation; 'digit' is the class",
            },
        )
        shards.write_manifest(claim, manifest)
    return manifest

"""The export: a trained refiner as files, and the refiner applied to images.

Export directory (<run>/export, or any copy of it):
    refiner.pt               the refiner's state_dict only (R's weight average when the run keeps one,
                             else R; at the last step, or at the lowest-probe_fd report)
    refiner.json             {"format", "refiner": RefinerConfig, "image": {...}, "step", "weights_step", ...}
    refiner.torchscript.pt   at the end of a run: the refiner as TorchScript, as a torch.export
    refiner.pt2              program and as ONNX, loadable without simgan_ray (write_portable)
    refiner.onnx
Everything is loaded with torch.load(weights_only=True): no pickle from a file is ever executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from simgan_ray import storage
from simgan_ray.common.errors import SimganError, first_line
from simgan_ray.model.networks import Refiner, RefinerConfig
from simgan_ray.sets import data
from simgan_ray.storage import S3Options

EXPORT_FORMAT = "simgan-ray-refiner/1"
EXPORT_DIR = "export"


def load_tensors(source: Path | bytes, name: str | None = None) -> dict:
    """torch.load with weights_only=True of a local file or of bytes read from storage."""
    name = name or str(source)
    try:
        return torch.load(io.BytesIO(source) if isinstance(source, bytes) else source, map_location="cpu",
                          weights_only=True)
    except FileNotFoundError:
        raise SimganError(f"{name}: missing") from None
    except Exception as e:  # an unpickling refusal, a corrupt zip, an empty file
        raise SimganError(f"{name}: not a simgan-ray tensor file ({first_line(e)})") from None


def write_export(directory: Path, refiner: Refiner, meta: dict, weights: dict | None = None) -> None:
    """`refiner`'s config and its weights, or `weights` (a state_dict of the same refiner) instead."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(weights if weights is not None else refiner.state_dict(), directory / "refiner.pt")
    doc = {"format": EXPORT_FORMAT, "refiner": refiner.cfg.to_dict(), **meta}
    (directory / "refiner.json").write_text(json.dumps(doc, indent=2))


# The refiner in portable formats, loadable without simgan_ray: TorchScript (libtorch, C++; torch.jit
# is deprecated in favour of torch.export but still loads everywhere), a torch.export program and an
# ONNX model (onnxruntime, TensorRT, ...), each with dynamic batch, height and width and carrying
# PORTABLE_META (ONNX: as a metadata property).
TORCHSCRIPT, TORCH_EXPORT, ONNX = "refiner.torchscript.pt", "refiner.pt2", "refiner.onnx"
PORTABLE_META = "simgan_ray.json"
PIXELS = {"input": "float32 (N, C, H, W) in [-1, 1]: uint8 / 127.5 - 1",
          "output": "float32 (N, C, H, W) in [-1, 1]: uint8 = round((y + 1) * 127.5), clipped to [0, 255]"}


@contextlib.contextmanager
def _level(logger: logging.Logger, level: int):
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def write_portable(directory: Path, refiner: Refiner, meta: dict) -> None:
    """refiner.torchscript.pt, refiner.pt2 and refiner.onnx in `directory` (an export), with the pixel
    convention and refiner.json's fields in their extra file (ONNX: metadata property) simgan_ray.json."""
    import onnx
    from torch.export import Dim

    c, h, w = meta.get("image_shape") or [refiner.cfg.channels, 32, 32]
    example = torch.zeros(2, c, h, w)
    extra = json.dumps({**meta, "pixels": PIXELS})
    refiner = refiner.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's, said above
        torch.jit.save(torch.jit.trace(refiner, example), directory / TORCHSCRIPT,
                       _extra_files={PORTABLE_META: extra})
    # No striding or pooling: any H x W from 1 px works (the refiner pads "same").
    dims = {0: Dim("batch", min=1), 2: Dim("height", min=1), 3: Dim("width", min=1)}
    program = torch.export.export(refiner, (example,), dynamic_shapes=(dims,))
    torch.export.save(program, directory / TORCH_EXPORT, extra_files={PORTABLE_META: extra})
    # The exporter's progress lines (stdout), warnings, and one log line per torchvision operator it
    # would register had torchvision been installed (a refiner uses none).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            _level(logging.getLogger("torch.onnx"), logging.ERROR):
        warnings.simplefilter("ignore")
        model = torch.onnx.export(refiner, (example,), dynamo=True, dynamic_shapes=(dims,),
                                  input_names=["image"], output_names=["refined"]).model_proto
    onnx.helper.set_model_props(model, {PORTABLE_META: extra})
    onnx.save(model, directory / ONNX)


def load_export(uri: str | os.PathLike, s3: S3Options = S3Options()) -> tuple[Refiner, dict]:
    """Export directory (local or s3://) -> (Refiner in eval mode on CPU, its refiner.json).
    Anything that is not a refiner export is refused with the reason."""
    uri = str(uri)
    meta_uri, weights_uri = storage.join(uri, "refiner.json"), storage.join(uri, "refiner.pt")
    if not storage.exists(meta_uri, s3):
        raise SimganError(f"{meta_uri}: missing; {uri} is not a refiner export")
    meta = storage.read_json(meta_uri, s3, "a refiner export", EXPORT_FORMAT)
    try:
        cfg = RefinerConfig(**meta["refiner"])
    except (TypeError, ValueError, KeyError) as e:
        raise SimganError(f"{meta_uri}: bad refiner config ({first_line(e)})") from None
    shape = meta.get("image_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and shape[0] == cfg.channels
                                  and all(isinstance(n, int) and n >= 1 for n in shape)):
        raise SimganError(f"{meta_uri}: image_shape: {shape!r} is not [C, H, W] with C = refiner.channels "
                          f"({cfg.channels})")
    _check_weights_size(weights_uri, cfg, s3)
    state = load_tensors(storage.read_bytes(weights_uri, s3), weights_uri)
    # The sizes refiner.json claims, against the weights, before any memory is given to them.
    if (found := _weight_sizes(state)) != (want := (cfg.channels, cfg.features, cfg.kernel, cfg.blocks)):
        names = "channels, features, kernel, blocks"
        raise SimganError(f"{meta_uri}: refiner ({names}) {want} does not match the weights in {weights_uri}, "
                          f"which have {found}")
    refiner = Refiner(cfg)
    try:
        refiner.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise SimganError(f"{weights_uri}: does not match refiner.json ({first_line(e)})") from None
    return refiner.eval(), meta


# torch.save's zip container and pickled names around the float32 tensors: a few KB for a refiner.
_CONTAINER_BYTES = 1 << 20


def _check_weights_size(weights_uri: str, cfg: RefinerConfig, s3: S3Options) -> None:
    """Refuse, before reading it, a refiner.pt far larger than the refiner refiner.json describes
    (its tensors' bytes, counted on torch's meta device, which allocates nothing)."""
    with torch.device("meta"):
        want = sum(t.numel() * t.element_size() for t in Refiner(cfg).state_dict().values())
    size = storage.size(weights_uri, s3)
    if size > 2 * want + _CONTAINER_BYTES:
        raise SimganError(f"{weights_uri}: {size} bytes, far more than the {want} bytes of weights its "
                          "refiner.json describes: not this export's weights")


def _weight_sizes(state: dict) -> tuple | None:
    """(channels, features, kernel, blocks) read off a refiner state_dict's shapes, or None when it
    is not one (networks.Refiner: stem.0 is conv(k, C->F), blocks.<i> its ResNet blocks)."""
    stem = state.get("stem.0.weight") if isinstance(state, dict) else None
    if not isinstance(stem, torch.Tensor) or stem.dim() != 4:
        return None
    blocks = {key.split(".")[1] for key in state if isinstance(key, str) and key.startswith("blocks.")}
    return stem.shape[1], stem.shape[0], stem.shape[2], len(blocks)


def resolve_export(model: str, s3: S3Options) -> str:
    """A run directory or an export directory -> the export directory."""
    for candidate in (model, storage.join(model, EXPORT_DIR)):
        if storage.exists(storage.join(candidate, "refiner.json"), s3):
            return candidate
    raise SimganError(f"{model}: not a training run or a refiner export (no refiner.json there or in export/)")


def model_hash(export: str, s3: S3Options) -> str:
    return hashlib.sha256(storage.read_bytes(storage.join(export, "refiner.pt"), s3)).hexdigest()[:16]


def refine_images(refiner: torch.nn.Module, images: np.ndarray, batch_size: int = 256,
                  bf16: bool = False) -> np.ndarray:
    """uint8 (n, C, H, W) -> refined uint8 (n, C, H, W), in batches on the refiner's device and in
    eval mode (bf16 autocast on CUDA when asked). The one place a refiner is applied to images."""
    device = next(refiner.parameters()).device
    was_training = refiner.training
    refiner.eval()
    out = np.empty_like(images)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[start : start + batch_size])
            y = refiner(data.unit_range(torch.from_numpy(chunk).to(device)))
            out[start : start + len(chunk)] = data.to_uint8(y.float().cpu().numpy())
    refiner.train(was_training)
    return out

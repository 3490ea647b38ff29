"""The one preprocessing of the model, torch-free: training, classify() and verify all use it.

An image becomes the model's input in three steps:
1. canonical pixels (spritesafe.canonical): alpha on the fixed background, native pixel grid;
2. fit into size x size without blurring pixel art: enlarge by the largest integer factor
   that fits (nearest: every sprite pixel an exact block); shrink larger images by area
   averaging (Pillow BOX); then centre on a square of the background colour;
3. the model's input, one of two forms of the same fitted pixels:
   - normalize: (x / 255 - mean) / std, channels first (N, 3, H, W), float32 (torch and the
     FP32 ONNX file);
   - rgba: the fitted pixels as they are, (N, H, W, 4) uint8 with opaque alpha (the INT8 file,
     which folds normalization into its first convolution: export.quantize).
The spec is a small dict stamped into every checkpoint and ONNX file and read back, like
timm's pretrained_cfg, so a consumer never guesses how the model was fed.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from spritesafe.canonical import enlarge_to
from spritesafe.canonical import from_bytes as canonical_from_bytes
from spritesafe.config import ImageLimits, Settings

VERSION = "pixel-fit-1"


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 160
    background: tuple[int, int, int] = (255, 255, 255)
    max_scale: int = 256
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    version: str = VERSION

    @classmethod
    def from_settings(cls, settings: Settings, size: int = 160) -> PreprocessSpec:
        canon = settings.canonical
        return cls(size=size, background=canon.background, max_scale=canon.max_scale)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        data: dict[str, Any] = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"preprocessing {data.get('version')!r} is not {VERSION!r}")
        return cls(
            size=int(data["size"]),
            background=(
                int(data["background"][0]),
                int(data["background"][1]),
                int(data["background"][2]),
            ),
            max_scale=int(data["max_scale"]),
            mean=(float(data["mean"][0]), float(data["mean"][1]), float(data["mean"][2])),
            std=(float(data["std"][0]), float(data["std"][1]), float(data["std"][2])),
        )


def fit(
    pixels: NDArray[np.uint8], spec: PreprocessSpec, offset: tuple[int, int] = (0, 0)
) -> NDArray[np.uint8]:
    """Canonical RGB pixels -> size x size x 3 uint8 (integer nearest up, area down, padded).
    `offset` (dx, dy) moves the placed image by whole pixels, cutting what leaves the canvas:
    training's integer shift, drawn in the same single copy."""
    height, width = pixels.shape[:2]
    longest = max(height, width)
    if longest <= spec.size:
        scaled = enlarge_to(pixels, spec.size)
    else:
        ratio = spec.size / longest
        target = (max(1, round(width * ratio)), max(1, round(height * ratio)))
        scaled = np.asarray(Image.fromarray(pixels, "RGB").resize(target, Image.Resampling.BOX))
    out = np.empty((spec.size, spec.size, 3), dtype=np.uint8)
    out[...] = np.asarray(spec.background, dtype=np.uint8)
    top = (spec.size - scaled.shape[0]) // 2 + offset[1]
    left = (spec.size - scaled.shape[1]) // 2 + offset[0]
    # The part of the scaled image that lands on the canvas.
    y0, x0 = max(0, -top), max(0, -left)
    y1 = min(scaled.shape[0], spec.size - top)
    x1 = min(scaled.shape[1], spec.size - left)
    if y1 > y0 and x1 > x0:
        out[top + y0 : top + y1, left + x0 : left + x1] = scaled[y0:y1, x0:x1]
    return out


@functools.lru_cache(maxsize=8)
def _levels(
    mean: tuple[float, float, float], std: tuple[float, float, float]
) -> NDArray[np.float32]:
    """(3, 256): each channel's normalized value of every uint8 level."""
    level = np.arange(256, dtype=np.uint8)[:, None].astype(np.float32)
    values = (level / 255.0 - np.asarray(mean, dtype=np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(values.T)


def normalize(fitted: NDArray[np.uint8], spec: PreprocessSpec) -> NDArray[np.float32]:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32: (x / 255 - mean) / std."""
    # A lookup of the formula's 256 values per channel: bit-equal to computing it, written
    # straight into channels-first order, in about half the time (it runs on every input).
    table = _levels(spec.mean, spec.std)
    out = np.empty((*fitted.shape[:-3], 3, *fitted.shape[-3:-1]), dtype=np.float32)
    for channel in range(3):
        out[..., channel, :, :] = table[channel][fitted[..., channel]]
    return out


def rgba(fitted: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(..., H, W, 3) uint8 -> (..., H, W, 4) uint8, alpha 255 (what a canvas returns)."""
    out = np.empty((*fitted.shape[:-1], 4), dtype=np.uint8)
    out[..., :3] = fitted
    out[..., 3] = 255
    return out


def from_pixels(pixels: NDArray[np.uint8], spec: PreprocessSpec) -> NDArray[np.float32]:
    return normalize(fit(pixels, spec), spec)


def canonical_pixels(
    data: bytes, spec: PreprocessSpec, limits: ImageLimits | None = None
) -> NDArray[np.uint8]:
    """Image file bytes -> canonical RGB pixels, step 1 (raises spritesafe.decode.Rejected).
    Training augments these before `from_pixels`; everything else goes on directly."""
    limits = limits or ImageLimits()
    return canonical_from_bytes(data, limits, spec.background, spec.max_scale).pixels


def fit_bytes(
    data: bytes, spec: PreprocessSpec, limits: ImageLimits | None = None
) -> NDArray[np.uint8]:
    """Image file bytes -> fitted pixels, steps 1 and 2 (raises spritesafe.decode.Rejected)."""
    return fit(canonical_pixels(data, spec, limits), spec)


def from_bytes(
    data: bytes, spec: PreprocessSpec, limits: ImageLimits | None = None
) -> NDArray[np.float32]:
    """Image file bytes -> float model input (raises spritesafe.decode.Rejected for bad input)."""
    return normalize(fit_bytes(data, spec, limits), spec)


def batch(arrays: list[NDArray[np.float32]]) -> NDArray[np.float32]:
    return np.stack(arrays).astype(np.float32, copy=False)

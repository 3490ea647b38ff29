"""Augmentations that keep pixel art pixel art: mirror, palette hue turn, integer shifts.

No blur and no resampling: every output pixel is an input pixel (or the background), and one
input colour always maps to one output colour, so sprite edges and palettes stay exact.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from spritesafe.config import TrainSettings
from spritesafe.preprocess import PreprocessSpec, fit, normalize


def hue_turn(
    pixels: NDArray[np.uint8], turn: float, background: tuple[int, int, int]
) -> NDArray[np.uint8]:
    """Rotate every colour about the grey axis by `turn` of a circle (a hue shift that keeps
    grey grey); the background colour stays as it is, as it is at inference."""
    angle = 2 * math.pi * turn
    c, s = math.cos(angle), math.sin(angle)
    k = (1 - c) / 3
    r = s / math.sqrt(3)
    rotation = np.array(
        [[c + k, k - r, k + r], [k + r, c + k, k - r], [k - r, k + r, c + k]], dtype=np.float32
    )
    rotated = pixels.astype(np.float32) @ rotation.T + 0.5
    turned: NDArray[np.uint8] = np.clip(rotated, 0, 255).astype(np.uint8)
    keep = (pixels == np.asarray(background, dtype=np.uint8)).all(axis=2)
    turned[keep] = pixels[keep]
    return turned


def shift(
    fitted: NDArray[np.uint8], dx: int, dy: int, background: tuple[int, int, int]
) -> NDArray[np.uint8]:
    """Move the image by whole pixels, filling with the background (an integer-offset crop)."""
    out = np.empty_like(fitted)
    out[...] = np.asarray(background, dtype=np.uint8)
    h, w = fitted.shape[:2]
    src_y, dst_y = (
        (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    )
    src_x, dst_x = (
        (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    )
    out[dst_y, dst_x] = fitted[src_y, src_x]
    return out


def augment(
    pixels: NDArray[np.uint8],
    spec: PreprocessSpec,
    config: TrainSettings,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """Canonical pixels -> one randomly augmented model input."""
    if config.flip and rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    if config.hue_jitter > 0:
        pixels = hue_turn(
            pixels, rng.uniform(-config.hue_jitter, config.hue_jitter), spec.background
        )
    fitted = fit(np.ascontiguousarray(pixels), spec)
    if config.max_shift > 0:
        dx, dy = rng.integers(-config.max_shift, config.max_shift + 1, size=2)
        fitted = shift(fitted, int(dx), int(dy), spec.background)
    return normalize(fitted, spec)

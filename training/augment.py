"""Augmentations that keep pixel art pixel art: mirror, palette hue turn, integer shifts
(spritesafe.preprocess.fit places the sprite off-centre by whole pixels).

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
    offset = (0, 0)
    if config.max_shift > 0:
        dx, dy = rng.integers(-config.max_shift, config.max_shift + 1, size=2)
        offset = (int(dx), int(dy))
    return normalize(fit(np.ascontiguousarray(pixels), spec, offset), spec)

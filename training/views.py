"""Random views of a sprite for self-supervised pretraining, that keep pixel art pixel art.

Two views of one sprite must look different in every way that does not change what it
depicts, so that the backbone learns what does. Every step is exact on the pixel grid: no
blur, no bilinear resampling, no rotation by odd angles.
- crop: a random rectangle of the canonical pixels (whole sprite pixels), keeping at least
  `min_crop` of the area;
- mirror;
- colour: a palette hue turn, a brightness/contrast change of every colour, sometimes grey
  (each colour maps to one colour, the background stays);
- background swap: the background colour replaced by a random flat colour;
- scale and place: enlarged by a random integer factor (nearest: exact blocks) up to the
  largest that fits, at a random whole-pixel position on the canvas.
Sprites larger than the canvas are shrunk by area averaging, as the model's preprocessing does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spritesafe.preprocess import PreprocessSpec, fit
from training.augment import hue_turn


@dataclass(frozen=True)
class ViewRecipe:
    min_crop: float = 0.35  # smallest share of the sprite's area a crop keeps
    max_hue: float = 0.5  # palette hue turn, of a circle (0.5: any hue)
    contrast: float = 0.4  # colours scaled about mid-grey by 1 ± this
    brightness: float = 0.25  # and moved by ± this share of the range
    grayscale: float = 0.2  # probability
    background_swap: float = 0.5  # probability


def crop(pixels: NDArray[np.uint8], min_area: float, rng: np.random.Generator) -> NDArray[np.uint8]:
    """A random rectangle of whole pixels with at least `min_area` of the area, aspect ratio
    within 3:4..4:3 of the sprite's."""
    h, w = pixels.shape[:2]
    area = rng.uniform(min_area, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    ch = min(h, max(1, round(h * math.sqrt(area / ratio))))
    cw = min(w, max(1, round(w * math.sqrt(area * ratio))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return pixels[top : top + ch, left : left + cw]


def recolour(
    pixels: NDArray[np.uint8],
    recipe: ViewRecipe,
    background: tuple[int, int, int],
    rng: np.random.Generator,
) -> NDArray[np.uint8]:
    """Hue turn, contrast/brightness and sometimes grey, for every colour but the background."""
    keep = (pixels == np.asarray(background, dtype=np.uint8)).all(axis=2)
    out = pixels
    if recipe.max_hue > 0:
        out = hue_turn(out, rng.uniform(-recipe.max_hue, recipe.max_hue), background)
    values = out.astype(np.float32)
    if rng.random() < recipe.grayscale:
        values = values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
        values = np.repeat(values, 3, axis=2)
    gain = rng.uniform(1 - recipe.contrast, 1 + recipe.contrast)
    lift = rng.uniform(-recipe.brightness, recipe.brightness) * 255
    values = (values - 127.5) * gain + 127.5 + lift
    result: NDArray[np.uint8] = np.clip(values + 0.5, 0, 255).astype(np.uint8)
    result[keep] = pixels[keep]
    return result


def place(
    pixels: NDArray[np.uint8],
    size: int,
    fill: NDArray[np.uint8],
    rng: np.random.Generator,
) -> NDArray[np.uint8]:
    """Enlarge by a random integer factor between half the largest that fits and the largest
    (nearest), and put it at a random whole-pixel position on a `size` canvas of `fill`."""
    h, w = pixels.shape[:2]
    top_k = max(1, size // max(h, w))
    k = int(rng.integers(max(1, (top_k + 1) // 2), top_k + 1))
    scaled = np.repeat(np.repeat(pixels, k, axis=0), k, axis=1) if k > 1 else pixels
    out = np.empty((size, size, 3), dtype=np.uint8)
    out[...] = fill
    top = int(rng.integers(0, size - scaled.shape[0] + 1))
    left = int(rng.integers(0, size - scaled.shape[1] + 1))
    out[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
    return out


def view(
    pixels: NDArray[np.uint8],
    spec: PreprocessSpec,
    recipe: ViewRecipe,
    rng: np.random.Generator,
) -> NDArray[np.uint8]:
    """Canonical RGB pixels -> one random view, `spec.size` square, uint8 (fitted pixels:
    normalize with the spec as the model's input)."""
    background = np.asarray(spec.background, dtype=np.uint8)
    if max(pixels.shape[:2]) > spec.size:
        pixels = fit(pixels, spec)  # the model's own area shrink for oversized images
    part = crop(pixels, recipe.min_crop, rng)
    if rng.random() < 0.5:
        part = part[:, ::-1]
    part = recolour(np.ascontiguousarray(part), recipe, spec.background, rng)
    fill = background
    if rng.random() < recipe.background_swap:
        fill = rng.integers(0, 256, 3).astype(np.uint8)
        part = part.copy()
        part[(part == background).all(axis=2)] = fill
    return place(part, spec.size, fill, rng)

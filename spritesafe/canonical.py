"""Pixel-art canonicalization: the one torch-free definition of "the same sprite".

1. Alpha is composited onto one fixed background, so the RGB hidden under transparent pixels
   can never change a hash.
2. The native pixel grid is detected: an integer-upscaled sprite (nearest neighbour, any scale
   up to `max_scale`, also cropped mid-block) is made of s x s blocks, so every position where
   a column (row) differs from the previous one is congruent to one offset modulo s. The
   largest such s is the gcd of the gaps between those positions, over both axes.
3. The image is reduced to one pixel per block (partial edge blocks count as pixels), so the
   same sprite at 1x and 4x canonicalizes to identical pixels. The reduction is lossless:
   enlarging the canonical image by s with the offset gives back the input.
4. Perceptual hashes are taken of the content box (the canonical pixels cropped to what
   differs from the background). Sprites are small things in mostly empty tiles; hashed
   whole, every small item on white looks alike to pHash and unrelated sprites chain into
   giant clusters. Cropped, near-duplicates are recolours and small edits of one shape.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spritesafe.config import ImageLimits
from spritesafe.decode import decode

ALGORITHM = "grid-gcd-1/bbox-hash-1"


def canon_version(background: tuple[int, int, int], max_scale: int) -> str:
    """Short id of everything that changes canonical pixels; stored with each image."""
    text = f"{ALGORITHM}|{background}|{max_scale}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Canonical:
    pixels: NDArray[np.uint8]  # H x W x 3 on the native grid
    scale: int
    offset_x: int
    offset_y: int
    palette_size: int
    sha256: str

    @property
    def blank(self) -> bool:
        return self.palette_size <= 1


def composite(rgba: NDArray[np.uint8], background: tuple[int, int, int]) -> NDArray[np.uint8]:
    """RGBA -> RGB over `background` (alpha-weighted, rounded)."""
    alpha = rgba[..., 3]
    if bool((alpha == 255).all()):
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.uint16)
    bg = np.asarray(background, dtype=np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + bg * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


def grid_determined(rgb: NDArray[np.uint8]) -> bool:
    """True when some axis has two or more colour boundaries, so the grid does not depend on
    where the image was cropped. With at most one boundary per axis (a plain rectangle) only
    the image edges fix the grid, and a mid-block crop makes the scale ambiguous."""
    return max(_change_positions(rgb, 0).size, _change_positions(rgb, 1).size) >= 2


def _change_positions(rgb: NDArray[np.uint8], axis: int) -> NDArray[np.intp]:
    """Indices i where line i differs from line i-1 (columns for axis=1, rows for axis=0)."""
    if axis == 1:
        diff = (rgb[:, 1:] != rgb[:, :-1]).any(axis=(0, 2))
    else:
        diff = (rgb[1:] != rgb[:-1]).any(axis=(1, 2))
    return np.flatnonzero(diff) + 1


def detect_scale(rgb: NDArray[np.uint8], max_scale: int) -> tuple[int, int, int]:
    """(scale, offset_x, offset_y) of the native pixel grid of an RGB image."""
    height, width = rgb.shape[:2]
    xs = _change_positions(rgb, axis=1)
    ys = _change_positions(rgb, axis=0)
    g = 0
    for positions in (xs, ys):
        if positions.size >= 2:
            g = math.gcd(g, int(np.gcd.reduce(np.diff(positions))))
    if g == 0:
        # At most one boundary per axis: the image edges are the only other evidence.
        for positions, size in ((xs, width), (ys, height)):
            if positions.size == 1:
                g = math.gcd(g, math.gcd(int(positions[0]), size - int(positions[0])))
    if g <= 1:
        return 1, 0, 0
    scale = max(d for d in range(1, min(g, max_scale) + 1) if g % d == 0)
    offset_x = int(xs[0]) % scale if xs.size else 0
    offset_y = int(ys[0]) % scale if ys.size else 0
    return scale, offset_x, offset_y


def _block_starts(size: int, scale: int, offset: int) -> NDArray[np.intp]:
    starts = np.arange(offset, size, scale)
    if offset > 0:
        starts = np.concatenate(([0], starts))
    return starts


def reduce_to_grid(
    rgb: NDArray[np.uint8], scale: int, offset_x: int, offset_y: int
) -> NDArray[np.uint8]:
    if scale == 1:
        return rgb
    rows = _block_starts(rgb.shape[0], scale, offset_y)
    cols = _block_starts(rgb.shape[1], scale, offset_x)
    return np.ascontiguousarray(rgb[rows][:, cols])


def palette_size(rgb: NDArray[np.uint8]) -> int:
    packed = rgb[..., 0].astype(np.uint32) << 16 | rgb[..., 1].astype(np.uint32) << 8 | rgb[..., 2]
    return int(np.unique(packed).size)


def pixels_sha256(rgb: NDArray[np.uint8]) -> str:
    digest = hashlib.sha256(f"{rgb.shape[0]}x{rgb.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def content_box(rgb: NDArray[np.uint8], background: tuple[int, int, int]) -> NDArray[np.uint8]:
    """The smallest rectangle holding every pixel that differs from the background."""
    mask = (rgb != np.asarray(background, dtype=np.uint8)).any(axis=2)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return rgb
    cols = np.flatnonzero(mask.any(axis=0))
    return rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def canonicalize(
    rgba: NDArray[np.uint8], background: tuple[int, int, int], max_scale: int
) -> Canonical:
    rgb = composite(rgba, background)
    scale, offset_x, offset_y = detect_scale(rgb, max_scale)
    pixels = reduce_to_grid(rgb, scale, offset_x, offset_y)
    return Canonical(
        pixels=pixels,
        scale=scale,
        offset_x=offset_x,
        offset_y=offset_y,
        palette_size=palette_size(pixels),
        sha256=pixels_sha256(pixels),
    )


def from_bytes(
    data: bytes, limits: ImageLimits, background: tuple[int, int, int], max_scale: int
) -> Canonical:
    """Image file bytes -> canonical image (raises spritesafe.decode.Rejected for bad input)."""
    return canonicalize(decode(data, limits).rgba, background, max_scale)


def enlarge_to(pixels: NDArray[np.uint8], target: int) -> NDArray[np.uint8]:
    """Enlarge by the largest integer factor keeping the longest side <= target (at least
    1x): nearest neighbour, so every pixel becomes an exact k x k block."""
    k = max(1, target // max(pixels.shape[:2]))
    return np.repeat(np.repeat(pixels, k, axis=0), k, axis=1) if k > 1 else pixels

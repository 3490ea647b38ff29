"""64-bit perceptual hashes (pHash, dHash via imagehash) of canonical pixels, as integers."""

from __future__ import annotations

import imagehash
import numpy as np
from numpy.typing import NDArray
from PIL import Image


def _as_int(value: imagehash.ImageHash) -> int:
    bits = np.asarray(value.hash, dtype=bool).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def perceptual_hashes(rgb: NDArray[np.uint8]) -> tuple[int, int]:
    """(phash, dhash) of an RGB image as unsigned 64-bit integers."""
    image = Image.fromarray(rgb, "RGB")
    return _as_int(imagehash.phash(image)), _as_int(imagehash.dhash(image))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()

"""What the vision LLM is shown: the canonical sprite, enlarged with nearest neighbour."""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from corpus.canonical import canonicalize
from corpus.decode import decode
from spritesafe.config import Settings


def enlarge_nearest(pixels: NDArray[np.uint8], target: int) -> NDArray[np.uint8]:
    """Integer nearest-neighbour enlargement so the longest side is at most about `target`:
    every sprite pixel becomes an exact k x k block (no blur, square pixels kept)."""
    k = max(1, target // max(pixels.shape[:2]))
    return np.repeat(np.repeat(pixels, k, axis=0), k, axis=1) if k > 1 else pixels


def llm_view(data: bytes, settings: Settings) -> bytes:
    """PNG bytes of the canonical image (alpha on the fixed background), enlarged."""
    canon = settings.canonical
    pixels = canonicalize(decode(data, settings.image).rgba, canon.background, canon.max_scale)
    buffer = io.BytesIO()
    Image.fromarray(enlarge_nearest(pixels.pixels, settings.ollama.image_size), "RGB").save(
        buffer, "PNG"
    )
    return buffer.getvalue()

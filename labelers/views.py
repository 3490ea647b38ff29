"""What the vision LLM is shown: the canonical sprite, enlarged with nearest neighbour."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from corpus.blobs import BlobStore
from spritesafe.canonical import enlarge_to, from_bytes
from spritesafe.config import Settings
from spritesafe.decode import Rejected


def canonical_images(
    blobs: BlobStore, settings: Settings, keys: dict[int, str], ids: list[int]
) -> Iterator[tuple[int, NDArray[np.uint8]]]:
    """(id, canonical pixels) of each of `ids` whose blob still decodes, in order. One that no
    longer does (damaged or gone since ingest) is skipped, not fatal: labelled on its own, it
    is recorded as an `unreadable_image` error."""
    canon = settings.canonical
    for image_id in ids:
        try:
            data = blobs.get(keys[image_id])
            pixels = from_bytes(data, settings.image, canon.background, canon.max_scale).pixels
        except (Rejected, OSError):
            continue
        yield image_id, pixels


def llm_view(data: bytes, settings: Settings) -> bytes:
    """PNG bytes of the canonical image (alpha on the fixed background), enlarged to about
    `ollama.image_size` by an integer factor."""
    canon = settings.canonical
    pixels = from_bytes(data, settings.image, canon.background, canon.max_scale).pixels
    buffer = io.BytesIO()
    # Level 1: half the encoding time of the default 6 (a share of the label stage's CPU on
    # every call); nearest-enlarged pixel art stays a few KB either way.
    view = Image.fromarray(enlarge_to(pixels, settings.ollama.image_size), "RGB")
    view.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()

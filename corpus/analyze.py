"""Everything the catalog records about one image's bytes, in one picklable call.

`analyze` is the per-image work of ingest (decode, canonicalize, hash); it is pure and runs
in worker processes. Rejections come back as facts, never as exceptions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any

from spritesafe.canonical import canon_version, canonicalize, content_box
from spritesafe.config import CanonicalSettings, ImageLimits
from spritesafe.decode import Rejected, decode
from spritesafe.hashing import perceptual_hashes


@dataclass(frozen=True)
class ImageFacts:
    sha256: str
    byte_size: int
    status: str  # candidate or rejected
    reject_reason: str | None = None
    reject_detail: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    has_alpha: bool | None = None
    pixel_scale: int | None = None
    scale_offset_x: int | None = None
    scale_offset_y: int | None = None
    canonical_width: int | None = None
    canonical_height: int | None = None
    palette_size: int | None = None
    content_width: int | None = None
    content_height: int | None = None
    canonical_sha256: str | None = None
    canon_version: str | None = None
    phash: int | None = None
    dhash: int | None = None

    def as_row(self) -> dict[str, Any]:
        """Column values for the images table (dataclasses.asdict deep-copies: too slow)."""
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(ImageFacts))


def analyze(
    data: bytes, limits: ImageLimits, canon: CanonicalSettings, sha256: str | None = None
) -> ImageFacts:
    sha = sha256 or hashlib.sha256(data).hexdigest()
    try:
        decoded = decode(data, limits)
    except Rejected as rej:
        return ImageFacts(sha, len(data), "rejected", rej.reason, rej.detail)
    except Exception as exc:  # a decoder bug must cost one image, never the run
        return ImageFacts(
            sha, len(data), "rejected", "decode_error", f"{type(exc).__name__}: {exc}"
        )
    common: dict[str, Any] = {
        "format": decoded.format,
        "mode": decoded.mode,
        "width": decoded.width,
        "height": decoded.height,
        "frames": decoded.frames,
        "has_alpha": bool((decoded.rgba[..., 3] < 255).any()),
    }
    result = canonicalize(decoded.rgba, canon.background, canon.max_scale)
    if canon.reject_blank and result.blank:
        detail = "a single colour after compositing"
        return ImageFacts(sha, len(data), "rejected", "blank_image", detail, **common)
    content = content_box(result.pixels, canon.background)
    phash, dhash = perceptual_hashes(content)
    return ImageFacts(
        sha,
        len(data),
        "candidate",
        pixel_scale=result.scale,
        scale_offset_x=result.offset_x,
        scale_offset_y=result.offset_y,
        canonical_width=int(result.pixels.shape[1]),
        canonical_height=int(result.pixels.shape[0]),
        palette_size=result.palette_size,
        content_width=int(content.shape[1]),
        content_height=int(content.shape[0]),
        canonical_sha256=result.sha256,
        canon_version=canon_version(canon.background, canon.max_scale),
        phash=phash,
        dhash=dhash,
        **common,
    )

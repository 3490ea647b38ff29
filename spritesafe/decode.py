"""Safe decoding of untrusted image bytes into RGBA pixels, or a rejection with a reason.

Limits are checked on the header before any pixel is decoded (decompression bombs never get
decoded). Palette, LA, 16-bit, CMYK and animated inputs are normalized to 8-bit RGBA;
animated inputs keep their frame count and use the first frame.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from spritesafe.config import ImageLimits

# Raster formats with reliable signatures. TGA is left out: it has no magic number, so
# Pillow would "recognize" arbitrary bytes as TGA.
ALLOWED_FORMATS = ("PNG", "GIF", "JPEG", "WEBP", "BMP", "TIFF", "ICO", "PPM")

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x01\x00", "ico"),
)


class Rejected(Exception):
    """An input we will not use, with a short machine-readable reason and a human detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    rgba: NDArray[np.uint8]  # H x W x 4
    format: str
    mode: str  # as stored in the file, before normalization
    frames: int

    @property
    def width(self) -> int:
        return int(self.rgba.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgba.shape[0])


def sniff(data: bytes) -> str | None:
    """Image format by content, not by name or Content-Type: png, gif, jpeg, webp, bmp, tiff,
    ico; 'svg' and 'html' for the text formats we refuse; None when unknown."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    head = data[:2048].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype svg")) and b"<svg" in head:
        return "svg"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head[:512]:
        return "html"
    return None


def decode(data: bytes, limits: ImageLimits) -> Decoded:
    if not data:
        raise Rejected("empty_file", "zero bytes")
    if len(data) > limits.max_bytes:
        raise Rejected("file_too_large", f"{len(data)} bytes > max_bytes {limits.max_bytes}")
    kind = sniff(data)
    if kind == "svg":
        raise Rejected("vector_image", "SVG is not raster pixel art")
    if kind == "html":
        raise Rejected("not_an_image", "HTML document")

    with warnings.catch_warnings():
        # Our own limit below is stricter than Pillow's bomb warning threshold.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Pillow raises many exception types on hostile input (OSError, SyntaxError,
        # IndexError, struct.error, ...): each step maps "anything" to a reason.
        try:
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError as exc:
            raise Rejected("decompression_bomb", f"{exc}; refused before decoding") from None
        except UnidentifiedImageError:
            raise Rejected("not_an_image", "no supported image signature") from None
        except Exception as exc:
            raise _broken(exc) from None

        width, height = image.size
        if width <= 0 or height <= 0:
            raise Rejected("decode_error", f"invalid size {width}x{height}")
        if width * height > limits.max_pixels:
            raise Rejected(
                "decompression_bomb",
                f"{width}x{height} = {width * height} px > max_pixels {limits.max_pixels}"
                f" ({len(data)} bytes compressed); refused before decoding",
            )
        if max(width, height) > limits.max_side:
            raise Rejected(
                "dimensions_too_large", f"{width}x{height}: side > max_side {limits.max_side}"
            )
        try:
            frames = int(getattr(image, "n_frames", 1))
        except Exception as exc:
            raise Rejected("truncated", f"cannot count frames: {type(exc).__name__}") from None
        if frames > 1 and limits.animated == "reject":
            raise Rejected("animated", f"{frames} frames")
        try:
            image.seek(0)
            image.load()
            rgba = _to_rgba(image)
        except Rejected:
            raise
        except Exception as exc:
            raise _broken(exc) from None
    return Decoded(rgba=rgba, format=str(image.format), mode=image.mode, frames=frames)


def _broken(exc: Exception) -> Rejected:
    message = f"{type(exc).__name__}: {exc}"
    return Rejected("truncated" if "truncat" in message.lower() else "decode_error", message)


def _to_rgba(image: Image.Image) -> NDArray[np.uint8]:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own convert() clips 16-bit values to 255; scale them down instead.
        values = np.asarray(image).astype(np.uint32)
        gray = np.clip(values >> 8, 0, 255).astype(np.uint8)
        return _gray_to_rgba(gray)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        scale = 255.0 if float(np.nanmax(values, initial=0.0)) <= 1.0 else 1.0
        gray = np.clip(np.nan_to_num(values) * scale, 0, 255).round().astype(np.uint8)
        return _gray_to_rgba(gray)
    if mode != "RGBA":
        try:
            image = image.convert("RGBA")
        except ValueError as exc:
            raise Rejected("unsupported_mode", f"{mode}: {exc}") from None
    return np.array(image, dtype=np.uint8)


def _gray_to_rgba(gray: NDArray[np.uint8]) -> NDArray[np.uint8]:
    out = np.empty((*gray.shape, 4), dtype=np.uint8)
    out[..., :3] = gray[..., None]
    out[..., 3] = 255
    return out

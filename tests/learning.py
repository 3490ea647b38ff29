"""The learning-proof corpus: real sprites (Debian tile packages) in which a visual concept,
a small pink heart stamped on a sprite, stands in for the positive class at a low base rate,
and an Ollama responder that sees the concept but answers with injected label noise."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from tests.helpers import png, real_tiles
from tests.ollama_server import ChatRequestInfo

HEART_RGB = (255, 64, 160)
HEART = np.array(
    [
        [0, 1, 1, 0, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0, 0, 0],
    ],
    dtype=bool,
)


def stamp(tile: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    out = tile.copy()
    y = int(rng.integers(0, out.shape[0] - HEART.shape[0] + 1))
    x = int(rng.integers(0, out.shape[1] - HEART.shape[1] + 1))
    region = out[y : y + HEART.shape[0], x : x + HEART.shape[1]]
    region[HEART] = (*HEART_RGB, 255)
    return out


def build(folder: Path, n: int, base_rate: float, seed: int = 0) -> set[str]:
    """Write n real tiles as PNGs, `base_rate` of them with the heart; the positive names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    positives = set()
    for i, tile in enumerate(real_tiles(n, seed)):
        name = f"{i:05d}.png"
        if rng.random() < base_rate:
            tile = stamp(tile, rng)
            positives.add(name)
        (folder / name).write_bytes(png(tile))
    return positives


def has_heart(image: bytes) -> bool:
    rgb = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    return int((rgb == HEART_RGB).all(axis=2).sum()) > 0


def noisy_responder(missed: float, false_alarms: float) -> Callable[[ChatRequestInfo], str]:
    """explicit for the heart, safe otherwise, with label noise fixed per image: a `missed`
    share of hearts answered safe, a `false_alarms` share of the rest answered explicit, and
    a tenth of the remaining hearts only suggestive (a negative for the default target)."""

    def respond(info: ChatRequestInfo) -> str:
        image = info.images[0]
        draw = int.from_bytes(hashlib.sha256(image).digest()[:4], "big") / 2**32
        heart = has_heart(image)
        positive = draw >= missed if heart else draw < false_alarms
        category = "explicit" if positive else "safe"
        if heart and positive and draw > 0.9:
            category = "suggestive"
        scores = {"safe": 0.05, "suggestive": 0.05, "explicit": 0.05}
        scores[category] = 0.9
        return json.dumps({"category": category, "scores": scores, "rationale": "a sprite"})

    return respond

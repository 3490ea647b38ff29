"""Classify images with an exported model: onnxruntime, numpy and Pillow, no torch.

    from export.classify import Classifier
    clf = Classifier("data/deploy/model.int8.onnx")
    for result in clf.classify(["a.png", open("b.gif", "rb").read(), pil_image]):
        print(result.score, result.label)

The preprocessing spec, threshold and model id come from the ONNX file's metadata, and
inputs go through spritesafe.preprocess, the same code training used. Scores are tags, not
verdicts: P(nsfw) with the threshold the model was verified at.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from export.onnx import read_metadata, run, session
from spritesafe.canonical import canonicalize
from spritesafe.decode import Rejected
from spritesafe.preprocess import PreprocessSpec, fit, fit_bytes

ImageInput = bytes | str | Path | Image.Image


@dataclass(frozen=True)
class Result:
    name: str
    score: float | None  # P(nsfw); None when the image could not be read
    label: str | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "score": self.score, "label": self.label, "error": self.error}


class Classifier:
    def __init__(self, model: str | Path, threads: int = 2, batch_size: int = 32) -> None:
        self.path = Path(model)
        if not self.path.is_file():
            raise FileNotFoundError(f"model not found: {self.path}")
        meta = read_metadata(self.path)
        if "preprocess" not in meta:
            raise ValueError(f"{self.path} has no spritesafe preprocessing metadata")
        spec = meta["preprocess"]
        self.spec = PreprocessSpec.from_json(spec if isinstance(spec, str) else _json(spec))
        self.threshold = float(meta.get("threshold", 0.5))
        self.class_names: list[str] = list(meta.get("class_names", ["sfw", "nsfw"]))
        self.model_id = str(meta.get("model_id", self.path.stem))
        self.batch_size = batch_size
        self._session = session(self.path, threads)

    def fitted(self, image: ImageInput) -> NDArray[np.uint8]:
        """The image's fitted pixels (size, size, 3) (spritesafe.preprocess steps 1 and 2)."""
        if isinstance(image, Image.Image):
            rgba = np.asarray(image.convert("RGBA"))
            pixels = canonicalize(rgba, self.spec.background, self.spec.max_scale).pixels
            return fit(pixels, self.spec)
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return fit_bytes(data, self.spec)

    def scores(self, fitted: NDArray[np.uint8]) -> NDArray[np.float64]:
        """P(nsfw) for fitted pixels (N, size, size, 3)."""
        return run(self._session, fitted, self.spec, self.batch_size)

    def classify(
        self, images: Sequence[ImageInput], names: Iterable[str] | None = None
    ) -> list[Result]:
        """One result per image, in order; unreadable images get an error, not an exception."""
        labels = list(names) if names is not None else [_name(i, n) for n, i in enumerate(images)]
        arrays: list[NDArray[np.uint8]] = []
        readable: list[int] = []
        errors: dict[int, str] = {}
        for index, image in enumerate(images):
            try:
                arrays.append(self.fitted(image))
                readable.append(index)
            except Rejected as exc:
                errors[index] = str(exc)
            except OSError as exc:
                errors[index] = f"unreadable: {exc}"
        scores = self.scores(np.stack(arrays)) if arrays else np.zeros(0, dtype=np.float64)
        by_index = dict(zip(readable, scores.tolist(), strict=True))
        results = []
        for index, name in enumerate(labels):
            if index in errors:
                results.append(Result(name, None, None, errors[index]))
            else:
                score = float(by_index[index])
                label = self.class_names[1] if score >= self.threshold else self.class_names[0]
                results.append(Result(name, score, label))
        return results


def classify(images: Sequence[ImageInput], model: str | Path) -> list[Result]:
    """One-shot convenience: load `model`, classify `images`."""
    return Classifier(model).classify(images)


def _name(image: ImageInput, index: int) -> str:
    if isinstance(image, str | Path):
        return str(image)
    return f"#{index}"


def _json(value: Any) -> str:
    import json

    return json.dumps(value)

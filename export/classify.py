"""Classify images with an exported model: onnxruntime, numpy and Pillow, no torch.

    from export.classify import Classifier
    clf = Classifier("data/deploy/model.int8.onnx")
    for result in clf.classify(["a.png", open("b.gif", "rb").read(), pil_image]):
        print(result.safe, result.suggestive, result.explicit, result.label)

The preprocessing spec, thresholds and model id come from the ONNX file's metadata, and
inputs go through spritesafe.preprocess, the same code training used. Scores are tags, not
verdicts: three ordered scores (safe, suggestive, explicit, summing to 1; spritesafe.levels)
for an app's own policy, plus the label at the thresholds the model was verified at: the
highest level whose score "at least this level" reaches its threshold. `score` is P(nsfw)
(the deployment's positive level) and `nsfw` its decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from export.onnx import OUTPUT, read_metadata, run, session
from spritesafe import levels as ordinal
from spritesafe.canonical import canonicalize
from spritesafe.decode import Rejected
from spritesafe.preprocess import PreprocessSpec, fit, fit_bytes

ImageInput = bytes | str | Path | Image.Image


@dataclass(frozen=True)
class Result:
    name: str
    score: float | None  # P(nsfw); None (and every score) when the image could not be read
    label: str | None  # safe, suggestive or explicit, at the model's thresholds
    error: str | None = None
    safe: float | None = None
    suggestive: float | None = None
    explicit: float | None = None
    nsfw: bool | None = None  # the deployment decision: score >= threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "safe": self.safe,
            "suggestive": self.suggestive,
            "explicit": self.explicit,
            "label": self.label,
            "score": self.score,
            "nsfw": self.nsfw,
            "error": self.error,
        }


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
        self.positive_level = int(meta.get("positive_level", 2))
        self.thresholds: dict[str, float] = {
            k: float(v) for k, v in (meta.get("thresholds") or {}).items()
        }
        self.model_id = str(meta.get("model_id", self.path.stem))
        self.batch_size = batch_size
        self._session = session(self.path, threads)
        outputs = [o.name for o in self._session.get_outputs()]
        if outputs != [OUTPUT] or set(self.thresholds) != set(ordinal.CUMULATIVE):
            raise ValueError(
                f"{self.path} was exported before three-level scores (outputs {outputs}); "
                "export the model again (`spritesafe export`)"
            )

    def fitted(self, image: ImageInput) -> NDArray[np.uint8]:
        """The image's fitted pixels (size, size, 3) (spritesafe.preprocess steps 1 and 2)."""
        if isinstance(image, Image.Image):
            rgba = np.asarray(image.convert("RGBA"))
            pixels = canonicalize(rgba, self.spec.background, self.spec.max_scale).pixels
            return fit(pixels, self.spec)
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return fit_bytes(data, self.spec)

    def cumulative(self, fitted: NDArray[np.uint8]) -> NDArray[np.float64]:
        """(N, 2) P(>= suggestive), P(explicit) for fitted pixels (N, size, size, 3)."""
        return run(self._session, fitted, self.spec, self.batch_size)

    def scores(self, fitted: NDArray[np.uint8]) -> NDArray[np.float64]:
        """P(nsfw) for fitted pixels (N, size, size, 3)."""
        return self.cumulative(fitted)[:, self.positive_level - 1]

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
        cum = self.cumulative(np.stack(arrays)) if arrays else np.zeros((0, 2))
        by_index = dict(zip(readable, cum.tolist(), strict=True))
        results = []
        for index, name in enumerate(labels):
            if index in errors:
                results.append(Result(name, None, None, errors[index]))
                continue
            row = by_index[index]
            safe, suggestive, explicit = ordinal.scores(np.asarray([row]))[0].tolist()
            score = float(row[self.positive_level - 1])
            results.append(
                Result(
                    name,
                    score,
                    ordinal.label(row, self.thresholds),
                    safe=safe,
                    suggestive=suggestive,
                    explicit=explicit,
                    nsfw=score >= self.threshold,
                )
            )
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

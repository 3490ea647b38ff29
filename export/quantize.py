"""FP32 ONNX -> INT8 ONNX by static quantization (onnxruntime), with a recipe.

Measured here (../shared/notes): QDQ with per-channel int8 weights and uint8 activations
(u8s8), MinMax calibration, is fast (~0.4 ms per image) and small (~1.2 MB); dynamic
quantization is 10x slower for convolutions, entropy calibration equals MinMax, and
per-tensor weights break depthwise convolutions, whose channel ranges differ widely. A recipe
may also equalize ranges across layers first (cross-layer equalization, Nagel et al. 2019)
and keep the stem or the head in FP32. The verification gate (export.verify) decides which
recipe ships.
"""

from __future__ import annotations

import logging
import platform
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

from export.onnx import INPUT, read_metadata, set_metadata


@dataclass(frozen=True)
class Recipe:
    per_channel: bool = True
    equalize: bool = False  # cross-layer equalization before quantizing
    fp32_stem: bool = False  # keep the first convolution in float
    fp32_head: bool = False  # keep the classifier (the logit's own layer) in float
    reduce_range: bool = False  # 7-bit weights, for x86 CPUs without VNNI

    @property
    def name(self) -> str:
        parts = ["per-channel" if self.per_channel else "per-tensor"]
        parts += [
            n
            for n, on in (
                ("cle", self.equalize),
                ("fp32-stem", self.fp32_stem),
                ("fp32-head", self.fp32_head),
                ("reduce-range", self.reduce_range),
            )
            if on
        ]
        return "+".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"name": self.name}


def needs_reduce_range() -> bool:
    """True on x86 CPUs without VNNI, where u8s8 products can saturate int16 accumulation."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return not ("avx512_vnni" in flags or "avx_vnni" in flags)


def candidate_recipes(reduce_range: bool) -> list[Recipe]:
    """What export tries, in order of preference (fewest changes to the graph first)."""
    return [
        Recipe(reduce_range=reduce_range),
        Recipe(fp32_head=True, reduce_range=reduce_range),
        Recipe(equalize=True, fp32_head=True, reduce_range=reduce_range),
        Recipe(equalize=True, fp32_stem=True, fp32_head=True, reduce_range=reduce_range),
    ]


def equalize(proto: onnx.ModelProto, iterations: int = 4) -> tuple[onnx.ModelProto, int]:
    """Cross-layer equalization: for each Conv -> [Relu] -> Conv chain where each output has
    one consumer, scale channel i of the first conv by 1/s_i and the matching input channel of
    the second by s_i, s_i = sqrt(r1_i / r2_i), so both weight ranges become sqrt(r1_i r2_i).
    ReLU(x / s) = ReLU(x) / s for s > 0, so the function is unchanged. Returns the model and
    the number of equalized pairs."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    arrays = {name: numpy_helper.to_array(t).astype(np.float64) for name, t in inits.items()}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    uses = Counter(name for node in graph.node for name in node.input)
    outputs = {o.name for o in graph.output}

    def only(name: str) -> onnx.NodeProto | None:
        nodes = consumers.get(name, [])
        return nodes[0] if len(nodes) == 1 and name not in outputs else None

    pairs = []
    for first in graph.node:
        if first.op_type != "Conv" or len(first.input) < 3:
            continue
        nxt = only(first.output[0])
        if nxt is not None and nxt.op_type == "Relu":
            nxt = only(nxt.output[0])
        if nxt is None or nxt.op_type != "Conv":
            continue
        names = [first.input[1], first.input[2], nxt.input[1]]
        if all(n in arrays and uses[n] == 1 for n in names):
            groups = next((a.i for a in nxt.attribute if a.name == "group"), 1)
            pairs.append((*names, groups))

    for _ in range(iterations):
        for w1_name, b1_name, w2_name, groups in pairs:
            w1, b1, w2 = arrays[w1_name], arrays[b1_name], arrays[w2_name]
            channels = w1.shape[0]
            per_group = w2.shape[1]  # input channels per group of the second conv
            out_per_group = w2.shape[0] // groups
            r1 = np.abs(w1.reshape(channels, -1)).max(axis=1)
            r2 = np.empty(channels)
            for i in range(channels):
                g, j = divmod(i, per_group)
                r2[i] = np.abs(w2[g * out_per_group : (g + 1) * out_per_group, j]).max()
            ok = (r1 > 1e-12) & (r2 > 1e-12)
            scale = np.where(ok, np.sqrt(np.where(ok, r1 / np.where(ok, r2, 1), 1)), 1.0)
            w1 /= scale.reshape(-1, *([1] * (w1.ndim - 1)))
            b1 /= scale
            for i in range(channels):
                g, j = divmod(i, per_group)
                w2[g * out_per_group : (g + 1) * out_per_group, j] *= scale[i]
    for name in {n for p in pairs for n in p[:3]}:
        dtype = numpy_helper.to_array(inits[name]).dtype
        inits[name].CopyFrom(numpy_helper.from_array(arrays[name].astype(dtype), name))
    return model, len(pairs)


class _Calibration:
    """The onnxruntime CalibrationDataReader protocol over preprocessed inputs."""

    def __init__(self, inputs: NDArray[np.float32], batch: int = 32) -> None:
        self._batches: Iterator[dict[str, NDArray[np.float32]]] = (
            {INPUT: inputs[i : i + batch]} for i in range(0, len(inputs), batch)
        )

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self._batches, None)


def _stem_and_head(proto: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """The first convolution; the classifier. (Not the 1x1 conv before it: it holds most of
    the weights, and keeping it in float would more than double the file.)"""
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    dense = [n.name for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
    return convs[:1], dense


def quantize(
    fp32: Path, out: Path, calibration: NDArray[np.float32], recipe: Recipe
) -> dict[str, Any]:
    """Write the INT8 model; the recipe and what it did (stored in the file's metadata too)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    proto = onnx.load(str(fp32))
    metadata = read_metadata(proto)
    done: dict[str, Any] = recipe.as_dict() | {"calibration_images": len(calibration)}
    if recipe.equalize:
        proto, done["equalized_pairs"] = equalize(proto)
    stem, head = _stem_and_head(proto)
    exclude = (stem if recipe.fp32_stem else []) + (head if recipe.fp32_head else [])
    done["fp32_nodes"] = exclude
    reader = _Calibration(calibration)
    CalibrationDataReader.register(_Calibration)  # the protocol, without inheriting its ABC
    tmp = out.with_name(out.name + ".tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice: measured, no change here
    try:
        quantize_static(
            proto,
            str(tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
        )
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(tmp))
    set_metadata(quantized, metadata | {"quantization": done})
    onnx.save(quantized, str(tmp))
    tmp.replace(out)
    return done

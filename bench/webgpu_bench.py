"""The INT8 model in headless Chromium on WebGPU and on WASM, in the same run and page.

    .venv/bin/python -m bench.webgpu_bench [--model data/deploy/model.int8.onnx]
        [--images 32] [--repeats 15] [--rounds 3] [--flag=--enable-unsafe-webgpu ...]

The plain web bundle with onnxruntime-web's WebGPU build (build_web(webgpu=True)), served on
127.0.0.1; Debian's Chromium (driven by playwright) opens a page that makes two classifiers,
`provider: 'wasm'` and `provider: 'webgpu'` (which takes a software adapter too), each in its
Web Worker with one WASM thread. Inputs: `--images` real sprites as RGBA bytes decoded by
Python (no canvas rounding), so decoding is not timed. Timed, the providers taking turns in
`--rounds`: batch 1, the median of `--repeats` sequential classify() calls (preprocessing, the
worker's round trip, the session) and of the session alone (the worker's run of a pre-made
input); batch 32, ms per image of 32 calls made at once (one batch). Parity: each provider's
scores and logits against Python's (onnxruntime on the CPU), the logits in steps of the INT8
output's scale. Printed: the CPU, Chromium, the flags, the WebGPU adapter (vendor,
architecture, software fallback or not), the figures; written to bench/out/webgpu_bench.json.
No target: the figures back what `provider: 'auto'` does with a software adapter
(spritesafe.js, webgpuAdapter).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

from bench.common import cpu, machine, report_machine, write_figures
from export.bundle import build_web
from export.classify import Classifier
from export.onnx import OUTPUT, feed, session
from spritesafe.preprocess import PreprocessSpec, fit_bytes
from tests.helpers import png, real_tiles

OUT = Path(__file__).resolve().parent / "out" / "webgpu_bench.json"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--enable-unsafe-webgpu"]  # enough here: Chromium then offers SwiftShader's adapter

PAGE = """<!doctype html><meta charset="utf-8"><body><script type="module">
import { createClassifier, webgpuAdapter } from './bundle/spritesafe.js';
const cfg = CONFIG;
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
async function load([name, width, height]) {  // RGBA as Python decodes it: no canvas rounding
  const data = new Uint8Array(await (await fetch('./images/' + name)).arrayBuffer());
  return { data, width, height };
}
try {
  const images = await Promise.all(cfg.images.map(load));
  const probe = await webgpuAdapter('webgpu');
  const info = probe.adapter ? (probe.adapter.info ?? {}) : {};
  const adapter = probe.adapter ? { vendor: info.vendor, architecture: info.architecture,
    description: info.description,
    fallback: probe.adapter.isFallbackAdapter ?? info.isFallbackAdapter ?? null }
    : { reason: probe.reason };
  const out = { adapter, providers: {} };
  const clfs = {};
  for (const provider of ['wasm', 'webgpu']) {
    const t = performance.now();
    const clf = await createClassifier({ model: './bundle/model.int8.onnx',
      meta: './bundle/model.json', provider, threads: 1,
      });
    out.providers[provider] = { ran: clf.provider, fallback: clf.fallback, where: clf.where,
      load_ms: performance.now() - t,
      results: await Promise.all(images.map((im) => clf.classify(im))),
      batch1_ms: [], session1_ms: [], batch32_ms_per_image: [] };
    if (clf.provider === provider) clfs[provider] = clf;
  }
  const input = await clfs.wasm.input(images[0]);
  for (let round = 0; round < cfg.rounds; round++) {
    for (const [provider, clf] of Object.entries(clfs)) {
      const figures = out.providers[provider];
      for (let i = 0; i < 3; i++) await clf.classify(images[i % images.length]); // warm
      const calls = [];
      for (let i = 0; i < cfg.repeats; i++) {
        const t = performance.now();
        await clf.classify(images[i % images.length]);
        calls.push(performance.now() - t);
      }
      figures.batch1_ms.push(median(calls));
      const runs = [];
      for (let i = 0; i < cfg.repeats; i++) {
        const t = performance.now();
        await clf.runner.run(input, 1, clf.spec.size);
        runs.push(performance.now() - t);
      }
      figures.session1_ms.push(median(runs));
      const batch = images.slice(0, 32);
      const t = performance.now();
      await Promise.all(batch.map((im) => clf.classify(im)));
      figures.batch32_ms_per_image.push((performance.now() - t) / batch.length);
    }
  }
  window.result = out;
} catch (e) { window.failure = String(e && e.stack || e); }
</script>
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("data/deploy/model.int8.onnx"))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--flag", action="append", help=f"a Chromium flag (default: {' '.join(FLAGS)})"
    )
    return parser.parse_args(argv)


def _serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _chromium(url: str, flags: list[str]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", *flags])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function(
                "window.result !== undefined || window.failure !== undefined", timeout=600_000
            )
            out: dict[str, Any] = page.evaluate("window.result ?? { failure: window.failure }")
        finally:
            browser.close()
    if errors:
        out.setdefault("failure", "; ".join(errors))
    return out


def _python_logits(
    model: Path, paths: list[Path], spec: PreprocessSpec
) -> tuple[NDArray[np.float64], float]:
    """onnxruntime's (CPU) logits for the files, and the output's INT8 step (logits_scale)."""
    sess = session(model, threads=1)
    fitted = np.stack([fit_bytes(p.read_bytes(), spec) for p in paths])
    (logits,) = sess.run([OUTPUT], feed(sess, fitted, spec))
    scales = [i for i in onnx.load(str(model)).graph.initializer if i.name == "logits_scale"]
    step = float(numpy_helper.to_array(scales[0])) if scales else float("nan")
    return logits.astype(np.float64), step


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = args.flag or FLAGS
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout
    figures: dict[str, Any] = machine() | {
        "cpu": cpu(),
        "chromium": version.strip(),
        "flags": flags,
        "model": str(args.model),
    }
    print(f"CPU: {figures['cpu']}\n{figures['chromium']}, flags {' '.join(flags)}")
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        build_web(args.model, site / "bundle", webgpu=True)
        (site / "images").mkdir()
        paths, images = [], []
        for i, tile in enumerate(real_tiles(args.images, seed=3)):
            paths.append(site / "images" / f"tile{i}.png")
            paths[-1].write_bytes(png(tile))
            (site / "images" / f"tile{i}.rgba").write_bytes(tile.tobytes())
            images.append([f"tile{i}.rgba", tile.shape[1], tile.shape[0]])
        config = {"images": images, "repeats": args.repeats}
        config["rounds"] = args.rounds
        (site / "bench.html").write_text(PAGE.replace("CONFIG", json.dumps(config)))
        clf = Classifier(args.model)
        expected = [r.as_dict() for r in clf.classify(paths)]
        logits, step = _python_logits(args.model, paths, clf.spec)
        server, url = _serve(site)
        try:
            out = _chromium(f"{url}/bench.html", flags)
        finally:
            server.shutdown()
    if "failure" in out:
        print(f"the page failed: {out['failure']}", file=sys.stderr)
        return 1
    figures["adapter"] = out["adapter"]
    print(f"WebGPU adapter: {out['adapter']}")
    logits_of = {}
    for provider, got in out["providers"].items():
        results = got.pop("results")
        logits_of[provider] = np.array([r["logits"] for r in results])
        delta = max(
            abs(r[key] - e[key])
            for r, e in zip(results, expected, strict=True)
            for key in ("safe", "suggestive", "explicit")
        )
        got["max_delta_vs_python"] = delta
        off = np.abs(logits_of[provider] - logits) / step
        got["max_logit_delta_steps"] = round(float(off.max()), 3)
        got["images_off_by_a_step"] = int((off.max(axis=1) > 0.5).sum())
        for key in ("batch1_ms", "session1_ms", "batch32_ms_per_image"):
            values = sorted(got[key])
            got[key] = round(values[len(values) // 2], 3) if values else None
        figures[provider] = got
        ran = f"ran on {got['ran']}" + (f" ({got['fallback']})" if got["fallback"] else "")
        print(
            f"{provider}: {ran} in a {got['where']}; session made in {got['load_ms']:.0f} ms; "
            f"batch 1: {got['batch1_ms']} ms per image (session alone {got['session1_ms']} ms); "
            f"batch 32: {got['batch32_ms_per_image']} ms per image; "
            f"against Python: max |Δ score| {delta:.2e}, max |Δ logit| "
            f"{got['max_logit_delta_steps']} output steps ({step:.4f}), "
            f"{got['images_off_by_a_step']} of {len(results)} images off by a step or more"
        )
    between = np.abs(logits_of["webgpu"] - logits_of["wasm"]).max(axis=1) / step
    figures["webgpu_vs_wasm_max_logit_steps"] = round(float(between.max()), 3)
    figures["webgpu_vs_wasm_images_off"] = int((between > 0.5).sum())
    print(
        f"WebGPU against WASM: max |Δ logit| {between.max():.1f} steps, "
        f"{int((between > 0.5).sum())} of {len(between)} images off by a step or more"
    )
    if figures["webgpu"]["batch1_ms"] and figures["wasm"]["batch1_ms"]:
        ratio = figures["webgpu"]["batch1_ms"] / figures["wasm"]["batch1_ms"]
        figures["webgpu_over_wasm_batch1"] = round(ratio, 2)
        print(f"WebGPU / WASM time at batch 1: {ratio:.2f}x")
    report_machine(figures, children=True)
    return write_figures(figures, OUT, [])


if __name__ == "__main__":
    sys.exit(main())

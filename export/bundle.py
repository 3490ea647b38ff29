"""The browser bundle: export/web/*.js (the sources, committed) + onnxruntime-web's WASM runtime
(from export/web/node_modules, installed by `scripts/install.sh --dev` or `npm ci` there) + the
INT8 model and its metadata, copied into one folder a web server can serve as is.

    web/spritesafe.js   the ES module (preprocessing, coalescing, worker or main thread)
    web/worker.js       the Web Worker
    web/ort/            ort.wasm.min.mjs, ort-wasm-simd-threaded.{mjs,wasm}
    web/model.int8.onnx web/model.json (preprocessing spec, threshold, class names, model id)
    web/model.js        the same model embedded as base64 (only with embed=True)
    web/index.html      a demo page: drop images, see scores
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import onnx

from export.onnx import PIXELS, read_metadata

SOURCE = Path(__file__).parent / "web"
RUNTIME = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")

DEMO = """<!doctype html>
<meta charset="utf-8">
<title>spritesafe</title>
<style>img { image-rendering: pixelated; width: 96px; } li { list-style: none; margin: 4px }</style>
<p>Drop pixel art here (or pick files): <input type="file" id="files" multiple accept="image/*"></p>
<ul id="out"></ul>
<script type="module">
  import { createClassifier } from './spritesafe.js';
  const clf = await createClassifier();
  async function show(files) {
    await Promise.all([...files].map(async (file) => {
      const r = await clf.classify(file);
      const li = document.createElement('li');
      li.innerHTML = `<img src="${URL.createObjectURL(file)}"> ${r.label} ${r.score.toFixed(3)}`;
      document.getElementById('out').append(li);
    }));
  }
  document.getElementById('files').onchange = (e) => show(e.target.files);
  document.body.ondragover = (e) => e.preventDefault();
  document.body.ondrop = (e) => { e.preventDefault(); show(e.dataTransfer.files); };
</script>
"""


class BundleError(RuntimeError):
    pass


def web_metadata(model: Path) -> dict[str, Any]:
    meta = read_metadata(model)
    spec = meta["preprocess"]
    return {
        "model_id": meta.get("model_id"),
        "preprocess": json.loads(spec) if isinstance(spec, str) else spec,
        "threshold": meta.get("threshold", 0.5),
        "class_names": meta.get("class_names", ["sfw", "nsfw"]),
        "snapshot_id": meta.get("snapshot_id"),
    }


def build_web(model: Path, out: Path, embed: bool = False) -> Path:
    """Write the bundle for `model` (an INT8 .onnx) into `out`; returns `out`."""
    inputs = [i.name for i in onnx.load(str(model), load_external_data=False).graph.input]
    if inputs != [PIXELS]:
        raise BundleError(
            f"{model} takes {inputs}, not {PIXELS!r}: the bundle feeds a canvas's RGBA pixels "
            "to an INT8 file written by `spritesafe export`"
        )
    runtime = SOURCE / "node_modules" / "onnxruntime-web" / "dist"
    missing = [name for name in RUNTIME if not (runtime / name).is_file()]
    if missing:
        raise BundleError(
            f"onnxruntime-web is not installed ({runtime} lacks {missing}): run "
            f"`npm ci` in {SOURCE} (scripts/install.sh --dev does)"
        )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "ort").mkdir(parents=True)
    for name in ("spritesafe.js", "worker.js"):
        shutil.copy2(SOURCE / name, tmp / name)
    for name in RUNTIME:
        shutil.copy2(runtime / name, tmp / "ort" / name)
    shutil.copy2(model, tmp / "model.int8.onnx")
    meta = web_metadata(model)
    (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    if embed:
        encoded = base64.b64encode(model.read_bytes()).decode("ascii")
        (tmp / "model.js").write_text(
            f"// {meta['model_id']}: the INT8 model, embedded\n"
            f"export const meta = {json.dumps(meta)};\n"
            f'export const base64 = "{encoded}";\n'
        )
    (tmp / "index.html").write_text(DEMO)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out

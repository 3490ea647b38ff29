"""The browser bundle: export/web/*.js (the sources, committed) + onnxruntime-web's WASM runtime
(from export/web/node_modules, installed by `scripts/install.sh --dev` or `npm ci` there) + the
INT8 model and its metadata, copied into one folder a web server can serve as is.

    web/spritesafe.js   the ES module (preprocessing, coalescing, worker or main thread)
    web/worker.js       the Web Worker
    web/ort/            ort.wasm.min.mjs, ort-wasm-simd-threaded.{mjs,wasm} (+ with webgpu=True
                        ort.webgpu.min.mjs, ort-wasm-simd-threaded.asyncify.{mjs,wasm})
    web/model.int8.onnx web/model.json (preprocessing spec, levels, thresholds, model id)
    web/model.js        the same model embedded as base64 (only with embed=True)
    web/index.html      a demo page: drop images, see the three scores under a policy
    web/config.json     the demo page's settings: where its "wrong?" button reports to (if anywhere)
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import onnx

from export.onnx import PIXELS, read_metadata
from spritesafe.levels import LEVELS

SOURCE = Path(__file__).parent / "web"
MODEL_NAME = "model.int8.onnx"
RUNTIME = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
# onnxruntime-web's WebGPU build (its own WASM, with Asyncify: 27 MB), which spritesafe.js
# imports only where there is a hardware WebGPU adapter: in a bundle on request (webgpu=True),
# not in the wheel; the npm package has it through its onnxruntime-web dependency.
WEBGPU_RUNTIME = (
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)

# The "tag, not filter" pattern: the model only scores; the page's policy decides what a
# flagged image looks like. The policy stays in the page (no form, no URL, no history).
DEMO = """<!doctype html>
<meta charset="utf-8">
<title>spritesafe</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1em }
  fieldset { display: inline-block; vertical-align: top; margin: 0 1em 1em 0 }
  input[type=range] { vertical-align: middle }
  #out { display: flex; flex-wrap: wrap; gap: 12px; padding: 0 }
  #out li { list-style: none; width: 128px; font-size: 12px; white-space: pre-line }
  .frame { width: 128px; height: 128px; overflow: hidden; background: #ddd;
           display: grid; place-items: center }
  .frame img { width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated }
  .note { display: none; color: #555 }
  /* Never drawn before its scores are known, nor when hidden or unreadable. */
  .pending img, .hidden img, .error img { display: none }
  .hidden .note { display: block }
  .blurred img { filter: blur(12px); cursor: pointer }
  .report { white-space: normal }
  .report select, .report input { font-size: 11px; max-width: 124px }
</style>
<h1>spritesafe</h1>
<p>Scores are tags, not verdicts: this page's policy decides what to show.
Drop pixel art here (or pick files):
<input type="file" id="files" multiple accept="image/*"> <span id="status">loading</span></p>
<fieldset><legend>flagged images</legend>
  <label><input type="radio" name="mode" value="off" autocomplete="off"> off: show</label>
  <label><input type="radio" name="mode" value="blur" autocomplete="off" checked>
    blur: click to reveal</label>
  <label><input type="radio" name="mode" value="hide" autocomplete="off"> hide</label>
</fieldset>
<fieldset><legend>flag when</legend>
  <label>explicit &gt; <input type="range" id="explicit" min="0" max="1" step="0.001"
    value="0.5" autocomplete="off"> <output id="explicit-value">0.500</output></label><br>
  <label>or suggestive &gt; <input type="range" id="suggestive" min="0" max="1" step="0.001"
    value="0.7" autocomplete="off"> <output id="suggestive-value">0.700</output></label>
</fieldset>
<ul id="out"></ul>
<script type="module">
  import { createClassifier } from './spritesafe.js';
  const $ = (id) => document.getElementById(id);
  // config.json (`spritesafe export --web --report-url`): where "wrong?" sends an image.
  const config = await fetch('./config.json').then((r) => (r.ok ? r.json() : {}), () => ({}));
  const clf = await createClassifier();
  $('status').textContent = 'ready';

  // Re-applied to every shown image on any change: the scores are kept, never recomputed.
  function apply(li) {
    const r = li.result;
    if (!r) return;
    const mode = document.querySelector('input[name=mode]:checked').value;
    const flagged = r.explicit > +$('explicit').value || r.suggestive > +$('suggestive').value;
    li.dataset.flagged = flagged;
    if (!flagged || mode === 'off' || (mode === 'blur' && li.revealed)) li.className = 'shown';
    else li.className = mode === 'blur' ? 'blurred' : 'hidden';
  }
  const applyAll = () => [...$('out').children].forEach(apply);

  // "wrong?": the image's bytes and what the user expects go to the review server (another
  // origin, which allows this page's). A POST body, no cookies; nothing goes into a URL.
  function reportButton(li, file, r) {
    const box = document.createElement('div');
    box.className = 'report';
    const wrong = document.createElement('button');
    wrong.type = 'button';
    wrong.className = 'wrong';
    wrong.textContent = 'wrong?';
    const form = document.createElement('span');
    form.className = 'report-form';
    form.hidden = true;
    const expected = document.createElement('select');
    expected.className = 'expected';
    expected.setAttribute('aria-label', 'it is');
    for (const level of ['safe', 'suggestive', 'explicit']) {
      expected.add(new Option(`it is ${level}`, level));
    }
    expected.value = ['safe', 'suggestive', 'explicit'].find((l) => l !== r.label);
    const note = document.createElement('input');
    note.className = 'report-note';
    note.placeholder = 'note (optional)';
    note.maxLength = 500;
    const send = document.createElement('button');
    send.type = 'button';
    send.className = 'send';
    send.textContent = 'send';
    const status = document.createElement('span');
    status.className = 'report-status';
    form.append(expected, note, send);
    box.append(wrong, form, status);
    wrong.onclick = () => { form.hidden = !form.hidden; };
    send.onclick = async () => {
      const body = new FormData();
      body.append('image', file, file.name);
      body.append('expected', expected.value);
      if (note.value.trim()) body.append('note', note.value.trim());
      body.append('label', r.label);
      if (clf.meta && clf.meta.model_id) body.append('model_id', clf.meta.model_id);
      send.disabled = true;
      status.textContent = 'sending';
      try {
        const response = await fetch(config.report.url, {
          method: 'POST', body, mode: 'cors', credentials: 'omit', cache: 'no-store',
          headers: { Authorization: `Bearer ${config.report.token}` },
        });
        const answer = await response.json().catch(() => ({}));
        if (response.ok) {
          form.hidden = true;
          wrong.disabled = true;
          status.textContent = answer.queued ? 'reported: thanks' : 'reported again: thanks';
        } else {
          send.disabled = false;
          status.textContent = `not sent: ${answer.detail || answer.error || response.status}`;
        }
      } catch (error) {
        send.disabled = false;
        status.textContent = `not sent: ${error.message}`;
      }
      li.dataset.report = status.textContent;
    };
    return box;
  }

  function show(files) {
    for (const file of files) {
      const li = document.createElement('li');
      li.className = 'pending';
      li.dataset.name = file.name;
      li.innerHTML = '<div class="frame"><img alt=""><span class="note">hidden</span></div>'
        + '<span class="scores">classifying</span>';
      li.querySelector('img').src = URL.createObjectURL(file);
      li.querySelector('.frame').onclick = () => {
        if (li.className === 'blurred') { li.revealed = true; apply(li); }
      };
      $('out').append(li);
      clf.classify(file).then((r) => {
        li.result = r;
        li.dataset.label = r.label;
        li.querySelector('.scores').textContent = `${file.name}: ${r.label}
          safe ${r.safe.toFixed(3)}
          suggestive ${r.suggestive.toFixed(3)}
          explicit ${r.explicit.toFixed(3)}`;
        if (config.report) li.append(reportButton(li, file, r));
        apply(li);
      }, (error) => {
        li.className = 'error';
        li.querySelector('.scores').textContent = `${file.name}: ${error.message}`;
      });
    }
  }

  for (const radio of document.querySelectorAll('input[name=mode]')) {
    radio.onchange = () => {
      for (const li of $('out').children) li.revealed = false; // a new mode starts afresh
      applyAll();
    };
  }
  for (const id of ['explicit', 'suggestive']) {
    $(id).oninput = () => {
      $(`${id}-value`).textContent = Number($(id).value).toFixed(3);
      applyAll();
    };
  }
  $('files').onchange = (e) => show(e.target.files);
  document.ondragover = (e) => e.preventDefault();
  document.ondrop = (e) => { e.preventDefault(); show(e.dataTransfer.files); };
</script>
"""


class BundleError(RuntimeError):
    pass


def web_metadata(model: Path) -> dict[str, Any]:
    """model.json: what spritesafe.js needs to turn the two logits into scores and a label."""
    meta = read_metadata(model)
    if "thresholds" not in meta:
        raise BundleError(
            f"{model} was exported before three-level scores: export it again (`spritesafe export`)"
        )
    spec = meta["preprocess"]
    return {
        "model_id": meta.get("model_id"),
        "preprocess": json.loads(spec) if isinstance(spec, str) else spec,
        "levels": meta.get("levels", list(LEVELS)),
        "thresholds": meta["thresholds"],  # per cumulative level: the label's
        "positive_level": meta.get("positive_level", 2),  # score = P(>= levels[this])
        "threshold": meta.get("threshold", 0.5),  # the deployment's, for `nsfw`
        "snapshot_id": meta.get("snapshot_id"),
    }


def check_int8(model: Path) -> None:
    """The browser feeds a canvas's RGBA pixels: only an INT8 file taking `pixels` will do."""
    inputs = [i.name for i in onnx.load(str(model), load_external_data=False).graph.input]
    if inputs != [PIXELS]:
        raise BundleError(
            f"{model} takes {inputs}, not {PIXELS!r}: the bundle feeds a canvas's RGBA pixels "
            "to an INT8 file written by `spritesafe export`"
        )


def ort_dist(names: tuple[str, ...] = RUNTIME) -> Path:
    """onnxruntime-web's dist folder (export/web/node_modules), checked to hold `names`."""
    runtime = SOURCE / "node_modules" / "onnxruntime-web" / "dist"
    missing = [name for name in names if not (runtime / name).is_file()]
    if missing:
        raise BundleError(
            f"onnxruntime-web is not installed ({runtime} lacks {missing}): run "
            f"`npm ci` in {SOURCE} (scripts/install.sh --dev does)"
        )
    return runtime


def ort_version() -> str:
    """The onnxruntime-web version the bundle is tested with (export/web/package.json)."""
    version: str = json.loads((SOURCE / "package.json").read_text())["dependencies"][
        "onnxruntime-web"
    ]
    return version


def write_model(model: Path, folder: Path) -> dict[str, Any]:
    """model.int8.onnx and model.json (web_metadata) into `folder`; returns the metadata."""
    meta = web_metadata(model)
    shutil.copy2(model, folder / MODEL_NAME)
    (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def staging(out: Path) -> Path:
    """An empty folder beside `out` to write into; `publish` puts it in `out`'s place."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def build_web(
    model: Path,
    out: Path,
    embed: bool = False,
    report_url: str | None = None,
    report_token: str | None = None,
    webgpu: bool = False,
) -> Path:
    """Write the bundle for `model` (an INT8 .onnx) into `out`; returns `out`. `webgpu` adds
    onnxruntime-web's WebGPU build (27 MB; without it the page runs on WASM and says why). With
    `report_url` (a review server's /api/report) and its `report_token`, the demo page gets a
    "wrong?" button that reports an image there (config.json; the token is readable by anyone
    who can load the page: it is the report route's key, never the review page's token)."""
    config: dict[str, Any] = {"report": None}
    if report_url:
        parts = urlsplit(report_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BundleError(f"the report URL must be http(s)://name[:port]/path: {report_url!r}")
        if not report_token:
            raise BundleError("a report URL needs the review server's report token")
        config["report"] = {"url": report_url, "token": report_token}
    check_int8(model)
    names = RUNTIME + (WEBGPU_RUNTIME if webgpu else ())
    runtime = ort_dist(names)
    tmp = staging(out)
    (tmp / "ort").mkdir()
    for name in ("spritesafe.js", "worker.js"):
        shutil.copy2(SOURCE / name, tmp / name)
    for name in names:
        shutil.copy2(runtime / name, tmp / "ort" / name)
    meta = write_model(model, tmp)
    if embed:
        encoded = base64.b64encode(model.read_bytes()).decode("ascii")
        (tmp / "model.js").write_text(
            f"// {meta['model_id']}: the INT8 model, embedded\n"
            f"export const meta = {json.dumps(meta)};\n"
            f'export const base64 = "{encoded}";\n'
        )
    (tmp / "index.html").write_text(DEMO)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return publish(tmp, out)

// spritesafe in the browser (and Node): three ordered scores for pixel art (safe, suggestive,
// explicit; they sum to 1) with the exported INT8 model on onnxruntime-web (WASM). Scores are
// tags, not verdicts: the page applies its own policy (see the demo, index.html). The model
// outputs two logits, at least suggestive and explicit; `levels` turns them into the scores
// exactly as spritesafe/levels.py does. The preprocessing is a line-by-line port of
// spritesafe/preprocess.py and corpus/canonical.py (Pillow's BOX filter included); a test runs
// both on the same images and requires identical tensors and scores. (A browser canvas may round semi-transparent colours by a
// level where Python does not; opaque and fully transparent pixels are exact.)
//
//   import { createClassifier } from './spritesafe.js';
//   const clf = await createClassifier();                 // model.json + model.int8.onnx beside
//   const r = await clf.classify(imgElementOrBlobOrImageData);
//   // r.safe, r.suggestive, r.explicit: the three scores;
//   // r.label: the highest level whose "at least" score reaches its threshold (model.json);
//   // r.score: P(nsfw) at the deployment's positive level, r.nsfw: score >= threshold.
//   if (r.explicit > 0.5 || r.suggestive > 0.7) blur(img);      // a policy of your own
//
// Calls made within `batchWindowMs` of each other run as one batch. Inference runs in a Web
// Worker when the platform has one (the page stays responsive), else on the calling thread.

const ORT_MODULE = './ort/ort.wasm.min.mjs';

// --- preprocessing (spritesafe/preprocess.py, corpus/canonical.py) -------------------------

/** RGBA (Uint8ClampedArray/Uint8Array, width*height*4) -> RGB over the background, rounded. */
export function composite(rgba, width, height, background) {
  const n = width * height;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = rgba[i * 4 + 3];
    for (let c = 0; c < 3; c++) {
      rgb[i * 3 + c] = Math.floor((rgba[i * 4 + c] * a + background[c] * (255 - a) + 127) / 255);
    }
  }
  return rgb;
}

function changePositions(rgb, width, height, axis) {
  const out = [];
  if (axis === 1) {
    for (let x = 1; x < width; x++) {
      for (let y = 0; y < height; y++) {
        const i = (y * width + x) * 3;
        if (rgb[i] !== rgb[i - 3] || rgb[i + 1] !== rgb[i - 2] || rgb[i + 2] !== rgb[i - 1]) {
          out.push(x);
          break;
        }
      }
    }
  } else {
    const row = width * 3;
    for (let y = 1; y < height; y++) {
      for (let k = 0; k < row; k++) {
        if (rgb[y * row + k] !== rgb[(y - 1) * row + k]) {
          out.push(y);
          break;
        }
      }
    }
  }
  return out;
}

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** [scale, offsetX, offsetY] of the native pixel grid (see corpus/canonical.py). */
export function detectScale(rgb, width, height, maxScale) {
  const xs = changePositions(rgb, width, height, 1);
  const ys = changePositions(rgb, width, height, 0);
  let g = 0;
  for (const p of [xs, ys]) {
    if (p.length >= 2) for (let i = 1; i < p.length; i++) g = gcd(g, p[i] - p[i - 1]);
  }
  if (g === 0) {
    for (const [p, size] of [[xs, width], [ys, height]]) {
      if (p.length === 1) g = gcd(g, gcd(p[0], size - p[0]));
    }
  }
  if (g <= 1) return [1, 0, 0];
  let scale = 1;
  for (let d = 1; d <= Math.min(g, maxScale); d++) if (g % d === 0) scale = d;
  return [scale, xs.length ? xs[0] % scale : 0, ys.length ? ys[0] % scale : 0];
}

function blockStarts(size, scale, offset) {
  const starts = offset > 0 ? [0] : [];
  for (let i = offset; i < size; i += scale) starts.push(i);
  return starts;
}

/** Canonical pixels: RGB on the fixed background, one pixel per block of the native grid. */
export function canonicalize(rgba, width, height, spec) {
  const rgb = composite(rgba, width, height, spec.background);
  const [scale, ox, oy] = detectScale(rgb, width, height, spec.max_scale);
  if (scale === 1) return { pixels: rgb, width, height };
  const rows = blockStarts(height, scale, oy);
  const cols = blockStarts(width, scale, ox);
  const pixels = new Uint8Array(rows.length * cols.length * 3);
  let k = 0;
  for (const y of rows) {
    for (const x of cols) {
      const i = (y * width + x) * 3;
      pixels[k++] = rgb[i];
      pixels[k++] = rgb[i + 1];
      pixels[k++] = rgb[i + 2];
    }
  }
  return { pixels, width: cols.length, height: rows.length };
}

function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// Area averaging for images larger than the input: Pillow's BOX resampling exactly (its
// coefficients, 22-bit fixed point, horizontal pass then vertical, 8-bit in between).
const PRECISION_BITS = 22;

function boxCoefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 0.5 * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const w = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = (x + xmin - center + 0.5) / filterscale;
      const v = t > -0.5 && t <= 0.5 ? 1.0 : 0.0;
      w.push(v);
      ww += v;
    }
    const k = w.map((v) => {
      const n = ww !== 0 ? v / ww : v;
      return Math.trunc((n < 0 ? -0.5 : 0.5) + n * (1 << PRECISION_BITS));
    });
    out.push([xmin, k]);
  }
  return out;
}

function clip8(v) {
  const x = Math.floor(v / (1 << PRECISION_BITS)); // an arithmetic shift, beyond 32 bits
  return x < 0 ? 0 : x > 255 ? 255 : x;
}

function shrinkBox(src, width, height, outW, outH) {
  const half = 1 << (PRECISION_BITS - 1);
  const tmp = new Uint8Array(outW * height * 3);
  const cols = boxCoefficients(width, outW);
  for (let y = 0; y < height; y++) {
    for (let xx = 0; xx < outW; xx++) {
      const [xmin, k] = cols[xx];
      for (let c = 0; c < 3; c++) {
        let acc = half;
        for (let i = 0; i < k.length; i++) acc += src[(y * width + xmin + i) * 3 + c] * k[i];
        tmp[(y * outW + xx) * 3 + c] = clip8(acc);
      }
    }
  }
  const out = new Uint8Array(outW * outH * 3);
  const rows = boxCoefficients(height, outH);
  for (let yy = 0; yy < outH; yy++) {
    const [ymin, k] = rows[yy];
    for (let j = 0; j < outW * 3; j++) {
      let acc = half;
      for (let i = 0; i < k.length; i++) acc += tmp[(ymin + i) * outW * 3 + j] * k[i];
      out[yy * outW * 3 + j] = clip8(acc);
    }
  }
  return out;
}

/** Canonical pixels -> size x size x 3: integer nearest enlargement or area shrink, centred. */
export function fit(pixels, width, height, spec) {
  const size = spec.size;
  let src = pixels;
  let w = width;
  let h = height;
  if (Math.max(w, h) <= size) {
    const k = Math.max(1, Math.floor(size / Math.max(w, h)));
    if (k > 1) {
      src = new Uint8Array(w * k * h * k * 3);
      for (let y = 0; y < h * k; y++) {
        for (let x = 0; x < w * k; x++) {
          const s = ((Math.floor(y / k)) * w + Math.floor(x / k)) * 3;
          const d = (y * w * k + x) * 3;
          src[d] = pixels[s];
          src[d + 1] = pixels[s + 1];
          src[d + 2] = pixels[s + 2];
        }
      }
      w *= k;
      h *= k;
    }
  } else {
    const ratio = size / Math.max(w, h);
    const outW = Math.max(1, roundHalfEven(w * ratio));
    const outH = Math.max(1, roundHalfEven(h * ratio));
    src = shrinkBox(pixels, w, h, outW, outH);
    w = outW;
    h = outH;
  }
  const out = new Uint8Array(size * size * 3);
  for (let i = 0; i < size * size; i++) out.set(spec.background, i * 3);
  const top = Math.floor((size - h) / 2);
  const left = Math.floor((size - w) / 2);
  for (let y = 0; y < h; y++) out.set(src.subarray(y * w * 3, (y + 1) * w * 3), ((top + y) * size + left) * 3);
  return out;
}

/** size x size x 3 uint8 -> size x size x 4 uint8, alpha 255 (spritesafe.preprocess.rgba):
 * the INT8 model's `pixels` input; it normalizes inside its first convolution. */
export function rgba(fitted) {
  const n = fitted.length / 3;
  const out = new Uint8Array(n * 4);
  for (let i = 0; i < n; i++) {
    out[i * 4] = fitted[i * 3];
    out[i * 4 + 1] = fitted[i * 3 + 1];
    out[i * 4 + 2] = fitted[i * 3 + 2];
    out[i * 4 + 3] = 255;
  }
  return out;
}

/** RGBA pixels -> the model's input, exactly as spritesafe.preprocess.rgba(fit(...)). */
export function preprocess(pixels, width, height, spec) {
  const c = canonicalize(pixels, width, height, spec);
  return rgba(fit(c.pixels, c.width, c.height, spec));
}

export function sigmoid(logit) {
  return 0.5 * (1 + Math.tanh(0.5 * logit)); // stable for large |logit|, as in Python
}

/** The two logits -> scores and label, as spritesafe/levels.py (at_least, scores, label).
 * meta: model.json (levels, thresholds, positive_level, threshold). */
export function levels(logits, meta) {
  const atLeast = sigmoid(logits[0]);
  // Capped: an INT8 graph rounds each output on its own and could break the order by a step.
  const explicit = Math.min(sigmoid(logits[1]), atLeast);
  const cumulative = [atLeast, explicit];
  let label = meta.levels[0];
  for (const k of [2, 1]) {
    if (cumulative[k - 1] >= meta.thresholds[meta.levels[k]]) {
      label = meta.levels[k];
      break;
    }
  }
  const score = cumulative[meta.positive_level - 1];
  return {
    safe: 1 - atLeast,
    suggestive: atLeast - explicit,
    explicit,
    label,
    score,
    nsfw: score >= meta.threshold,
    logits: [logits[0], logits[1]],
  };
}

// --- decoding in the browser --------------------------------------------------------------

/** ImageData, or {data, width, height}, or anything createImageBitmap takes (img, Blob, ...). */
async function toRGBA(image) {
  if (image && image.data && image.width && image.height) return image;
  const bitmap = await createImageBitmap(image, {
    premultiplyAlpha: 'none',
    colorSpaceConversion: 'none',
    imageOrientation: 'none', // Python does not apply EXIF rotation either
  });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingEnabled = false; // nearest: never blur pixel art
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
}

// --- inference --------------------------------------------------------------------------

function base64Bytes(text) {
  if (typeof atob === 'function') return Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
  return new Uint8Array(globalThis.Buffer.from(text, 'base64'));
}

/** Runs batches of inputs on one session: in a Worker, or here. */
class Runner {
  static async create(modelBytes, options) {
    const runner = new Runner();
    if (options.worker !== false && typeof Worker !== 'undefined') {
      runner.worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
      runner.pending = new Map();
      runner.nextId = 0;
      runner.worker.onmessage = ({ data }) => {
        const { resolve, reject } = runner.pending.get(data.id);
        runner.pending.delete(data.id);
        data.error ? reject(new Error(data.error)) : resolve(data.logits);
      };
      await runner.call({ type: 'load', model: modelBytes, threads: options.threads ?? 1 });
      runner.where = 'worker';
    } else {
      const ort = options.ort ?? (await import(ORT_MODULE));
      ort.env.wasm.numThreads = options.threads ?? 1;
      runner.ort = ort;
      runner.session = await ort.InferenceSession.create(modelBytes, { executionProviders: ['wasm'] });
      runner.where = 'main thread';
    }
    return runner;
  }

  call(message) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, ...message });
    });
  }

  /** inputs: Uint8Array of n * size * size * 4 (RGBA) -> Float32Array of n * 2 logits. */
  async run(inputs, n, size) {
    if (this.worker) return this.call({ type: 'run', inputs, n, size });
    const tensor = new this.ort.Tensor('uint8', inputs, [n, size, size, 4]);
    const out = await this.session.run({ pixels: tensor });
    return out.logits.data;
  }
}

export class Classifier {
  constructor(runner, meta, options) {
    this.runner = runner;
    this.meta = meta;
    this.spec = meta.preprocess;
    this.batchWindowMs = options.batchWindowMs ?? 4;
    this.maxBatch = options.maxBatch ?? 32;
    this.queue = [];
    this.timer = null;
    this.batches = 0; // how many runs served the calls so far (coalescing is observable)
  }

  get where() {
    return this.runner.where;
  }

  /** The model's input for an image (for parity checks): Uint8Array, size * size * 4 RGBA. */
  async input(image) {
    const { data, width, height } = await toRGBA(image);
    return preprocess(data, width, height, this.spec);
  }

  /** { safe, suggestive, explicit, label, score, nsfw, logits } (see `levels`). */
  async classify(image) {
    const input = await this.input(image);
    const logits = await new Promise((resolve, reject) => {
      this.queue.push({ input, resolve, reject });
      if (this.queue.length >= this.maxBatch) this.flush();
      else if (this.timer === null) this.timer = setTimeout(() => this.flush(), this.batchWindowMs);
    });
    return levels(logits, this.meta);
  }

  async flush() {
    clearTimeout(this.timer);
    this.timer = null;
    const work = this.queue.splice(0, this.maxBatch);
    if (!work.length) return;
    const plane = work[0].input.length;
    const inputs = new Uint8Array(plane * work.length);
    work.forEach((w, i) => inputs.set(w.input, i * plane));
    this.batches += 1;
    try {
      const logits = await this.runner.run(inputs, work.length, this.spec.size);
      work.forEach((w, i) => w.resolve(logits.subarray(i * 2, i * 2 + 2)));
    } catch (error) {
      work.forEach((w) => w.reject(error));
    }
    if (this.queue.length) this.flush();
  }
}

/**
 * options.model: URL of the .onnx (default ./model.int8.onnx beside this file), or bytes;
 * options.meta: the model.json object, or its URL (default ./model.json);
 * options.embedded: a module like model.js ({ meta, base64 }) to use instead of both;
 * options.worker: false to stay on the calling thread; options.ort: an onnxruntime-web
 * module to use there (Node); options.threads, options.batchWindowMs, options.maxBatch.
 */
export async function createClassifier(options = {}) {
  let meta = options.meta;
  let model = options.model;
  if (options.embedded) {
    meta = options.embedded.meta;
    model = base64Bytes(options.embedded.base64);
  }
  if (meta === undefined || typeof meta === 'string') {
    meta = await (await fetch(meta ?? new URL('./model.json', import.meta.url))).json();
  }
  if (model === undefined || typeof model === 'string' || model instanceof URL) {
    const url = model ?? new URL('./model.int8.onnx', import.meta.url);
    model = new Uint8Array(await (await fetch(url)).arrayBuffer());
  }
  if (!meta.thresholds) {
    throw new Error('model.json has no thresholds: the model was exported before three-level '
      + 'scores; export it again (spritesafe export --web)');
  }
  const runner = await Runner.create(model, options);
  return new Classifier(runner, meta, options);
}

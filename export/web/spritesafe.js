// spritesafe in the browser (and Node): three ordered scores for pixel art (safe, suggestive,
// explicit; they sum to 1) with the exported INT8 model on onnxruntime-web: WebGPU when the
// platform offers a hardware GPU adapter, else WASM. Scores are tags, not verdicts: the page
// applies its own policy (see the demo, index.html). The model outputs two logits, at least
// suggestive and explicit; `levels` turns them into the scores exactly as spritesafe/levels.py
// does. The preprocessing is a line-by-line port of spritesafe/preprocess.py and
// corpus/canonical.py (Pillow's BOX filter included); a test runs both on the same images and
// requires identical tensors and scores (on WASM; WebGPU runs the INT8 graph unfused and rounds
// now and then to the other INT8 step: scores within 0.01). (A browser canvas may round
// semi-transparent colours by a level where Python does not; opaque and transparent pixels are
// exact.)
//
//   import { createClassifier } from './spritesafe.js';
//   const clf = await createClassifier();                 // model.json + model.int8.onnx beside
//   const r = await clf.classify(imgElementOrBlobOrImageData);
//   // r.safe, r.suggestive, r.explicit: the three scores;
//   // r.label: the highest level whose "at least" score reaches its threshold (model.json);
//   // r.score: P(nsfw) at the deployment's positive level, r.nsfw: score >= threshold.
//   if (r.explicit > 0.5 || r.suggestive > 0.7) blur(img);      // a policy of your own
//   // clf.provider: 'webgpu' or 'wasm'; clf.fallback: why not WebGPU (null when it ran)
//
// Calls made within `batchWindowMs` of each other run as one batch. Inference runs in a Web
// Worker when the platform has one (the page stays responsive), else on the calling thread.
//
// Two flavours share this file. The plain bundle (`spritesafe export --web`) serves
// onnxruntime-web's files in ./ort/ beside it, and its worker is ./worker.js; the npm package
// (`spritesafe export --npm`) wraps it in index.js, which passes its own model location, worker
// and runtime loader (the `onnxruntime-web` dependency, imported by name: runtime.js).

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

// --- loading ------------------------------------------------------------------------------

function base64Bytes(text) {
  if (typeof atob === 'function') return Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
  return new Uint8Array(globalThis.Buffer.from(text, 'base64'));
}

const NODE_FS = 'node:fs'; // not a literal import: bundlers for the browser leave it alone

/** The bytes at a URL: fetched, or read from disk for a file: URL (Node's fetch cannot). */
async function readBytes(url) {
  if (String(url).startsWith('file:') && globalThis.process?.versions?.node) {
    const fs = globalThis.process.getBuiltinModule?.(NODE_FS)
      ?? (await import(/* webpackIgnore: true */ /* @vite-ignore */ NODE_FS));
    return new Uint8Array(fs.readFileSync(new URL(String(url))));
  }
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  return new Uint8Array(await response.arrayBuffer());
}

const isLocation = (x) => typeof x === 'string' || x instanceof URL;

// --- the runtime: WebGPU when there is a GPU, else WASM ------------------------------------

// The plain bundle's onnxruntime-web, one build per provider (the WebGPU build's WASM is twice
// the size: a page without WebGPU never downloads it). URLs made at run time, so that a bundler
// packing the npm package, which imports the runtime by name (its runtime.js), skips them.
const BUNDLED = { wasm: './ort/ort.wasm.min.mjs', webgpu: './ort/ort.webgpu.min.mjs' };
const WORKER = './worker.js';

/** onnxruntime-web for `provider` ('wasm' or 'webgpu') from ./ort/ beside this file. */
export async function bundledOrt(provider) {
  const url = new URL(BUNDLED[provider], import.meta.url).href;
  try {
    return await import(/* webpackIgnore: true */ /* @vite-ignore */ url);
  } catch (error) {
    if (provider !== 'webgpu') throw error;
    throw new Error('could not load the WebGPU build of onnxruntime-web from ./ort/ '
      + `(\`spritesafe export --web --webgpu\` ships it): ${error?.message ?? error}`);
  }
}

function bundledWorker() {
  return new Worker(new URL(WORKER, import.meta.url), { type: 'module' });
}

export const PROVIDERS = ['auto', 'webgpu', 'wasm'];

/**
 * Whether WebGPU can run here: { adapter } or { reason } why not. 'auto' declines a software
 * (fallback) adapter such as SwiftShader: the INT8 model took ~1.5 s per image on it against
 * ~6 ms on WASM on the same CPU (bench/webgpu_bench.py); 'webgpu' takes any adapter.
 */
export async function webgpuAdapter(provider = 'auto', gpu = globalThis.navigator?.gpu) {
  if (!gpu) return { reason: 'no WebGPU here (navigator.gpu is missing)' };
  let adapter;
  try {
    adapter = await gpu.requestAdapter();
  } catch (error) {
    return { reason: `no WebGPU adapter (requestAdapter failed: ${error?.message ?? error})` };
  }
  if (!adapter) return { reason: 'no WebGPU adapter (navigator.gpu.requestAdapter() gave none)' };
  const software = adapter.isFallbackAdapter ?? adapter.info?.isFallbackAdapter ?? false;
  if (software && provider !== 'webgpu') {
    const name = adapter.info?.architecture || adapter.info?.vendor || 'software';
    return { reason: `the WebGPU adapter is a software fallback (${name}), slower than WASM` };
  }
  return { adapter };
}

/**
 * An onnxruntime-web session for the model bytes: on WebGPU when `provider` is 'auto' (the
 * default) or 'webgpu' and an adapter is there, else, or when WebGPU fails, on WASM.
 * loadOrt(provider) returns the onnxruntime-web module for that provider.
 * -> { ort, session, provider: 'webgpu' | 'wasm', fallback: why not WebGPU, or null }
 */
export async function openSession(model, settings = {}, loadOrt = bundledOrt) {
  const { provider = 'auto', threads = 1, sessionOptions = {} } = settings;
  if (!PROVIDERS.includes(provider)) {
    throw new Error(`provider ${JSON.stringify(provider)}: one of ${PROVIDERS.join(', ')}`);
  }
  let fallback = null;
  if (provider !== 'wasm') {
    const gpu = await webgpuAdapter(provider);
    fallback = gpu.reason ?? null;
    if (gpu.adapter) {
      try {
        const ort = await loadOrt('webgpu');
        ort.env.webgpu.adapter = gpu.adapter; // the one judged above, not another
        ort.env.wasm.numThreads = threads; // for the nodes WebGPU leaves to the CPU
        const session = await ort.InferenceSession.create(model, {
          ...sessionOptions,
          executionProviders: ['webgpu'],
        });
        return { ort, session, provider: 'webgpu', fallback: null };
      } catch (error) {
        fallback = `WebGPU failed: ${error?.message ?? error}`;
      }
    }
  }
  const ort = await loadOrt('wasm');
  ort.env.wasm.numThreads = threads;
  const session = await ort.InferenceSession.create(model, {
    ...sessionOptions,
    executionProviders: ['wasm'],
  });
  return { ort, session, provider: 'wasm', fallback };
}

/** The Web Worker's side (worker.js): one session, batches in, logits out. */
export function serveWorker(scope, loadOrt = bundledOrt) {
  let opened = null;
  scope.onmessage = async ({ data }) => {
    try {
      if (data.type === 'load') {
        opened = await openSession(data.model, data.settings, loadOrt);
        scope.postMessage({ id: data.id, provider: opened.provider, fallback: opened.fallback });
      } else if (data.type === 'close') {
        await opened?.session.release();
        scope.postMessage({ id: data.id });
      } else {
        const { ort, session } = opened;
        const tensor = new ort.Tensor('uint8', data.inputs, [data.n, data.size, data.size, 4]);
        const out = await session.run({ pixels: tensor });
        scope.postMessage({ id: data.id, logits: out.logits.data }); // (n, 2), flat
      }
    } catch (error) {
      scope.postMessage({ id: data.id, error: String(error?.message ?? error) });
    }
  };
}

// --- inference --------------------------------------------------------------------------

/** Whether Web Workers run here: not in Node, where onnxruntime-web may define a Worker of
 * its own (worker_threads, no `self`). */
function webWorkers() {
  const node = globalThis.process?.versions?.node && typeof window === 'undefined';
  return typeof Worker !== 'undefined' && !node;
}

/** Runs batches of inputs on one session: in a Worker, or here. */
class Runner {
  static async create(model, options) {
    const settings = {
      provider: options.provider ?? 'auto',
      threads: options.threads ?? 1,
      sessionOptions: options.sessionOptions ?? {},
    };
    const runner = new Runner();
    if (options.worker !== false && webWorkers()) {
      try {
        await runner.start((options.createWorker ?? bundledWorker)(), model, settings);
        return runner;
      } catch (error) {
        if (!error.workerFailed) throw error;
        runner.workerError = error.message; // e.g. a bundler that left the worker out
      }
    }
    const loadOrt = options.ort ? async () => options.ort : (options.loadOrt ?? bundledOrt);
    const opened = await openSession(model, settings, loadOrt);
    Object.assign(runner, opened, { where: 'main thread' });
    return runner;
  }

  async start(worker, model, settings) {
    this.worker = worker;
    this.pending = new Map();
    this.nextId = 0;
    worker.onmessage = ({ data }) => {
      const { resolve, reject } = this.pending.get(data.id);
      this.pending.delete(data.id);
      data.error ? reject(new Error(data.error)) : resolve(data);
    };
    worker.onerror = (event) => {
      event.preventDefault?.();
      const error = new Error(`the worker failed: ${event.message || 'it could not be loaded'}`);
      error.workerFailed = true;
      for (const { reject } of this.pending.values()) reject(error);
      this.pending.clear();
    };
    try {
      const loaded = await this.call({ type: 'load', model, settings });
      Object.assign(this, { provider: loaded.provider, fallback: loaded.fallback });
      this.where = 'worker';
    } catch (error) {
      worker.terminate();
      this.worker = null;
      throw error;
    }
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
    if (this.worker) return (await this.call({ type: 'run', inputs, n, size })).logits;
    const tensor = new this.ort.Tensor('uint8', inputs, [n, size, size, 4]);
    const out = await this.session.run({ pixels: tensor });
    return out.logits.data;
  }

  async close() {
    if (this.worker) {
      await this.call({ type: 'close' });
      this.worker.terminate();
      this.worker = null;
    } else {
      await this.session?.release();
    }
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

  /** 'worker' or 'main thread'. */
  get where() {
    return this.runner.where;
  }

  /** The execution provider the session runs on: 'webgpu' or 'wasm'. */
  get provider() {
    return this.runner.provider;
  }

  /** Why the session is not on WebGPU (no navigator.gpu, no adapter, a failure), or null. */
  get fallback() {
    return this.runner.fallback;
  }

  /** Why the session is not in a Worker though the platform has them, or undefined. */
  get workerError() {
    return this.runner.workerError;
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

  /** Releases the session (and ends the worker). */
  close() {
    return this.runner.close();
  }
}

/**
 * options.model: URL of the .onnx (default ./model.int8.onnx beside this file), or bytes;
 * options.meta: the model.json object, or its URL (default ./model.json);
 * options.embedded: a module like model.js ({ meta, base64 }) to use instead of both;
 * options.provider: 'auto' (WebGPU on a hardware adapter, else WASM), 'webgpu' (any adapter,
 * else WASM) or 'wasm'; options.worker: false to stay on the calling thread; options.ort: an
 * onnxruntime-web module to use there (Node); options.loadOrt: provider -> that module (the
 * npm package's); options.createWorker: () => a Worker running serveWorker;
 * options.sessionOptions: onnxruntime-web's session options (e.g. logSeverityLevel);
 * options.threads, options.batchWindowMs, options.maxBatch.
 */
export async function createClassifier(options = {}) {
  let meta = options.meta;
  let model = options.model;
  if (options.embedded) {
    meta = options.embedded.meta;
    model = base64Bytes(options.embedded.base64);
  }
  if (meta === undefined || isLocation(meta)) {
    const bytes = await readBytes(meta ?? new URL('./model.json', import.meta.url));
    meta = JSON.parse(new TextDecoder().decode(bytes));
  }
  if (model === undefined || isLocation(model)) {
    model = await readBytes(model ?? new URL('./model.int8.onnx', import.meta.url));
  }
  if (!meta.thresholds) {
    throw new Error('model.json has no thresholds: the model was exported before three-level '
      + 'scores; export it again (spritesafe export --web)');
  }
  const runner = await Runner.create(model, options);
  return new Classifier(runner, meta, options);
}

/**
 * createClassifier and classify with these defaults: classify(image or images) runs on one
 * classifier made on first use. (The npm package's index.js makes its pair with its files.)
 */
export function withDefaults(defaults) {
  const create = (options = {}) => createClassifier({ ...defaults, ...options });
  let shared = null;
  async function classify(images) {
    shared ??= create().catch((error) => {
      shared = null;
      throw error;
    });
    const clf = await shared;
    return Array.isArray(images)
      ? Promise.all(images.map((image) => clf.classify(image)))
      : clf.classify(images);
  }
  return { createClassifier: create, classify };
}

/** One classifier, made on first use with the defaults: classify(image) or classify([...]). */
export const { classify } = withDefaults({});

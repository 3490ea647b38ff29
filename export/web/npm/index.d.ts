// Types of the spritesafe npm package (written by `spritesafe export --npm`).

/** The levels, lowest first; a label is one of them. */
export type Level = 'safe' | 'suggestive' | 'explicit';

/** Where the session runs: WebGPU or WebAssembly (onnxruntime-web's execution providers). */
export type Provider = 'webgpu' | 'wasm';

/** Scores are tags, not verdicts: the caller's policy decides what a flagged image becomes. */
export interface Result {
  /** P(safe), P(suggestive), P(explicit): three ordered scores that sum to 1. */
  safe: number;
  suggestive: number;
  explicit: number;
  /** The highest level whose "at least" score reaches its threshold (model.json). */
  label: Level;
  /** P(nsfw): the "at least" score of the deployment's positive level. */
  score: number;
  /** score >= the deployment's threshold. */
  nsfw: boolean;
  /** The model's two logits: at least suggestive, explicit. */
  logits: [number, number];
}

/** Pixels as a canvas gives them (ImageData or alike: RGBA, width * height * 4). */
export interface RGBAImage {
  data: Uint8Array | Uint8ClampedArray;
  width: number;
  height: number;
}

// The DOM's types where the project has them (lib "dom"), without requiring them in Node.
type DomImage = typeof globalThis extends {
  createImageBitmap(image: infer T, ...rest: never[]): unknown;
}
  ? T
  : never;
type DomWorker = typeof globalThis extends { Worker: abstract new (...args: never[]) => infer W }
  ? W
  : unknown;

/** What classify() takes: RGBA pixels (Node, e.g. decoded by pngjs or sharp) or, in a browser,
 * anything createImageBitmap takes (an <img> that has loaded, a Blob or File, a canvas...). */
export type ImageInput = RGBAImage | DomImage;

/** The preprocessing spec and the levels' thresholds (model.json). */
export interface ModelMeta {
  model_id: string | null;
  preprocess: {
    version: string;
    size: number;
    background: [number, number, number];
    max_scale: number;
    mean: [number, number, number];
    std: [number, number, number];
  };
  levels: Level[];
  thresholds: Partial<Record<Level, number>>;
  positive_level: number;
  threshold: number;
  snapshot_id: string | null;
}

export interface ClassifierOptions {
  /** The .onnx: a URL (default: the package's model.int8.onnx) or its bytes. */
  model?: string | URL | Uint8Array | ArrayBuffer;
  /** model.json: a URL (default: the package's) or the object. */
  meta?: string | URL | ModelMeta;
  /** A module like the bundle's model.js ({ meta, base64 }), instead of model and meta. */
  embedded?: { meta: ModelMeta; base64: string };
  /** 'auto' (default): WebGPU on a hardware adapter, else WASM; 'webgpu': WebGPU on any
   * adapter (a software one too), else WASM; 'wasm': WASM only. */
  provider?: 'auto' | Provider;
  /** false: run on the calling thread, not in a Web Worker (default: a worker where there is one). */
  worker?: boolean;
  /** WASM threads (default 1; more need cross-origin isolation in a browser). */
  threads?: number;
  /** Calls made within this many ms run as one batch (default 4). */
  batchWindowMs?: number;
  /** The largest batch (default 32). */
  maxBatch?: number;
  /** onnxruntime-web's session options (e.g. { logSeverityLevel: 0 }), but the providers. */
  sessionOptions?: Record<string, unknown>;
  /** An onnxruntime-web module to use on the calling thread, for every provider. */
  ort?: unknown;
  /** provider -> the onnxruntime-web module for it (default: this package's dependency). */
  loadOrt?: (provider: Provider) => Promise<unknown>;
  /** () => a module Worker running this package's worker.js (default: the package's). */
  createWorker?: () => DomWorker;
}

export declare class Classifier {
  /** model.json. */
  readonly meta: ModelMeta;
  /** 'worker' or 'main thread'. */
  readonly where: 'worker' | 'main thread';
  /** The execution provider the session runs on. */
  readonly provider: Provider;
  /** Why it is not WebGPU (no navigator.gpu, no or a software adapter, a WebGPU failure);
   * null when WebGPU runs or 'wasm' was asked for. */
  readonly fallback: string | null;
  /** Why the session is not in a Worker although the platform has them (the worker failed). */
  readonly workerError: string | undefined;
  /** How many runs served the calls so far. */
  readonly batches: number;
  /** The three scores, the label and the decision for one image. */
  classify(image: ImageInput): Promise<Result>;
  /** The model's input for an image: size * size * 4 RGBA bytes (for parity checks). */
  input(image: ImageInput): Promise<Uint8Array>;
  /** Releases the session (and ends the worker). */
  close(): Promise<void>;
}

/** A classifier on this package's model. */
export declare function createClassifier(options?: ClassifierOptions): Promise<Classifier>;

/** Scores on a classifier made on first use with the defaults (and kept). */
export declare function classify(image: ImageInput): Promise<Result>;
export declare function classify(images: ImageInput[]): Promise<Result[]>;

/** The two logits -> scores and label, as spritesafe/levels.py does. */
export declare function levels(logits: ArrayLike<number>, meta: ModelMeta): Result;

/** RGBA pixels -> the model's input (size * size * 4 bytes), as Python preprocesses. */
export declare function preprocess(
  pixels: Uint8Array | Uint8ClampedArray,
  width: number,
  height: number,
  spec: ModelMeta['preprocess'],
): Uint8Array;

export declare function sigmoid(logit: number): number;

/** Whether WebGPU can run here: { adapter } or { reason } why not. */
export declare function webgpuAdapter(
  provider?: 'auto' | Provider,
  gpu?: unknown,
): Promise<{ adapter?: unknown; reason?: string }>;

/** An onnxruntime-web session, WebGPU first, else WASM (what the worker runs). */
export declare function openSession(
  model: Uint8Array,
  settings?: {
    provider?: 'auto' | Provider;
    threads?: number;
    sessionOptions?: Record<string, unknown>;
  },
  loadOrt?: (provider: Provider) => Promise<unknown>,
): Promise<{ ort: unknown; session: unknown; provider: Provider; fallback: string | null }>;

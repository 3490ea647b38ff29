// The browser-path peer for bench/export_bench.py: NSFWJS MobileNetV2 (bundled in the npm
// package) on TensorFlow.js's WASM backend in Node, on the same PNG files; ms per image at
// batch 1 (median), decode excluded as for spritesafe (pngjs, then a tensor).
//   node peer_bench.mjs FILE.png...
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import * as nsfwjs from 'nsfwjs';
import pngjs from 'pngjs';

await tf.setBackend('wasm');
await tf.ready();
const model = await nsfwjs.load('MobileNetV2');
const images = process.argv.slice(2).map((f) => {
  const png = pngjs.PNG.sync.read(readFileSync(f));
  return tf.tidy(() => tf.tensor3d(new Uint8Array(png.data), [png.height, png.width, 4], 'int32')
    .slice([0, 0, 0], [png.height, png.width, 3]));
});
for (let i = 0; i < 5; i++) await model.classify(images[i % images.length]);
const times = [];
for (let i = 0; i < 40; i++) {
  const t = performance.now();
  await model.classify(images[i % images.length]);
  times.push(performance.now() - t);
}
times.sort((a, b) => a - b);
console.log(JSON.stringify({ ms_per_image: times[times.length >> 1], backend: tf.getBackend() }));

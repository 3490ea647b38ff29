// Node side of the parity test and the browser-path benchmark: runs the built bundle's
// spritesafe.js on onnxruntime-web (WASM, this thread) over PNG files.
//   node parity.mjs BUNDLE_DIR FILE.png...        -> JSON: inputs (base64 RGBA uint8), results
//   node parity.mjs --bench BUNDLE_DIR FILE.png   -> JSON: ms per image at batch 1
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as ort from 'onnxruntime-web';
import pngjs from 'pngjs';

const args = process.argv.slice(2);
const bench = args[0] === '--bench';
const [bundle, ...files] = bench ? args.slice(1) : args;
const { createClassifier } = await import(pathToFileURL(join(resolve(bundle), 'spritesafe.js')));
const clf = await createClassifier({
  model: new Uint8Array(readFileSync(join(bundle, 'model.int8.onnx'))),
  meta: JSON.parse(readFileSync(join(bundle, 'model.json'), 'utf8')),
  worker: false,
  ort,
  threads: Number(process.env.SPRITESAFE_WEB_THREADS ?? 1),
});
const images = files.map((f) => pngjs.PNG.sync.read(readFileSync(f)));

if (bench) {
  const repeats = 100;
  for (let i = 0; i < 10; i++) await clf.classify(images[i % images.length]);
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const t = performance.now();
    await clf.classify(images[i % images.length]);
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({ ms_per_image: times[repeats >> 1], where: clf.where }));
} else {
  const inputs = await Promise.all(images.map((img) => clf.input(img)));
  const results = await Promise.all(images.map((img) => clf.classify(img)));
  console.log(JSON.stringify({
    where: clf.where,
    batches: clf.batches,
    results: files.map((name, i) => ({
      name,
      input: Buffer.from(inputs[i].buffer).toString('base64'),
      ...results[i],
    })),
  }));
}

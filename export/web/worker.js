// The plain bundle's Web Worker (spritesafe.js starts it): one onnxruntime-web session from
// ./ort/, batches in, logits out. The npm package has its own (npm/worker.js).
import { bundledOrt, serveWorker } from './spritesafe.js';

serveWorker(self, bundledOrt);

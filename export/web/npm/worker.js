// The npm package's Web Worker (index.js starts it): one onnxruntime-web session from the
// package's dependency, batches in, logits out.
import { serveWorker } from './spritesafe.js';
import { loadOrt } from './runtime.js';

serveWorker(self, loadOrt);

// The npm package's entry (`spritesafe export --npm`): spritesafe.js with this package's model,
// worker and runtime. The literal `new URL('./…', import.meta.url)` and `new Worker(new URL(…))`
// forms are the ones bundlers (Vite, webpack 5, Parcel) follow to emit the files and the
// worker; Node reads the model from the package folder. onnxruntime-web comes from the
// package's dependency (runtime.js), never from a copy in this package.
import { withDefaults } from './spritesafe.js';
import { loadOrt } from './runtime.js';

export {
  Classifier,
  levels,
  openSession,
  preprocess,
  sigmoid,
  webgpuAdapter,
} from './spritesafe.js';

/** createClassifier(options) and classify(image or images) on a shared classifier. */
export const { createClassifier, classify } = withDefaults({
  model: new URL('./model.int8.onnx', import.meta.url),
  meta: new URL('./model.json', import.meta.url),
  loadOrt,
  createWorker: () => new Worker(new URL('./worker.js', import.meta.url), { type: 'module' }),
});

// The Web Worker side of spritesafe.js: one onnxruntime-web session, batches in, logits out.
import * as ort from './ort/ort.wasm.min.mjs';

let session = null;

self.onmessage = async ({ data }) => {
  try {
    if (data.type === 'load') {
      ort.env.wasm.numThreads = data.threads;
      session = await ort.InferenceSession.create(data.model, { executionProviders: ['wasm'] });
      self.postMessage({ id: data.id, logits: null });
    } else {
      const tensor = new ort.Tensor('uint8', data.inputs, [data.n, data.size, data.size, 4]);
      const out = await session.run({ pixels: tensor });
      self.postMessage({ id: data.id, logits: out.logits.data }); // (n, 2), flat
    }
  } catch (error) {
    self.postMessage({ id: data.id, error: String(error) });
  }
};

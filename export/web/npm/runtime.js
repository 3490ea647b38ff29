// Where the npm package's onnxruntime-web comes from: its dependency, by name, one build per
// provider. The WebGPU build (its WASM is about twice the plain one's) is imported only when a
// WebGPU adapter is there, so a page without one never downloads it.
export function loadOrt(provider) {
  return provider === 'webgpu' ? import('onnxruntime-web/webgpu') : import('onnxruntime-web/wasm');
}

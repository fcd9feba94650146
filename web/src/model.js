// The .tflite model in the page: LiteRT.js on its WebAssembly CPU backend (XNNPACK), the same file and the
// same kernels as the Python edge's LiteRT, so the vectors are the same.
//
// The Wasm CPU accelerator is asked for explicitly: left to itself LiteRT.js picks WebGPU where an adapter
// exists, whose float16 shaders change the numbers. Every Tensor is deleted after use (nothing is garbage
// collected in the Wasm heap). LiteRT loads once per JavaScript realm: each worker has its own.

import {Tensor, getGlobalLiteRt, loadAndCompile, loadLiteRt} from '@litertjs/core';

export class Model {
  static async open(wasmDir, modelBytes, {inputSize, outputDim}) {
    // In a worker, Emscripten looks for the .wasm next to the worker's script; say where it is.
    self.Module = {locateFile: (file) => new URL(file, wasmDir).href};
    await loadLiteRt(wasmDir);
    const compiled = await loadAndCompile(new Uint8Array(modelBytes), {accelerator: 'wasm', cpuOptions: {numThreads: 1}});
    const input = compiled.getInputDetails()[0];
    const output = compiled.getOutputDetails()[0];
    const want = [1, inputSize, inputSize, 3].join(',');
    if (Array.from(input.shape).join(',') !== want || input.dtype !== 'float32') {
      compiled.delete();
      throw new Error(`the model's input is [${Array.from(input.shape)}] ${input.dtype}; its card says [${want}] float32`);
    }
    if (Array.from(output.shape).join(',') !== `1,${outputDim}`) {
      compiled.delete();
      throw new Error(`the model's output is [${Array.from(output.shape)}]; the contract needs [1,${outputDim}]`);
    }
    return new Model(compiled, inputSize, outputDim);
  }

  constructor(compiled, inputSize, outputDim) {
    this.compiled = compiled;
    this.inputSize = inputSize;
    this.outputDim = outputDim;
  }

  /** One preprocessed image (Float32Array of size*size*3) -> its Float32Array vector. */
  async features(x) {
    const input = new Tensor(x, [1, this.inputSize, this.inputSize, 3]);
    let outputs = [];
    try {
      outputs = await this.compiled.run(input);
      const host = await outputs[0].copyTo('wasm');
      try {
        return Float32Array.from(host.toTypedArray());
      } finally {
        host.delete();
      }
    } finally {
      input.delete();
      for (const t of outputs) t.delete();
    }
  }

  /** Which of LiteRT.js's Wasm builds this browser loaded: 'relaxed-simd', or 'compat' (no relaxed SIMD: WebKit,
   *  whose vectors then differ from the Python edge's by float rounding, cos >= 0.99999999), seen from the file
   *  fetched. */
  static wasmBuild() {
    const names = performance.getEntriesByType('resource').map((e) => e.name);
    if (names.some((n) => n.endsWith('litert_wasm_compat_internal.wasm'))) return 'compat';
    if (names.some((n) => n.endsWith('litert_wasm_internal.wasm'))) return 'relaxed-simd';
    return 'unknown';
  }

  /** Bytes of the Wasm heap: flat over many photos when every tensor is freed. */
  static heapBytes() {
    return getGlobalLiteRt().liteRtWasm.HEAPU8.length;
  }
}

// The .tflite model in the page: LiteRT.js on its WebAssembly CPU backend (XNNPACK), the same file and the
// same kernels as the Python edge's LiteRT, so the vectors are the same.
//
// The Wasm CPU accelerator is asked for explicitly: left to itself LiteRT.js picks WebGPU where an adapter
// exists, whose float16 shaders change the numbers. Every Tensor is deleted after use (nothing is garbage
// collected in the Wasm heap). LiteRT loads once per JavaScript realm: each worker has its own.

import {Tensor, getGlobalLiteRt, loadAndCompile, loadLiteRt} from '@litertjs/core';

export class Model {
  /** LiteRT.js on `wasmModule` (the WebAssembly.Module the page compiled: web/src/wasm.js), and the model. This
   *  worker's script begins with that build's Emscripten loader (web/build.mjs), so nothing is fetched here. */
  static async open(wasmModule, modelBytes, {inputSize, outputDim}) {
    self.Module = {
      instantiateWasm: (imports, receive) => {
        WebAssembly.instantiate(wasmModule, imports).then((instance) => receive(instance, wasmModule));
        return {};
      },
    };
    const importScripts = self.importScripts;
    self.importScripts = () => {};      // LiteRT.js would import the loader: it is at the top of this file already
    try {
      await loadLiteRt('litert-loader.js');
    } finally {
      self.importScripts = importScripts;
    }
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

  /** Bytes of the Wasm heap: flat over many photos when every tensor is freed. */
  static heapBytes() {
    return getGlobalLiteRt().liteRtWasm.HEAPU8.length;
  }
}

// Which of LiteRT.js's Wasm builds this browser runs, fetched and compiled once by the page, then handed to the
// workers (a compiled WebAssembly.Module crosses postMessage): only the build that runs is downloaded, it is
// compiled once for every worker, and the workers fetch nothing themselves, so the service worker serves it offline
// in every engine (WebKit's service worker does not see a worker's own requests).

// A module using a relaxed-SIMD instruction (LiteRT.js's own check): it validates only where relaxed SIMD runs.
const RELAXED_SIMD = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 15, 1, 13, 0,
                                     65, 1, 253, 15, 65, 2, 253, 15, 253, 128, 2, 11]);

export const BUILDS = {
  'relaxed-simd': {worker: 'worker-simd.js', wasm: 'wasm/litert_wasm_internal.wasm'},
  compat: {worker: 'worker-compat.js', wasm: 'wasm/litert_wasm_compat_internal.wasm'},
};

/** 'relaxed-simd' where this browser validates relaxed SIMD, else 'compat' (what LiteRT.js itself would choose). */
export function wasmBuild() {
  try {
    return WebAssembly.validate(RELAXED_SIMD) ? 'relaxed-simd' : 'compat';
  } catch {
    return 'compat';
  }
}

export const JPEG_WASM = 'wasm/jpeg-turbo.wasm';     // libjpeg-turbo (web/src/jpeg.js)

async function compile(url) {
  const t0 = performance.now();
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const bytes = await response.arrayBuffer();
  const t1 = performance.now();
  return {module: await WebAssembly.compile(bytes), bytes: bytes.byteLength, fetchMs: t1 - t0,
          compileMs: performance.now() - t1};
}

/** {build, worker, module, jpeg, bytes, fetchMs, compileMs}: the build's Wasm and libjpeg-turbo's, fetched (through the
 *  service worker) and compiled (LiteRT's times). A JPEG decoder that cannot be had leaves `jpeg` null (the
 *  browser's decoders then). */
export async function loadWasm(build = wasmBuild()) {
  const {worker, wasm} = BUILDS[build];
  const [litert, jpeg] = await Promise.all([compile(wasm), compile(JPEG_WASM).catch(() => null)]);
  return {build, worker, module: litert.module, jpeg: jpeg && jpeg.module, bytes: litert.bytes + (jpeg ? jpeg.bytes : 0),
          fetchMs: litert.fetchMs, compileMs: litert.compileMs};
}

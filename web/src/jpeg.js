// JPEG decoded by libjpeg-turbo compiled to WebAssembly (@cwasm/jpeg-turbo: its TurboJPEG API), in every engine:
// the library Pillow decodes JPEG with, so the DCT-scaled draft (1/2, 1/4, 1/8) and the full decode come out as
// Pillow's, bit for bit (measured on 12 MP photos, baseline and progressive, 4:2:0, 4:2:2, 4:4:4 and grey, every
// scale; the probes check it again in each browser). A browser without an exact scaled decoder of its own (WebKit has
// no ImageDecoder; Firefox's is close, not equal) no longer decodes a 12 MP photo whole to average it in blocks.
//
// The module is compiled once by the page (web/src/wasm.js) and instantiated here, in the worker; an instance that
// met an error (libjpeg's longjmp) is dropped, and the next photo gets a fresh one.

const TJPF_RGB = 0;

function imports() {
  const refuse = (name) => () => { throw new Error(`libjpeg-turbo called ${name}`); };
  return {
    env: {setjmp: () => 0, longjmp: () => { throw new Error('the JPEG data is damaged or not supported'); }},
    wasi_snapshot_preview1: {environ_sizes_get: () => 0, environ_get: refuse('environ_get'), proc_exit: refuse('proc_exit'),
                             fd_close: refuse('fd_close'), fd_seek: refuse('fd_seek'), fd_write: () => 0},
  };
}

export class TurboJpeg {
  constructor(module) {
    this.module = module;
    this.instance = null;
  }

  /** `bytes` (a JPEG) decoded at 1/`scale` (1, 2, 4 or 8; sizes rounded up as libjpeg's): {rgb, width, height}.
   *  Throws with the reason when libjpeg-turbo refuses the data (damaged, truncated, a colour space it does not
   *  turn into RGB, such as CMYK). */
  decode(bytes, scale = 1) {
    if (!this.instance) this.instance = new WebAssembly.Instance(this.module, imports());
    const e = this.instance.exports;
    let input = 0, meta = 0, out = 0, handle = 0;
    try {
      input = e.malloc(bytes.length);
      new Uint8Array(e.memory.buffer, input, bytes.length).set(bytes);
      handle = e.tjInitDecompress();
      meta = e.malloc(16);
      if (!handle || !input || !meta) throw new Error('out of memory');
      if (e.tjDecompressHeader3(handle, input, bytes.length, meta, meta + 4, meta + 8, meta + 12) !== 0) {
        throw new Error('not a JPEG libjpeg-turbo reads');
      }
      const [w, h] = new Int32Array(e.memory.buffer, meta, 2);
      const width = Math.ceil(w / scale);
      const height = Math.ceil(h / scale);
      out = e.malloc(width * height * 3);
      if (!out) throw new Error('out of memory');
      // Asked for exactly the draft's size, TurboJPEG decodes with that scaling factor (libjpeg's scaled IDCT).
      if (e.tjDecompress2(handle, input, bytes.length, out, width, width * 3, height, TJPF_RGB, 0) !== 0) {
        throw new Error('damaged or truncated JPEG data');
      }
      return {rgb: new Uint8Array(e.memory.buffer, out, width * height * 3).slice(), width, height};
    } catch (err) {
      this.instance = null;     // libjpeg's state after a longjmp is not to be trusted: a fresh instance next time
      throw err;
    } finally {
      if (this.instance) {
        if (input) e.free(input);
        if (meta) e.free(meta);
        if (out) e.free(out);
        if (handle) e.tjDestroy(handle);
      }
    }
  }
}

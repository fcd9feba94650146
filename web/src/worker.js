// One worker = one LiteRT instance: bytes -> sha256 image id -> preprocess -> vector, for one photo at a
// time. The page runs a few of these (one per core, as the Python edge runs one interpreter per thread).

import {UNKNOWN_CAPS, probeDecoders} from './decode.js';
import {Rejected} from './imageinfo.js';
import {Model} from './model.js';
import {preprocess} from './preprocess.js';
import {TurboJpeg} from './jpeg.js';
import {sha256Hex} from './sha256.js';

let model = null;
let jpeg = null;            // libjpeg-turbo in Wasm (jpeg.js), when the page could load it
let settings = null;
let caps = UNKNOWN_CAPS;    // what this browser's decoders do (probeDecoders, at start)

async function vectorize({id, bytes}) {
  const data = new Uint8Array(bytes);
  const t0 = performance.now();
  const imageId = await sha256Hex(data);
  const t1 = performance.now();
  try {
    const pre = await preprocess(data, settings.inputSize, {...settings, caps, jpeg});
    const t2 = performance.now();
    const features = await model.features(pre.input);
    const t3 = performance.now();
    return {id, imageId, width: pre.width, height: pre.height, approximate: pre.approximate, features,
            ms: {sha256: t1 - t0, decode: pre.ms.decode, resize: pre.ms.resize, invoke: t3 - t2}};
  } catch (err) {
    if (err instanceof Rejected) return {id, imageId, reason: err.message};
    return {id, imageId, reason: `cannot vectorize: ${err && err.message ? err.message : err}`};
  }
}

self.onmessage = async (event) => {
  const msg = event.data;
  try {
    if (msg.type === 'init') {
      settings = msg.settings;
      jpeg = msg.jpegModule ? new TurboJpeg(msg.jpegModule) : null;
      const t0 = performance.now();
      let probeMs = 0;
      const probing = msg.probes ? probeDecoders(msg.probes, {draftFactor: settings.draftFactor, jpeg}).then((c) => {
        probeMs = performance.now() - t0;
        return c;
      }) : Promise.resolve(UNKNOWN_CAPS);
      [caps, model] = await Promise.all([probing, Model.open(msg.wasmModule, msg.modelBytes, settings)]);
      self.postMessage({type: 'ready', ms: performance.now() - t0, probeMs, caps, wasm: msg.wasmBuild});
    } else if (msg.type === 'caps') {         // what the first worker's probes learned
      caps = msg.caps;
    } else if (msg.type === 'vectorize') {
      const out = await vectorize(msg);
      self.postMessage({type: 'vector', ...out}, out.features ? [out.features.buffer] : []);
    } else if (msg.type === 'preprocess') {    // the model input alone: the tests compare it with Pillow's
      try {
        const pre = await preprocess(new Uint8Array(msg.bytes), settings.inputSize, {...settings, caps, jpeg, ...msg.options});
        self.postMessage({type: 'input', id: msg.id, ...pre}, [pre.input.buffer]);
      } catch (err) {
        self.postMessage({type: 'input', id: msg.id, reason: err.message});
      }
    } else if (msg.type === 'stats') {
      self.postMessage({type: 'stats', id: msg.id, heapBytes: Model.heapBytes()});
    }
  } catch (err) {
    self.postMessage({type: 'error', id: msg.id, message: err && err.message ? err.message : String(err)});
  }
};

// Errors nobody awaited: sent to the page, which keeps them where a test can read them (fruits.errors).
self.addEventListener('unhandledrejection', (e) => {
  self.postMessage({type: 'error', message: `worker: ${(e.reason && e.reason.message) || e.reason}`});
});

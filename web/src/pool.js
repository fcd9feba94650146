// A few workers, each with its own LiteRT instance, vectorizing photos in parallel (one per core, capped):
// the page's counterpart of the Python edge's worker threads. Photos go in order, at most two per worker in
// flight, so memory stays flat however many are picked.

export class WorkerPool {
  /** Workers started with the model; `probes` (probes.json) tell each what its browser's decoders do; `onError`
   *  gets the workers' errors that no call was waiting for. */
  static async start({workers, wasm, modelBytes, settings, probes, onError = () => {}}) {
    const pool = new WorkerPool();
    const started = performance.now();
    // The first worker probes the browser's decoders (the same in every worker of a page); the others learn it after.
    const ready = await Promise.all(Array.from({length: workers}, (_, i) => new Promise((resolve, reject) => {
      const w = new Worker(wasm.worker);
      w.onmessage = (e) => {
        if (e.data.type === 'ready') resolve({w, info: e.data});
        else if (e.data.type === 'error') reject(new Error(e.data.message));
      };
      w.onerror = (e) => reject(new Error(e.message || 'the model worker failed to start'));
      w.postMessage({type: 'init', wasmModule: wasm.module, wasmBuild: wasm.build, jpegModule: wasm.jpeg,
                     modelBytes: modelBytes.slice(0),
                     settings, probes: i === 0 ? probes : null});
    })));
    pool.workers = ready.map((r) => r.w);
    pool.engine = {caps: ready[0].info.caps, wasm: ready[0].info.wasm, probeMs: ready[0].info.probeMs};
    for (const w of pool.workers.slice(1)) w.postMessage({type: 'caps', caps: pool.engine.caps});
    pool.startMs = performance.now() - started;
    for (const w of pool.workers) {
      w.pending = new Map();
      w.onmessage = (e) => {
        const cb = w.pending.get(e.data.id);
        if (cb) { w.pending.delete(e.data.id); cb(e.data); } else if (e.data.type === 'error') onError(e.data.message);
      };
      w.onerror = (e) => {   // a crashed worker: what it was doing fails with the reason, nothing waits forever
        const why = `the model worker failed: ${e.message || 'no message'}`;
        onError(why);
        for (const cb of w.pending.values()) cb({reason: why});
        w.pending.clear();
      };
    }
    pool.nextId = 0;
    return pool;
  }

  call(worker, message, transfer = []) {
    const id = ++this.nextId;
    return new Promise((resolve) => {
      worker.pending.set(id, resolve);
      worker.postMessage({...message, id}, transfer);
    });
  }

  /**
   * Vectorize items ({read: () => Promise<ArrayBuffer>, ...}) in order; `onResult(item, result, i)` as each
   * finishes (results: {imageId, width, height, features, approximate} or {imageId, reason}).
   */
  async run(items, onResult) {
    let next = 0;
    const perWorker = 2;
    const lane = async (worker) => {
      while (next < items.length) {
        const i = next++;
        const item = items[i];
        let result;
        try {
          const bytes = await item.read();
          result = await this.call(worker, {type: 'vectorize', bytes}, [bytes]);
        } catch (err) {
          result = {reason: `cannot read: ${err && err.message ? err.message : err}`};
        }
        onResult(item, result, i);
      }
    };
    await Promise.all(this.workers.flatMap((w) => Array.from({length: perWorker}, () => lane(w))));
  }

  /** Each worker's Wasm heap size (bytes). */
  async heapBytes() {
    return Promise.all(this.workers.map((w) => this.call(w, {type: 'stats'}).then((r) => r.heapBytes)));
  }
}

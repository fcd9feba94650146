// The page: take or pick photos -> vectors in the page (LiteRT.js workers) -> the fruit, identified from the
// published projection -> the vectors (never the photos) queued and uploaded as contract Parquet files with
// the device's own Cognito credentials.

import {Bucket, explain} from './bucket.js';
import {loadConfig} from './config.js';
import {loadContract, uploadDay} from './contract.js';
import {identifyVector, Projection, ReferenceIndex, UNKNOWN} from './identify.js';
import {LabelRules} from './labels.js';
import {DeviceIdentity} from './identity.js';
import {readVectors, writeVectors} from './parquet.js';
import {WorkerPool} from './pool.js';
import {loadWasm} from './wasm.js';
import {loadPublished} from './published.js';
import {EntryRefused, UploadQueue} from './queue.js';
import {HAS_WEBCRYPTO, sha256Hex} from './sha256.js';
import * as storage from './storage.js';
import {MESSAGES, t} from './i18n.js';
import * as ui from './ui.js';

const MAX_WORKERS = 4;

class App {
  constructor() {
    this.state = 'starting';
    this.timings = {};
    this.lastBatch = null;
    this.current = null;   // the fruit in front of the person: {rows, answer, held, chosen} (ui.renderAnswer)
    this.published = null;
    this.problems = [];
    this.errors = [];      // every error the page and its workers met, kept where a test (and a person) can read it
    this.engine = null;    // what this browser's decoders and Wasm do (the probes at start)
  }

  error(message) {
    if (this.errors.length < 200) this.errors.push(String(message));
  }

  async start() {
    ui.status(t('starting'));
    await this.serviceWorker();
    const contract = await loadContract();
    const config = await loadConfig(contract.config_schema);
    this.config = config;
    this.contract = contract;
    this.card = contract.model.card;
    this.root = (config.prefix || '').replace(/^\/+|\/+$/g, '');
    ui.modelLine(this.card, contract.model.file);
    await this.startModel();
    await this.startCloud();
    this.state = 'ready';
    ui.ready(this);
  }

  /** The service worker caches the app, the model and the Wasm files: a second visit downloads none. */
  async serviceWorker() {
    if (!('serviceWorker' in navigator) || !window.isSecureContext) {
      this.problems.push({key: 'noOfflineCache'});
      return;
    }
    try {
      await navigator.serviceWorker.register('sw.js');
      if (!navigator.serviceWorker.controller) {
        // First visit: let it take control before the big downloads, so that they go through its cache.
        await Promise.race([new Promise((r) => navigator.serviceWorker.addEventListener('controllerchange', r, {once: true})),
                            new Promise((r) => setTimeout(r, 3000))]);
      }
    } catch (err) {
      this.problems.push({key: 'noOfflineCacheWhy', params: {reason: err.message}});
    }
  }

  async startModel() {
    const t0 = performance.now();
    const wasmLoading = loadWasm();       // the one LiteRT.js build this browser runs, while the model downloads
    const response = await fetch(this.contract.model.file);
    if (!response.ok) throw new Error(`the model ${this.contract.model.file}: HTTP ${response.status}`);
    const bytes = await response.arrayBuffer();
    const fetchMs = performance.now() - t0;
    const tSha = performance.now();
    const sha = await sha256Hex(new Uint8Array(bytes));
    this.timings.modelShaMs = performance.now() - tSha;
    if (sha !== this.card.sha256) {
      throw new Error(`the model file's sha256 is ${sha.slice(0, 12)}…, its card says ${this.card.sha256.slice(0, 12)}…`);
    }
    this.modelSha256 = sha;
    const workers = Math.max(1, Math.min(this.config.workers || navigator.hardwareConcurrency || 2, MAX_WORKERS));
    const probes = await fetch('probes.json').then((r) => (r.ok ? r.json() : null)).catch(() => null);
    if (!probes) this.problems.push({key: 'probesMissing'});
    const wasm = await wasmLoading;
    this.timings.wasmFetchMs = wasm.fetchMs;
    this.timings.wasmCompileMs = wasm.compileMs;
    const tWorkers = performance.now();
    this.pool = await WorkerPool.start({
      workers, wasm, modelBytes: bytes, probes,
      onError: (m) => this.error(m),
      settings: {inputSize: this.card.input_size, outputDim: this.contract.feature_dim,
                 draftFactor: this.contract.preprocessing.draft_factor, maxPixels: this.contract.preprocessing.max_pixels}});
    this.engine = this.pool.engine;
    this.timings.workersMs = performance.now() - tWorkers;
    this.timings.modelFetchMs = fetchMs;
    this.timings.modelStartMs = performance.now() - t0;
    this.timings.workers = workers;
  }

  /** Identity, bucket, queue and published projection: whatever the config names. */
  async startCloud() {
    const c = this.config;
    if (c.identityPoolId) {
      this.identity = new DeviceIdentity({poolId: c.identityPoolId, region: c.region, endpoint: c.endpoint});
      try {
        this.clientId = await this.identity.identityId();
      } catch (err) {
        this.problems.push({key: 'noIdentity', params: {reason: err.message}});
      }
    }
    if (!this.clientId) {
      this.clientId = (await storage.get('kv', 'local-client-id')) || `web-${crypto.getRandomValues(new Uint32Array(2)).join('')}`;
      await storage.put('kv', this.clientId, 'local-client-id');
    }
    this.contract.checkClientId(this.clientId);
    if (c.bucket && this.identity) {
      this.bucket = new Bucket({bucket: c.bucket, region: c.region, endpoint: c.endpoint,
                                credentials: this.identity.provider(), onExpired: () => this.identity.expire()});
      this.scope = `${c.endpoint || 'aws'}|${c.bucket}|${this.root}|vectors|${this.modelSha256}`;
      this.queue = new UploadQueue(this.bucket, {validate: (e) => this.validateEntry(e), rekey: (e) => this.rekeyEntry(e)});
      for (const event of ['change', 'uploaded', 'aside']) this.queue.addEventListener(event, () => ui.queueLine(this));
      window.addEventListener('online', () => this.queue.drain());
      this.publishedReady = this.refreshPublished();
      this.queue.drain();
    }
  }

  async refreshPublished() {
    try {
      const t0 = performance.now();
      this.published = await loadPublished(this.bucket, this.contract, this.root, {modelSha256: this.modelSha256});
      this.timings.publishedMs = performance.now() - t0;
    } catch (err) {
      this.published = {missing: err.$metadata || err.name === 'NetworkDown' ? explain(err, this.config.bucket) : err.message};
    }
    ui.publishedLine(this);
    document.body.dataset.published = this.published.missing ? 'missing' : this.published.projection.projectionId;
  }

  /**
   * Vectorize picked files, identify them, queue their vectors. `files`: File objects; from a folder pick,
   * their webkitRelativePath gives the source and label as find_photos does.
   */
  async handleFiles(files, {label = null} = {}) {
    await this.release();         // the photo waiting for the person's choice goes as it is
    const batch = await this.vectorizeFiles(files, {label});
    this.lastBatch = batch;
    this.current = null;
    if (batch.rows.length) {
      const first = batch.rows[0];
      const a = first.answer;
      // A photo taken (one at a time) that the page is not sure of waits for the person (a tap on a candidate names
      // it, "None of these" does not) before its vector goes; one named with confidence, or named by the person
      // already, or picked with others (a gallery, a folder: nobody answers for each), goes at once.
      const held = Boolean(this.queue && batch.rows.length === 1 && a && a.answer !== a.label && first.label === null);
      this.current = {rows: [first], answer: a, held};
    }
    ui.results(this, batch);
    try {
      if (this.queue) await this.contribute(batch.rows.filter((r) => !(this.current?.held && this.current.rows.includes(r))), batch);
    } finally {
      ui.batchDone(batch);
    }
    return batch;
  }

  /** The person names the photo in front of them (a candidate's label) or says it is none of them (null): its
   *  vectors go, with that label. */
  async choose(label) {
    const cur = this.current;
    if (!cur || cur.chosen !== undefined) return;
    if (label !== null) {
      const c = (this.labelRules || new LabelRules(this.contract.labels)).check(label);
      label = c.problem ? null : c.label;
    }
    cur.chosen = label;
    for (const row of cur.rows) row.label = label;
    const rows = cur.held ? cur.rows : [];
    cur.held = false;
    ui.renderAnswer(this);
    if (this.queue && rows.length) await this.contribute(rows);
    cur.queued = true;     // (scripts wait for this mark)
  }

  /** The photo waiting for the person's choice goes without a label (a new pick, the page hidden). */
  async release() {
    const cur = this.current;
    if (!cur || !cur.held) return;
    cur.held = false;
    if (this.queue) await this.contribute(cur.rows);
  }

  /** Another photo of the fruit in front of the person: vectorized, and the answer made from all its photos. */
  async addPhoto(file) {
    const cur = this.current;
    if (!cur) return this.handleFiles([file]);
    const batch = await this.vectorizeFiles([file], {label: cur.rows[0].label});
    const row = batch.rows[0];
    if (!row) {
      ui.status(t('error', {reason: batch.rejects[0] ? batch.rejects[0].reason : 'not read'}), 'error');
      return batch;
    }
    if (cur.chosen !== undefined) row.label = cur.chosen;
    cur.rows.push(row);
    const p = this.published;
    if (p && p.projection) cur.answer = p.index.answerPhotos(cur.rows.map((r) => p.projection.project(r.features)));
    if (cur.held && cur.answer && cur.answer.answer === cur.answer.label) {   // now named with confidence: they go
      cur.held = false;
      if (this.queue) await this.contribute(cur.rows);
    } else if (!cur.held && this.queue) {
      await this.contribute([row]);
    }
    ui.renderAnswer(this);
    return batch;
  }

  /** Picked files -> vectors in the workers, identified: {rows, rejects, skipped, ...}; nothing shown or queued. */
  async vectorizeFiles(files, {label = null} = {}) {
    const batch = {rows: [], results: [], rejects: [], skipped: [], duplicates: 0, queuedRows: 0, alreadySent: 0,
                   approximate: 0, approximateRows: [], started: performance.now()};
    const items = [];
    // Labels follow contract/labels.py's rules (web/src/labels.js): canonical, or refused with the reason, shown;
    // a refused label's photos are still vectorized and sent, without a label.
    this.labelRules = this.labelRules || new LabelRules(this.contract.labels);
    const checked = new Map();
    batch.labelsRefused = [];
    for (const file of files) {
      const rel = file.webkitRelativePath ? file.webkitRelativePath.split('/').slice(1).join('/') : file.name;
      const verdict = this.contract.fileVerdict(file.name, file.size);
      if (verdict) {
        (verdict.rejected ? batch.rejects : batch.skipped).push({source: rel, reason: verdict.reason});
        continue;
      }
      const raw = file.webkitRelativePath ? this.contract.labelFromPath(rel) : label;
      if (!checked.has(raw)) {
        const c = this.labelRules.check(raw);
        checked.set(raw, c);
        if (c.problem) batch.labelsRefused.push({label: raw, problem: c.problem});
      }
      items.push({file, source: rel, label: checked.get(raw).label, read: () => file.arrayBuffer()});
    }
    items.sort((a, b) => (a.source < b.source ? -1 : a.source > b.source ? 1 : 0));   // as find_photos walks
    ui.progress(0, items.length, batch);
    const results = new Array(items.length);
    let done = 0;
    await this.pool.run(items, (item, result, i) => {
      results[i] = result;
      done += 1;
      ui.progress(done, items.length, batch);
    });
    await this.publishedReady;   // a photo picked while the projection loads is identified all the same
    const seen = new Set();
    const now = Date.now();
    items.forEach((item, i) => {
      const r = results[i];
      if (r.reason) {
        batch.rejects.push({source: item.source, reason: r.reason});
        return;
      }
      if (seen.has(r.imageId)) { batch.duplicates += 1; return; }
      seen.add(r.imageId);
      if (r.approximate) {
        batch.approximate += 1;
        batch.approximateRows.push({source: item.source, reason: r.approximate});
      }
      const row = {imageId: r.imageId, label: item.label, source: item.source, width: r.width, height: r.height,
                   features: r.features, vectorizedAt: now, file: item.file, approximate: r.approximate || null};
      if (this.published?.projection) {
        row.answer = identifyVector(r.features, this.published.projection, this.published.index);
      }
      batch.rows.push(row);
    });
    batch.seconds = (performance.now() - batch.started) / 1000;
    batch.msPerPhoto = medians(results.filter((r) => r && r.ms).map((r) => r.ms));
    batch.imagesPerS = items.length / Math.max(batch.seconds, 1e-9);
    return batch;
  }

  /** New rows (not confirmed, not already waiting) -> Parquet files of at most rows_per_object rows -> queue. */
  async contribute(rowsToSend, batch = null) {
    const ids = rowsToSend.map((r) => r.imageId);
    const known = await storage.knownIds(this.scope, ids);
    for (const entry of await storage.all('queue')) {
      if (entry.state !== 'aside' && Array.isArray(entry.imageIds)) for (const id of entry.imageIds) known.add(id);
    }
    const fresh = rowsToSend.filter((r) => !known.has(r.imageId)).sort((a, b) => (a.imageId < b.imageId ? -1 : 1));
    if (batch) batch.alreadySent = rowsToSend.length - fresh.length;
    const per = this.contract.rows_per_object;
    for (let start = 0; start < fresh.length; start += per) {
      const rows = fresh.slice(start, start + per);
      const bytes = await this.parquet(rows);
      const key = await this.contract.vectorsObjectKey(this.root, this.modelSha256, this.clientId, rows.map((r) => r.imageId));
      await this.queue.enqueue({key, bytes, rows: rows.length, imageIds: rows.map((r) => r.imageId), scope: this.scope});
      if (batch) batch.queuedRows += rows.length;
    }
    ui.queueLine(this);
    await this.queue.drain();
  }

  /** The parts of a vectors key of this page's root: {sha, client, day, content}, or null for any other key. */
  parseKey(key) {
    if (!this.keyPattern) {
      const marks = {sha256: '\u0001', client: '\u0002', content: '\u0003', day: '\u0004'};
      const template = this.contract.key('vectors', this.root, marks).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      const parts = [];    // the marks in the order the template has them
      const pattern = template.replace(/[\u0001-\u0004]/g, (mark) => {
        parts.push(mark);
        return {'\u0001': '([0-9a-f]{64})', '\u0002': '([A-Za-z0-9._:-]{1,128})', '\u0003': '([0-9a-f]{32})',
                '\u0004': '(\\d{4}-\\d{2}-\\d{2})'}[mark];
      });
      this.keyPattern = new RegExp('^' + pattern + '$');
      this.keyParts = parts.map((mark) => ({'\u0001': 'sha', '\u0002': 'client', '\u0003': 'content', '\u0004': 'day'})[mark]);
    }
    const m = typeof key === 'string' ? this.keyPattern.exec(key) : null;
    return m ? Object.fromEntries(this.keyParts.map((name, i) => [name, m[i + 1]])) : null;
  }

  /** An entry that must not be sent throws EntryRefused (set aside): its key, ids and Parquet rows must agree. */
  async validateEntry(entry) {
    const key = this.parseKey(entry.key);
    if (!key) throw new EntryRefused(`not a key of this page's vectors: ${String(entry.key).slice(0, 80)}`);
    const ids = entry.imageIds;
    if (!Array.isArray(ids) || !ids.length || !ids.every((i) => typeof i === 'string' && /^[0-9a-f]{64}$/.test(i))) {
      throw new EntryRefused(`${entry.key}: no list of image ids`);
    }
    if (key.content !== await this.contract.contentKey(key.sha, ids)) {
      throw new EntryRefused(`${entry.key}: the key does not name these image ids`);
    }
    const bytes = entry.bytes instanceof Uint8Array ? entry.bytes : (entry.bytes instanceof ArrayBuffer ? new Uint8Array(entry.bytes) : null);
    const magic = (at) => bytes[at] === 0x50 && bytes[at + 1] === 0x41 && bytes[at + 2] === 0x52 && bytes[at + 3] === 0x31;
    if (!bytes || bytes.length < 12 || !magic(0) || !magic(bytes.length - 4)) {
      throw new EntryRefused(`${entry.key}: not a Parquet file (${bytes ? bytes.length : 0} bytes)`);
    }
    let rows;
    try {
      ({rows} = await readVectors(bytes));
    } catch (err) {
      throw new EntryRefused(`${entry.key}: not a readable Parquet file (${err.message})`);
    }
    const want = new Set(ids);
    if (rows.length !== ids.length || !rows.every((r) => want.has(r.imageId))) {
      throw new EntryRefused(`${entry.key}: its rows are not its ${ids.length} image ids`);
    }
    const bad = rows.find((r) => r.clientId !== key.client || r.modelSha256 !== key.sha ||
                                !r.features || r.features.length !== this.contract.feature_dim);
    if (bad) throw new EntryRefused(`${entry.key}: row ${bad.imageId.slice(0, 12)}… is not of this key's device and model`);
    // What the model can produce and nothing else (its card's output range): the cloud refuses anything else.
    const [low, high] = this.card.output_range || [0, 6];
    const outside = rows.find((r) => r.features.some((v) => !(v >= low - 1e-4 && v <= high + 1e-4)));
    if (outside) {
      throw new EntryRefused(`${entry.key}: row ${outside.imageId.slice(0, 12)}… has features outside the model's output ` +
                             `range [${low}, ${high}]`);
    }
  }

  /** An entry of an identity this device no longer holds, re-made under its identity (its own vectors): the same
   *  rows with this client id, under this client's key; one that waited past its day (offline) re-filed under
   *  the day it goes (a refresh lists the last few days only); null when the entry is this identity's, of today. */
  async rekeyEntry(entry) {
    const key = this.parseKey(entry.key);
    if (!key || !Array.isArray(entry.imageIds)) return null;   // validation sets it aside, with the reason
    if (key.client === this.clientId) {
      const today = uploadDay();
      if (key.day === today) return null;
      return {...entry, key: await this.contract.vectorsObjectKey(this.root, key.sha, this.clientId, entry.imageIds, today)};
    }
    let rows;
    try {
      ({rows} = await readVectors(entry.bytes));
    } catch {
      return null;   // not readable: validation sets it aside with the reason
    }
    const bytes = await writeVectors(this.contract, rows, {modelSha256: key.sha, modelName: this.card.name,
                                                           clientId: this.clientId});
    const ids = rows.map((r) => r.imageId);
    const newKey = await this.contract.vectorsObjectKey(this.root, key.sha, this.clientId, ids);
    return {...entry, key: newKey, bytes, imageIds: ids, rows: ids.length, attempts: 0, nextAt: 0, lastError: null,
            state: 'waiting'};
  }

  async parquet(rows) {
    return writeVectors(this.contract, rows, {modelSha256: this.modelSha256, modelName: this.card.name, clientId: this.clientId});
  }

  /** The last batch's vectors as one Parquet file (what `fruits-edge vectorize --out` writes). */
  async lastBatchParquet() {
    if (!this.lastBatch || !this.lastBatch.rows.length) throw new Error(t('noVectorsYet'));
    return this.parquet(this.lastBatch.rows);
  }
}

/** Per step, the median of the photos' milliseconds (where a batch's time goes, in each worker). */
function medians(rows) {
  const out = {};
  for (const k of rows.length ? Object.keys(rows[0]) : []) {
    const v = rows.map((r) => r[k]).sort((a, b) => a - b);
    out[k] = v[Math.floor(v.length / 2)];
  }
  return out;
}

const app = new App();
window.fruits = app;   // for the person's console and the browser tests (tests/test_web.py)
// Kept in the page: WebKit's driver cannot read the console, and a person can look at fruits.errors too.
window.addEventListener('error', (e) => app.error(e.message || String(e.error)));
window.addEventListener('unhandledrejection', (e) => app.error((e.reason && e.reason.message) || String(e.reason)));
// What the tests run on both sides (the page's step and Python's on the same input):
app.debug = {
  hasWebCrypto: HAS_WEBCRYPTO, UNKNOWN, sha256Hex, messages: MESSAGES,
  // The answer section for a given answer (tests show each kind of answer without hunting for such a photo).
  showAnswer: (answer, held = true) => {
    if (!app.current) throw new Error('pick a photo first');
    app.current = {...app.current, answer, held, chosen: undefined};
    ui.renderAnswer(app);
  },
  preprocess: (bytes, options = {}) => app.pool.call(app.pool.workers[0], {type: 'preprocess', bytes, options}, [bytes]),
  heapBytes: () => app.pool.heapBytes(),
  // The page's identification on given vectors (base64 float32, n x dim) with given published files (base64):
  // what tests compare with `fruits-edge identify`, and the identify time per photo after its vector.
  identifyVectors: async ({projection, index, indexId, vectors, dim}) => {
    const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const p = await Projection.fromBytes(bytes(projection), {featureDim: dim, origin: 'projection'});
    const i = await ReferenceIndex.fromBytes(bytes(index), {projection: p, origin: 'index', indexId});
    const v = new Float32Array(bytes(vectors).buffer);
    const n = v.length / dim;
    const out = [];
    const t0 = performance.now();
    for (let r = 0; r < n; r++) out.push(identifyVector(v.subarray(r * dim, (r + 1) * dim), p, i));
    const ms = (performance.now() - t0) / Math.max(1, n);
    return {msPerPhoto: ms, answers: out.map((a) => ({answer: a.answer, label: a.label, runnerUp: a.runnerUp,
                                                      score: a.score, distances: a.ranked.map((r) => r.distance),
                                                      species: a.species, confidence: a.confidence,
                                                      candidates: a.ranked.map((r) => r.label)}))};
  },
  keys: async (root, sha, client, ids, pid, day) => ({
    vectors: await app.contract.vectorsObjectKey(root, sha, client, ids, day),
    latest: app.contract.latestProjectionKey(root, sha), projection: app.contract.projectionKey(root, pid),
    index: app.contract.indexKey(root, pid), content: await app.contract.contentKey(sha, ids)}),
};
window.fruits.ready = app.start().catch((err) => {
  app.state = 'error';
  app.error = err.message;
  ui.fatal(err);
});
ui.bind(app);
// A photo waiting for the person's choice goes, without a label, when the page is left (it is queued in IndexedDB).
document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'hidden') app.release(); });

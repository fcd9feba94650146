// The upload queue: every Parquet file the page makes waits in IndexedDB until S3 confirmed it, so a closed
// tab, a dead battery or a lost network loses nothing; it is sent again when the page is back and online.
// Sending is idempotent: keys are named by their content and every PUT is conditional (412 = already there).

import {NetworkDown, explain} from './bucket.js';
import * as storage from './storage.js';

export class UploadQueue extends EventTarget {
  constructor(bucket) {
    super();
    this.bucket = bucket;
    this.running = null;
    this.sent = 0;
    this.lastError = null;
    this.retryTimer = null;
  }

  async enqueue(entry) {
    await storage.put('queue', {...entry, createdAt: Date.now(), attempts: 0, lastError: null});
    this.changed();
  }

  async pending() { return storage.count('queue'); }

  changed() { this.dispatchEvent(new Event('change')); }

  /** Send what waits, one file at a time (single flight); resolves when the queue is empty or blocked. */
  drain() {
    this.running = this.running || this.run().finally(() => { this.running = null; this.changed(); });
    return this.running;
  }

  async run() {
    clearTimeout(this.retryTimer);
    for (const entry of await storage.all('queue')) {
      if (typeof navigator !== 'undefined' && navigator.onLine === false) {
        this.lastError = 'offline: the files wait in the queue and go when the network is back';
        return;
      }
      try {
        const outcome = await this.bucket.putIfAbsent(entry.key, entry.bytes);
        await storage.confirmUpload(entry);
        this.sent += 1;
        this.lastError = null;
        this.dispatchEvent(new CustomEvent('uploaded', {detail: {key: entry.key, rows: entry.rows, outcome}}));
      } catch (err) {
        this.lastError = explain(err, this.bucket.bucket);
        await storage.put('queue', {...entry, attempts: entry.attempts + 1, lastError: this.lastError});
        // Network trouble: try again later (and at once when the browser says it is back online).
        const delay = err instanceof NetworkDown ? 15000 : Math.min(300000, 15000 * 2 ** entry.attempts);
        this.retryTimer = setTimeout(() => this.drain(), delay);
        return;
      }
    }
  }
}

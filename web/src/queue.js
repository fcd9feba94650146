// The upload queue: every Parquet file the page makes waits in IndexedDB until S3 confirmed it, so a closed
// tab, a dead battery or a lost network loses nothing; it is sent again when the page is back and online.
// Sending is idempotent: keys are named by their content and every PUT is conditional (412 = already there).
//
// One refused file never holds up the others: each entry has its own attempts and next time; a network that is
// down stops the round (nothing would go), anything else only puts that entry back with a longer wait. An entry
// refused for good (malformed, or refused again and again) is set aside, counted and shown, never sent again by
// itself. Before any PUT an entry is checked (`validate`): a Parquet file whose rows are exactly its image ids,
// under this device's key. Entries of an identity the device no longer holds are re-made under its identity
// (they are this device's own vectors: `rekey`).

import {NetworkDown, explain} from './bucket.js';
import * as storage from './storage.js';

const MAX_ATTEMPTS = 6;           // refusals (403, 5xx...) before an entry is set aside
const BASE_DELAY_MS = 15_000;
const MAX_DELAY_MS = 300_000;

export class EntryRefused extends Error {
  constructor(message) { super(message); this.name = 'EntryRefused'; }
}

function backoff(attempts) {
  const delay = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** Math.max(0, attempts - 1));
  return delay * (0.8 + 0.4 * Math.random());
}

/** Whether an S3 answer will never change for this entry (a malformed request), so retrying is pointless. */
function permanent(err) {
  const status = err.$metadata?.httpStatusCode;
  return err instanceof EntryRefused || (status >= 400 && status < 500 && ![403, 408, 409, 429].includes(status));
}

export class UploadQueue extends EventTarget {
  /** `validate(entry)` throws EntryRefused for an entry that must not be sent; `rekey(entry)` gives an entry of
   *  another identity under this device's current one (or null when it is this device's). */
  constructor(bucket, {validate = async () => {}, rekey = async () => null} = {}) {
    super();
    this.bucket = bucket;
    this.validate = validate;
    this.rekey = rekey;
    this.running = null;
    this.sent = 0;
    this.lastError = null;
    this.retryTimer = null;
  }

  async enqueue(entry) {
    await storage.put('queue', {...entry, createdAt: Date.now(), attempts: 0, lastError: null, nextAt: 0,
                                state: 'waiting'});
    this.changed();
  }

  /** Entries waiting to be sent (those set aside are not waiting). */
  /** The entries still to send (not set aside). */
  async waiting() { return (await storage.all('queue')).filter((e) => e.state !== 'aside'); }

  async pending() { return (await this.waiting()).length; }

  /** Entries set aside: [{key, rows, reason}]. */
  async aside() {
    return (await storage.all('queue')).filter((e) => e.state === 'aside')
      .map((e) => ({key: e.key, rows: e.rows, reason: e.lastError}));
  }

  /** Put the set-aside entries back in line (the person asks for it, or the device's identity changed). */
  async retryAside() {
    for (const e of await storage.all('queue')) {
      if (e.state === 'aside') await storage.put('queue', {...e, state: 'waiting', attempts: 0, nextAt: 0});
    }
    this.changed();
    return this.drain();
  }

  changed() { this.dispatchEvent(new Event('change')); }

  /** Send what waits, one file at a time (single flight); resolves when nothing more can go now. Asked while a
   *  round runs (a file just queued), another round follows it. */
  drain() {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.run();
      } while (this.again);
    })().finally(() => { this.running = null; this.changed(); });
    return this.running;
  }

  schedule(ms) {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.drain(), Math.max(1000, ms));
  }

  async run() {
    clearTimeout(this.retryTimer);
    const entries = (await storage.all('queue')).filter((e) => e.state !== 'aside')
      .sort((a, b) => (a.createdAt || 0) - (b.createdAt || 0));
    let soonest = Infinity;
    for (const entry of entries) {
      if (typeof navigator !== 'undefined' && navigator.onLine === false) {
        this.lastError = 'offline: the files wait in the queue and go when the network is back';
        return;
      }
      if ((entry.nextAt || 0) > Date.now()) {
        soonest = Math.min(soonest, entry.nextAt);
        continue;
      }
      const outcome = await this.send(entry);
      if (outcome === 'network') {
        this.schedule(BASE_DELAY_MS);       // nothing else would go either; the 'online' event also drains
        return;
      }
      if (outcome !== 'done' && outcome !== 'aside') soonest = Math.min(soonest, outcome);
    }
    if (soonest < Infinity) this.schedule(soonest - Date.now());
  }

  /** One entry: 'done', 'aside', 'network', or the time it may be tried again. */
  async send(entry) {
    try {
      const rekeyed = await this.rekey(entry);
      if (rekeyed) {
        await storage.replaceEntry(entry.key, rekeyed);
        entry = rekeyed;
      }
      await this.validate(entry);
      const outcome = await this.bucket.putIfAbsent(entry.key, entry.bytes);
      await storage.confirmUpload(entry);
      this.sent += 1;
      this.lastError = null;
      this.dispatchEvent(new CustomEvent('uploaded', {detail: {key: entry.key, rows: entry.rows, outcome}}));
      return 'done';
    } catch (err) {
      if (err instanceof NetworkDown) {
        this.lastError = explain(err, this.bucket.bucket);
        return 'network';
      }
      const attempts = (entry.attempts || 0) + 1;
      const reason = err instanceof EntryRefused ? err.message : explain(err, this.bucket.bucket);
      this.lastError = reason;
      if (permanent(err) || attempts >= MAX_ATTEMPTS) {
        await storage.put('queue', {...entry, attempts, lastError: reason, state: 'aside'});
        this.dispatchEvent(new CustomEvent('aside', {detail: {key: entry.key, reason}}));
        return 'aside';
      }
      const nextAt = Date.now() + backoff(attempts);
      await storage.put('queue', {...entry, attempts, lastError: reason, nextAt, state: 'waiting'});
      return nextAt;
    }
  }
}

// What the page keeps between visits, in IndexedDB (it survives a closed tab and a restarted phone):
//   kv         the device's identity id per pool, small settings
//   queue      Parquet files waiting for their upload: {key, bytes, rows, imageIds, scope, createdAt, attempts, lastError,
//              nextAt, state: 'waiting' | 'aside'}
//   uploaded   image ids S3 confirmed, per scope (endpoint, bucket, root, model): [scope, imageId]
//   published  the published projection, index and catalog in force, by key (content-named, so never stale); the
//              ones a newer pointer replaced are removed (published.js), so what is kept does not grow

const DB = 'fruits';
const VERSION = 1;

let opening = null;

export function openDb() {
  opening = opening || new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      db.createObjectStore('kv');
      db.createObjectStore('queue', {keyPath: 'key'});
      db.createObjectStore('uploaded', {keyPath: ['scope', 'imageId']});
      db.createObjectStore('published');
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return opening;
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
  });
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

export async function get(store, key) {
  const db = await openDb();
  return request(db.transaction(store).objectStore(store).get(key));
}

export async function put(store, value, key) {
  const db = await openDb();
  const tx = db.transaction(store, 'readwrite');
  tx.objectStore(store).put(value, key);
  return done(tx);
}

export async function remove(store, key) {
  const db = await openDb();
  const tx = db.transaction(store, 'readwrite');
  tx.objectStore(store).delete(key);
  return done(tx);
}

export async function all(store) {
  const db = await openDb();
  return request(db.transaction(store).objectStore(store).getAll());
}

export async function keys(store) {
  const db = await openDb();
  return request(db.transaction(store).objectStore(store).getAllKeys());
}

/** Remove every key of `store` but those in `keep` (one transaction); returns how many went. */
export async function keepOnly(store, keep) {
  const db = await openDb();
  const tx = db.transaction(store, 'readwrite');
  const os = tx.objectStore(store);
  const all = await request(os.getAllKeys());
  const gone = all.filter((k) => !keep.has(k));
  for (const k of gone) os.delete(k);
  await done(tx);
  return gone.length;
}

export async function count(store) {
  const db = await openDb();
  return request(db.transaction(store).objectStore(store).count());
}

/** The ids of `imageIds` already confirmed in `scope`. */
export async function knownIds(scope, imageIds) {
  const db = await openDb();
  const os = db.transaction('uploaded').objectStore('uploaded');
  const found = await Promise.all(imageIds.map((id) => request(os.getKey([scope, id]))));
  return new Set(imageIds.filter((_, i) => found[i] !== undefined));
}

/** An upload confirmed by S3: its ids become known and the queue entry goes, in one transaction. */
export async function confirmUpload(entry) {
  const db = await openDb();
  const tx = db.transaction(['queue', 'uploaded'], 'readwrite');
  const up = tx.objectStore('uploaded');
  for (const imageId of entry.imageIds) up.put({scope: entry.scope, imageId});
  tx.objectStore('queue').delete(entry.key);
  return done(tx);
}

/** One queue entry replaced by another (the same vectors under a new key), in one transaction. */
export async function replaceEntry(oldKey, entry) {
  const db = await openDb();
  const tx = db.transaction('queue', 'readwrite');
  const queue = tx.objectStore('queue');
  queue.delete(oldKey);
  queue.put(entry);
  return done(tx);
}

// The published projection and reference index for this page's model (what `fruits-cloud publish` writes):
// the small pointer projection-latest-<model sha256>.json is read on every visit; the projection and index
// it names (contract/projection.py read_pointer) are content-named, so once fetched they are kept in IndexedDB
// and never downloaded again.

import {NetworkDown} from './bucket.js';
import {Catalog} from './catalog.js';
import {LabelRules} from './labels.js';
import {Projection, ReferenceIndex} from './identify.js';
import * as storage from './storage.js';

async function cachedGet(bucket, key) {
  const kept = await storage.get('published', key);
  if (kept) return {bytes: kept, fetched: 0};
  const bytes = await bucket.get(key);
  if (bytes === null) return {bytes: null, fetched: 0};
  return {bytes, fetched: bytes.length};
}

/** {projection, index, fetchedBytes} for the model, or {missing: reason} when nothing is published. */
export async function loadPublished(bucket, contract, root, {modelSha256}) {
  const pointerKey = contract.latestProjectionKey(root, modelSha256);
  let pointer;
  let ids;
  try {
    pointer = await bucket.get(pointerKey);
  } catch (err) {
    // Offline: the projection last used (kept below) still identifies; it is refreshed when the network is back.
    ids = err instanceof NetworkDown ? await storage.get('kv', `pointer:${pointerKey}`) : null;
    if (!ids || typeof ids !== 'object') throw err;   // (a string: kept by a page from before indexes had ids)
    pointer = new Uint8Array(0);
  }
  if (pointer === null) return {missing: `no projection published for this model yet (${pointerKey})`, fetchedBytes: 0};
  if (!ids) {
    try {
      const p = JSON.parse(new TextDecoder().decode(pointer));
      ids = {projectionId: p.projection_id, indexId: p.index_id, catalogId: p.catalog_id ?? null};
    } catch {
      ids = {};
    }
  }
  const hex16 = /^[0-9a-f]{16}$/;
  if (typeof ids.projectionId !== 'string' || !hex16.test(ids.projectionId) || typeof ids.indexId !== 'string' ||
      !hex16.test(ids.indexId) || !(ids.catalogId === null || ids.catalogId === undefined ||
                                    (typeof ids.catalogId === 'string' && hex16.test(ids.catalogId)))) {
    throw new Error(`${pointerKey}: not a projection pointer (a JSON object naming a 16-hex projection_id and ` +
                    `index_id, and a catalog_id or null); publish again`);
  }
  const pKey = contract.projectionKey(root, ids.projectionId);
  const iKey = contract.indexKey(root, ids.indexId);
  const [p, i] = [await cachedGet(bucket, pKey), await cachedGet(bucket, iKey)];
  if (!p.bytes) throw new Error(`the pointer names projection ${ids.projectionId}, but ${pKey} is missing`);
  if (!i.bytes) throw new Error(`the pointer names index ${ids.indexId}, but ${iKey} is missing`);
  const projection = await Projection.fromBytes(p.bytes, {featureDim: contract.feature_dim, modelSha256, origin: pKey});
  const index = await ReferenceIndex.fromBytes(i.bytes, {projection, origin: iKey, indexId: ids.indexId});
  // The catalog of the same publish (names, descriptions, nutrition): never one from another publish.
  let catalog = null;
  let c = {fetched: 0};
  if (ids.catalogId) {
    const cKey = contract.catalogKey(root, ids.catalogId);
    c = await cachedGet(bucket, cKey);
    if (!c.bytes) throw new Error(`the pointer names catalog ${ids.catalogId}, but ${cKey} is missing`);
    catalog = await Catalog.fromBytes(c.bytes, {origin: cKey, catalogId: ids.catalogId,
                                                labelRules: new LabelRules(contract.labels)});
    if (c.fetched) await storage.put('published', c.bytes, cKey);
  }
  if (p.fetched) await storage.put('published', p.bytes, pKey);   // kept only once they passed the checks
  if (i.fetched) await storage.put('published', i.bytes, iKey);
  await storage.put('kv', {projectionId: ids.projectionId, indexId: ids.indexId, catalogId: ids.catalogId ?? null},
                    `pointer:${pointerKey}`);
  // Only what the pointer in force names is kept: each refresh publishes new files (~250 kB), and a page kept every
  // one it ever fetched.
  const dropped = await storage.keepOnly('published', new Set([pKey, iKey, ...(ids.catalogId ?
    [contract.catalogKey(root, ids.catalogId)] : [])]));
  return {projection, index, catalog, fetchedBytes: pointer.length + p.fetched + i.fetched + c.fetched, dropped};
}

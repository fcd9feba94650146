// The data contract in the page: the same schema, key layout and fingerprint as contract/ in Python.
// Nothing here is a second list: the page fetches contract.json, which `python -m web build` writes from
// the Python contract (contract/layout.py, contract/vectors.py, the model card), and the tests check that
// the keys and content names made here equal Python's for the same inputs.

import {sha256Hex} from './sha256.js';

/** contract.layout.upload_day: the UTC date of `now`, the day= folder an object sent now is filed under. */
export function uploadDay(now = new Date()) {
  return now.toISOString().slice(0, 10);
}

export async function loadContract(url = 'contract.json') {
  const response = await fetch(url, {cache: 'no-cache'});
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Contract(await response.json());
}

export class Contract {
  constructor(spec) {
    Object.assign(this, spec);
    this.clientPattern = new RegExp(spec.client_id_pattern);
  }

  /** `root/part/part` without empty or doubled slashes (contract.layout.join). */
  join(root, rel) {
    return [root, rel].map((p) => (p || '').replace(/^\/+|\/+$/g, '')).filter(Boolean).join('/');
  }

  checkClientId(clientId) {
    if (typeof clientId !== 'string' || !this.clientPattern.test(clientId)) {
      throw new Error(`client_id=${JSON.stringify(clientId)} must be 1-128 characters of A-Z a-z 0-9 . _ : -`);
    }
    return clientId;
  }

  /** contract.layout.content_key: 32 hex characters from a fingerprint and the sorted image ids. */
  async contentKey(fingerprint, imageIds) {
    const sorted = [...imageIds].sort();
    return (await sha256Hex(fingerprint + sorted.map((id) => '\n' + id).join(''))).slice(0, 32);
  }

  key(name, root, values) {
    const template = this.keys[name];
    if (!template) throw new Error(`no key template ${name}`);
    return this.join(root, template.replace(/\{(\w+)\}/g, (_, k) => {
      if (!(k in values)) throw new Error(`key ${name}: no value for {${k}}`);
      return values[k];
    }));
  }

  /** contract.layout.vectors_object_key: filed under `day` (default: today, UTC, when it is sent). */
  async vectorsObjectKey(root, modelSha256, clientId, imageIds, day = uploadDay()) {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(day)) throw new Error(`day ${JSON.stringify(day)} is not YYYY-MM-DD`);
    return this.key('vectors', root, {sha256: modelSha256, client: this.checkClientId(clientId), day,
                                      content: await this.contentKey(modelSha256, imageIds)});
  }

  latestProjectionKey(root, modelSha256) { return this.key('latest_projection', root, {sha256: modelSha256}); }
  projectionKey(root, projectionId) { return this.key('projection', root, {projection: projectionId}); }
  indexKey(root, indexId) { return this.key('index', root, {projection: indexId}); }
  catalogKey(root, catalogId) { return this.key('catalog', root, {projection: catalogId}); }

  /** The label of a picked file from its relative path, as edge_client.vectorize.find_photos gives it. */
  labelFromPath(relativePath) {
    const parts = relativePath.split('/').filter(Boolean);
    return parts.length >= 2 ? parts[parts.length - 2] : null;
  }

  /** Why a file is not vectorized from its name alone (find_photos): null for a photo. */
  fileVerdict(name, size = 0) {
    const dot = name.lastIndexOf('.');
    const ext = dot > 0 ? name.slice(dot).toLowerCase() : '';
    if (this.preprocessing.extensions.includes(ext)) {
      // featurizer.preprocess.read_photo: a file over the byte cap is refused from its size, never read
      const max = this.preprocessing.max_bytes;
      if (size > max) {
        const n = (v) => v.toLocaleString('en-US');
        return {rejected: true, reason: `${n(size)} bytes, over the limit of ${n(max)} bytes for a photo: not read`};
      }
      return null;
    }
    if (ext in this.preprocessing.not_photos) return {rejected: true, reason: this.preprocessing.not_photos[ext]};
    return {rejected: false, reason: `skipped: not a photo (extension ${ext || 'none'})`};
  }
}

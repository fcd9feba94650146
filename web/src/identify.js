// Identification on the phone, as `fruits-edge identify` does it (contract/projection.py): project the
// vector with the published projection (standardize, then the first k components), carry it into the index's
// identification space (whiten, then unit length), take each label's cosine distance to its nearest prototype,
// and answer with the nearest label, "unknown" beyond the index's unknown distance, or "not sure: A or B" when
// the runner-up is too close. Arithmetic in float64 as numpy does; the projection is rounded to float32 where
// Python rounds it.

import {loadNpz} from './npz.js';
import {sha256Hex} from './sha256.js';

export const UNKNOWN = 'unknown';

class PublishedError extends Error {
  constructor(message) { super(message); this.name = 'PublishedError'; }
}

function scalar(a, what) {
  if (!a || a.shape.length !== 0) throw new PublishedError(`${what} is missing or not a scalar`);
  return a.data[0];
}

function finite(values, what) {
  for (const v of values) if (!Number.isFinite(v)) throw new PublishedError(`${what} holds NaN or infinite values`);
}

function bytesOf(typed) { return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength); }

export class Projection {
  /** The arrays of projection-<id>.npz, checked: shapes, finite numbers, its id, the model it was fitted on. */
  static async fromBytes(bytes, {featureDim, modelSha256, origin}) {
    let z;
    try { z = await loadNpz(bytes); } catch (err) { throw new PublishedError(`${origin}: not a projection (${err.message})`); }
    try {
      const meta = JSON.parse(scalar(z.meta, 'meta'));
      const {mean, scale, components} = z;
      if (!mean || !scale || !components || mean.dtype !== '<f4' || scale.dtype !== '<f4' || components.dtype !== '<f4') {
        throw new PublishedError('mean, scale and components must be float32 arrays');
      }
      const d = mean.shape[0];
      if (mean.shape.length !== 1 || scale.shape.join() !== String(d) || components.shape.length !== 2 ||
          components.shape[0] !== d) {
        throw new PublishedError(`inconsistent shapes mean (${mean.shape}), scale (${scale.shape}), components (${components.shape})`);
      }
      if (d !== featureDim) throw new PublishedError(`it projects ${d}-d vectors; the model makes ${featureDim}-d ones`);
      finite(mean.data, 'mean'); finite(scale.data, 'scale'); finite(components.data, 'components');
      const id = (await sha256Hex(concat([bytesOf(mean.data), bytesOf(scale.data), bytesOf(components.data),
                                          new TextEncoder().encode(meta.model_sha256)]))).slice(0, 16);
      if (meta.projection_id !== id) throw new PublishedError(`content does not match its projection id ${meta.projection_id}`);
      if (modelSha256 && meta.model_sha256 !== modelSha256) {
        throw new PublishedError(`fitted on vectors of model ${meta.model_sha256.slice(0, 12)}..., but this page's ` +
                                 `model is ${modelSha256.slice(0, 12)}...`);
      }
      return new Projection(Float64Array.from(mean.data), Float64Array.from(scale.data), components.data,
                            components.shape[1], meta);
    } catch (err) {
      throw new PublishedError(`${origin}: ${err.message}`);
    }
  }

  constructor(mean, scale, components, k, meta) {
    this.mean = mean;
    this.scale = scale;
    this.components = components;   // d x k, row-major (C order), float32 values
    this.k = k;
    this.meta = meta;
    this.projectionId = meta.projection_id;
    this.modelSha256 = meta.model_sha256;
  }

  /** The standardized vector z and its projection y = z C (float64). */
  standardize(x) {
    const d = this.mean.length;
    const z = new Float64Array(d);
    for (let i = 0; i < d; i++) z[i] = (x[i] - this.mean[i]) * this.scale[i];
    const y = new Float64Array(this.k);
    for (let i = 0; i < d; i++) {
      const zi = z[i];
      if (zi === 0) continue;
      const row = i * this.k;
      for (let j = 0; j < this.k; j++) y[j] += zi * this.components[row + j];
    }
    return {z, y};
  }

  /** Projection.project: k float32 values. */
  project(x) { return Float32Array.from(this.standardize(x).y); }
}

export const NOT_SURE = 'not sure';
const INDEX_FORMAT = 3;

/** The answer when two labels are too close to tell apart (contract/projection.py not_sure_answer). */
export function notSureAnswer(first, second) { return `${NOT_SURE}: ${first} or ${second}`; }

export class ReferenceIndex {
  /** index-<id>.npz (ReferenceIndex.from_bytes): checked, and its content must be the index `indexId` names. */
  static async fromBytes(bytes, {projection, origin, indexId}) {
    let z;
    try { z = await loadNpz(bytes); } catch (err) { throw new PublishedError(`${origin}: not a reference index (${err.message})`); }
    try {
      const metaText = scalar(z.meta, 'meta');
      const meta = JSON.parse(metaText);
      if (meta.format !== INDEX_FORMAT) {
        throw new PublishedError(`an index of format ${meta.format ?? 1}, not ${INDEX_FORMAT} (made by an older publish); publish again`);
      }
      const {prototypes, owner, whiten} = z;
      if (!prototypes || !owner || !whiten || prototypes.dtype !== '<f4' || whiten.dtype !== '<f4' || owner.dtype !== '<i4') {
        throw new PublishedError('prototypes and whiten must be float32 arrays, owner int32');
      }
      const labels = meta.labels;
      if (!Array.isArray(labels) || !labels.length || labels.some((l) => typeof l !== 'string')) {
        throw new PublishedError('it has no labels');
      }
      if (new Set(labels).size !== labels.length) throw new PublishedError('a label appears twice');
      const c = labels.length;
      const k = whiten.shape[0];
      const p = prototypes.shape[0];
      if (whiten.shape.length !== 2 || whiten.shape[1] !== k || prototypes.shape.length !== 2 || prototypes.shape[1] !== k) {
        throw new PublishedError(`whiten (${whiten.shape}) and prototypes (${prototypes.shape}) do not agree on k`);
      }
      if (!p || owner.shape.join() !== String(p) || !Array.isArray(meta.counts) || meta.counts.length !== c) {
        throw new PublishedError(`${p} prototypes, owners (${owner.shape}), ${c} labels and counts do not agree`);
      }
      if (owner.data[0] !== 0 || owner.data[p - 1] !== c - 1 || owner.data.some((o, i) => i > 0 && o - owner.data[i - 1] !== 0 && o - owner.data[i - 1] !== 1)) {
        throw new PublishedError(`prototypes must be grouped by label, every label 0..${c - 1} in order`);
      }
      if (projection && k !== projection.k) throw new PublishedError(`it has k=${k}, the projection k=${projection.k}`);
      finite(prototypes.data, 'prototypes'); finite(whiten.data, 'whiten');
      const t = meta.unknown_distance;
      const rho = meta.not_sure_ratio;
      if (!Number.isFinite(t) || !Number.isFinite(rho) || t < 0 || t > 2 || rho < 0) throw new PublishedError('thresholds out of range');
      if (!Array.isArray(meta.species) || meta.species.length !== c || meta.species.some((s) => typeof s !== 'string')) {
        throw new PublishedError(`${Array.isArray(meta.species) ? meta.species.length : 0} species for ${c} labels`);
      }
      checkConfidence(meta.confidence);
      const perLabel = meta.unknown_distances;
      if (!Array.isArray(perLabel) || perLabel.length !== c || perLabel.some((v) => !Number.isFinite(v) || v < 0 || v > 2)) {
        throw new PublishedError(`its labels' unknown distances are not ${c} numbers in [0, 2]`);
      }
      if (projection && meta.projection_id !== projection.projectionId) {
        throw new PublishedError(`it belongs to projection ${meta.projection_id}, not ${projection.projectionId}`);
      }
      if (indexId !== undefined) {
        const id = (await sha256Hex(concat([bytesOf(prototypes.data), bytesOf(owner.data), bytesOf(whiten.data),
                                            new TextEncoder().encode(metaText)]))).slice(0, 16);
        if (id !== indexId) throw new PublishedError(`content does not match its index id ${indexId}`);
      }
      const starts = new Int32Array(c + 1);
      for (let i = p - 1; i >= 0; i--) starts[owner.data[i]] = i;
      starts[c] = p;
      return new ReferenceIndex(labels, Float64Array.from(prototypes.data), starts, Float64Array.from(whiten.data), k, t,
                                rho, meta);
    } catch (err) {
      throw new PublishedError(`${origin}: ${err.message}`);
    }
  }

  constructor(labels, prototypes, starts, whiten, k, unknownDistance, notSureRatio, meta) {
    Object.assign(this, {labels, prototypes, starts, whiten, k, unknownDistance, notSureRatio, meta});
    this.projectionId = meta.projection_id;
    this.counts = meta.counts;
    this.calibration = meta.calibration;
    this.species = meta.species;
    this.confidence = meta.confidence;
    this.unknownDistances = meta.unknown_distances;
  }

  /** ReferenceIndex.distances: each label's cosine distance to its nearest prototype, in the whitened space. */
  distances(y) {
    const k = this.k;
    const u = new Float64Array(k);
    for (let i = 0; i < k; i++) {
      const yi = y[i];
      const row = i * k;
      for (let j = 0; j < k; j++) u[j] += yi * this.whiten[row + j];
    }
    let n = 0;
    for (const v of u) n += v * v;
    n = Math.sqrt(n);
    if (n > 0) for (let j = 0; j < k; j++) u[j] /= n;
    const c = this.labels.length;
    const d = new Float64Array(c);
    for (let l = 0; l < c; l++) {
      let best = -Infinity;
      for (let p = this.starts[l]; p < this.starts[l + 1]; p++) {
        let s = 0;
        const row = p * k;
        for (let j = 0; j < k; j++) s += u[j] * this.prototypes[row + j];
        if (s > best) best = s;
      }
      d[l] = 1 - best;
    }
    return d;
  }

  /** ReferenceIndex.answer: {answer, label, runnerUp, score, ranked: [{label, score, distance}], species,
   *  confidence}. */
  answer(y, {top = 3} = {}) {
    return this.decide(this.distances(y), {top});
  }

  /** ReferenceIndex.answer_photos: several photos of one fruit (their projected vectors), each label's distance the
   *  mean of its distances to them. */
  answerPhotos(ys, {top = 3} = {}) {
    const d = new Float64Array(this.labels.length);
    for (const y of ys) {
      const di = this.distances(y);
      for (let l = 0; l < d.length; l++) d[l] += di[l];
    }
    for (let l = 0; l < d.length; l++) d[l] /= ys.length;
    return this.decide(d, {top});
  }

  /** ReferenceIndex.decide: the answer from each label's distance. */
  decide(d, {top = 3} = {}) {
    const order = Array.from(d.keys()).sort((a, b) => d[a] - d[b] || a - b);
    const [first, second = -1] = order;
    const t = this.unknownDistance;
    const ranked = order.slice(0, Math.max(1, top)).map((i) => ({
      label: this.labels[i], distance: d[i], score: t > 0 ? Math.max(0, 1 - d[i] / t) : Number(d[i] <= 0),
      species: this.species[i]}));
    const ratio = second >= 0 && d[second] > 0 ? d[first] / d[second] : 0;
    let text;
    let species = '';
    let confidence = null;
    if (d[first] > this.unknownDistances[first]) text = UNKNOWN;
    else if (second >= 0 && d[second] > 0 && ratio > this.notSureRatio) {
      text = notSureAnswer(this.labels[first], this.labels[second]);
      if (this.species[first] === this.species[second]) species = this.species[first];
    } else {
      text = this.labels[first];
      species = this.species[first];
      confidence = confidenceOf(this.confidence, ratio);
    }
    return {answer: text, label: this.labels[first], runnerUp: second >= 0 ? this.labels[second] : '', score: ranked[0].score,
            ranked, species, confidence};
  }
}

/** contract.projection.confidence_of: the share right of held-out answers named with this margin, or null. */
export function confidenceOf(table, ratio) {
  if (!table || !table.ratio_upper || !table.ratio_upper.length) return null;
  for (let i = 0; i < table.ratio_upper.length; i++) if (ratio <= table.ratio_upper[i]) return table.right[i];
  return table.right[table.right.length - 1];
}

function checkConfidence(table) {
  if (table === null || table === undefined) return;
  const {ratio_upper: upper, right, rows} = table;
  const ok = Array.isArray(upper) && Array.isArray(right) && Array.isArray(rows) && upper.length >= 1 &&
    upper.length === right.length && upper.length === rows.length && upper.every((v, i) => Number.isFinite(v) &&
    (i === 0 || v >= upper[i - 1])) && right.every((v) => typeof v === 'number' && v >= 0 && v <= 1);
  if (!ok) throw new PublishedError('its confidence table is not bins of increasing ratio with shares in [0, 1]');
}

/** fruits-edge identify on a vector (edge_client/project.py identify_features): the answer. */
export function identifyVector(features, projection, index, top = 3) {
  return index.answer(projection.project(features), {top});
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

export {PublishedError};

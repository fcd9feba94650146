// Identification on the phone, as `fruits-edge identify` does it (contract/projection.py): project the
// vector with the published projection (standardize, then the first k components), rank the labels by
// distance to their centroids in the reference index, and answer "unknown" when the photo is beyond the
// nearest label's threshold or lies too far off the projection's subspace (its residual).
// Arithmetic in float64 as numpy does; the projection is rounded to float32 where Python rounds it.

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

  /** Projection.residual: |z|^2 - |zC|^2, at least 0. */
  residual(x) {
    const {z, y} = this.standardize(x);
    let zz = 0, yy = 0;
    for (const v of z) zz += v * v;
    for (const v of y) yy += v * v;
    return Math.max(0, zz - yy);
  }
}

export class ReferenceIndex {
  static async fromBytes(bytes, {projection, origin}) {
    let z;
    try { z = await loadNpz(bytes); } catch (err) { throw new PublishedError(`${origin}: not a reference index (${err.message})`); }
    try {
      const {labels, centroids, counts} = z;
      if (!labels || !centroids || !counts) throw new PublishedError('labels, centroids or counts is missing');
      const c = labels.shape[0] ?? 0;
      if (c < 1) throw new PublishedError('it has no labels');
      if (centroids.shape.length !== 2 || centroids.shape[0] !== c || counts.shape[0] !== c) {
        throw new PublishedError(`${c} labels but centroids (${centroids.shape}) and counts (${counts.shape})`);
      }
      const k = centroids.shape[1];
      if (projection && k !== projection.k) throw new PublishedError(`its centroids have k=${k}, the projection k=${projection.k}`);
      finite(centroids.data, 'centroids');
      const pid = scalar(z.projection_id, 'projection_id');
      if (projection && pid !== projection.projectionId) {
        throw new PublishedError(`it belongs to projection ${pid}, not ${projection.projectionId}`);
      }
      const thresholds = z.thresholds ? Float64Array.from(z.thresholds.data) : new Float64Array(c).fill(Infinity);
      if (thresholds.length !== c || thresholds.some((t) => Number.isNaN(t))) throw new PublishedError('bad thresholds');
      const residual = z.residual_threshold ? Number(scalar(z.residual_threshold, 'residual_threshold')) : Infinity;
      if (Number.isNaN(residual)) throw new PublishedError('bad residual_threshold');
      return new ReferenceIndex(labels.data, Float64Array.from(centroids.data), k, thresholds, residual, pid,
                                Array.from(counts.data, Number));
    } catch (err) {
      throw new PublishedError(`${origin}: ${err.message}`);
    }
  }

  constructor(labels, centroids, k, thresholds, residualThreshold, projectionId, counts) {
    Object.assign(this, {labels, centroids, k, thresholds, residualThreshold, projectionId, counts});
  }

  /** ReferenceIndex.rank: [{label, score, distance}], nearest first, "unknown" first when beyond. */
  rank(y, {top = 3, residual = 0} = {}) {
    const c = this.labels.length;
    const d = new Float64Array(c);
    for (let i = 0; i < c; i++) {
      let s = 0;
      for (let j = 0; j < this.k; j++) {
        const diff = this.centroids[i * this.k + j] - y[j];
        s += diff * diff;
      }
      d[i] = Math.sqrt(s);
    }
    const order = Array.from(d.keys()).sort((a, b) => d[a] - d[b] || a - b).slice(0, top);
    const out = order.map((i) => {
      const t = this.thresholds[i];
      const score = Number.isFinite(t) && t > 0 ? Math.max(0, 1 - d[i] / t) : 1.0;
      return {label: this.labels[i], score, distance: d[i]};
    });
    const nearest = order[0];
    if (d[nearest] > this.thresholds[nearest] || residual > this.residualThreshold) {
      out.unshift({label: UNKNOWN, score: 0, distance: d[nearest]});
    }
    return out.slice(0, top);
  }
}

/** fruits-edge identify on a vector: the ranked answer. */
export function identifyVector(features, projection, index, top = 3) {
  return index.rank(projection.project(features), {top, residual: projection.residual(features)});
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

export {PublishedError};

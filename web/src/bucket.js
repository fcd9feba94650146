// The bucket as the device sees it: conditional PUTs of its own Parquet files (If-None-Match: *, as
// edge_client/upload.py put_if_absent) and GETs of the published projection under models/; nothing else
// (the device role may not list, read vectors or overwrite).

import {GetObjectCommand, PutObjectCommand, S3Client} from '@aws-sdk/client-s3';

export class NetworkDown extends Error {
  constructor(message) { super(message); this.name = 'NetworkDown'; }
}

export class Bucket {
  constructor({bucket, region, endpoint, credentials, onExpired}) {
    this.bucket = bucket;
    this.onExpired = onExpired;
    this.client = new S3Client({
      region, endpoint: endpoint || undefined, forcePathStyle: Boolean(endpoint), credentials, maxAttempts: 3,
      // No flexible-checksum headers: the conditional PUT needs only what the bucket's CORS rule allows.
      requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
      // Never the browser's HTTP cache: S3 sends no Cache-Control, so a GET of the pointer could be answered from a
      // heuristically fresh copy (an older publish; seen in a test). What is worth keeping is kept in IndexedDB.
      requestHandler: {cache: 'no-store'},
    });
  }

  async send(command) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.client.send(command);
      } catch (err) {
        if (attempt === 0 && ['ExpiredToken', 'ExpiredTokenException', 'TokenRefreshRequired'].includes(err.name)) {
          this.onExpired?.();     // fetch new credentials and try once more
          continue;
        }
        if (!err.$metadata?.httpStatusCode && (err.name === 'TypeError' || /fetch|network/i.test(err.message))) {
          throw new NetworkDown(`cannot reach S3 (${err.message})`);
        }
        throw err;
      }
    }
  }

  /** Create `key` unless it exists: 'created', or 'exists' when S3 answers 412 (it is there: done). */
  async putIfAbsent(key, body) {
    for (let attempt = 0; attempt < 4; attempt++) {
      try {
        await this.send(new PutObjectCommand({Bucket: this.bucket, Key: key, Body: body, IfNoneMatch: '*',
                                              ContentType: 'application/vnd.apache.parquet'}));
        return 'created';
      } catch (err) {
        const status = err.$metadata?.httpStatusCode;
        if (status === 412 || err.name === 'PreconditionFailed') return 'exists';
        if (status === 409) continue;   // a concurrent conditional write of the same key: try again
        throw err;
      }
    }
    throw new Error(`${key}: S3 kept answering 409 (conflicting writes)`);
  }

  /** An object's bytes, or null when there is no such key. */
  async get(key) {
    try {
      const out = await this.send(new GetObjectCommand({Bucket: this.bucket, Key: key}));
      return await out.Body.transformToByteArray();
    } catch (err) {
      if (err.name === 'NoSuchKey' || err.$metadata?.httpStatusCode === 404) return null;
      throw err;
    }
  }
}

/** One line for an S3 error, naming the bucket and what to check (edge_client.upload.explain). */
export function explain(err, bucket) {
  if (err instanceof NetworkDown) return `${err.message}; the files wait in the queue and go when the network is back`;
  const status = err.$metadata?.httpStatusCode;
  if (err.name === 'NoSuchBucket') return `bucket ${bucket} does not exist`;
  if (['ExpiredToken', 'ExpiredTokenException'].includes(err.name)) return `the device's credentials expired (${err.name}) and could not be renewed`;
  if (['InvalidAccessKeyId', 'SignatureDoesNotMatch'].includes(err.name)) return `S3 rejected the credentials (${err.name})`;
  if (status === 403 || err.name === 'AccessDenied') return `access denied to bucket ${bucket} (${err.name}): check the device role's policy`;
  return `S3 answered ${err.name || status}: ${err.message}`;
}

// sha256 in hex: the photo's image_id (the contract's deduplication key) and the content names of objects.
// WebCrypto where the page is a secure context; a maintained pure-JS sha256 (@noble/hashes) where it is not
// (crypto.subtle is missing on plain http, e.g. the app opened from a laptop on the LAN).

import {sha256} from '@noble/hashes/sha2.js';

const subtle = globalThis.crypto && globalThis.crypto.subtle;

function hex(bytes) {
  let out = '';
  for (const b of bytes) out += b.toString(16).padStart(2, '0');
  return out;
}

export async function sha256Hex(data, {forceFallback = false} = {}) {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  if (subtle && !forceFallback) return hex(new Uint8Array(await subtle.digest('SHA-256', bytes)));
  return hex(sha256(bytes));
}

export const HAS_WEBCRYPTO = Boolean(subtle);

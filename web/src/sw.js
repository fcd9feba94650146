// The service worker: the app works offline and a second visit downloads neither the model nor the Wasm
// files. Files that never change within a build (code, Wasm, the model, icons, the contract with its Unicode
// table) come from the cache first; the page and its settings are asked from the network first (so an update
// is seen at once) and served from the cache when offline. Requests to other origins (S3, Cognito) are left
// alone. (The contract was asked each visit too: 10 kB again in WebKit, whose worker's fetch does not revalidate;
// it is a file of the build, checked against the build's sha256, so a new one only ever comes with a new build.)
//
// Only what is right is kept: a file of the build is cached only when its size and sha256 are the build's
// (build.mjs writes them in here), so a model cut short once, or a captive portal's page served in its place,
// is never kept, and a cached copy that fails the check is dropped and fetched again. Before, one bad response
// was kept for good and the page could not start again without wiping the site's data.
/* global __BUILD__, __FILES__ */

const CACHE = `fruits-${__BUILD__}`;
const FILES = __FILES__;     // {path relative to the scope: {size, sha256}}
const SHELL = ['index.html', 'app.js', 'style.css', 'manifest.webmanifest', 'icon.svg', 'icon-192.png',
               'contract.json', 'probes.json'];   // (the worker and Wasm of this browser's build: cached when first used)
const FRESH = /^(index\.html|config\.json)?$/;   // relative to the scope

function relative(url) {
  const u = new URL(url);
  return (u.origin + u.pathname).slice(self.registration.scope.length);
}

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest('SHA-256', buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Whether `response` for the path `rel` is what the build holds (config.json: an OK JSON answer). */
async function right(rel, response) {
  if (!response || !response.ok || response.type !== 'basic') return false;
  const want = FILES[rel || 'index.html'];
  if (!want) return rel === 'config.json' && (response.headers.get('content-type') || '').startsWith('application/json');
  if (rel.endsWith('.wasm') && response.headers.get('content-type') !== 'application/wasm') return false;
  const body = await response.clone().arrayBuffer();
  return body.byteLength === want.size && (await sha256Hex(body)) === want.sha256;
}

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    for (const rel of SHELL) {
      try {
        const response = await fetch(rel, {cache: 'no-cache'});
        if (await right(rel, response)) await cache.put(rel, response);
      } catch {
        // offline or refused while installing: fetched (and checked) when first used
      }
    }
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name.startsWith('fruits-') && name !== CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});

async function cached(cache, request, rel) {
  // The scope's root is the page: installed as index.html (the first visit loaded "/" before this worker ran).
  const hit = (await cache.match(request, {ignoreSearch: true})) || (rel === '' ? await cache.match('index.html') : null);
  if (!hit) return null;
  if (await right(rel, hit)) return hit;
  await cache.delete(request, {ignoreSearch: true});   // damaged or not this build's: fetched again
  return null;
}

async function networkFirst(request, rel) {
  const cache = await caches.open(CACHE);
  try {
    const response = await fetch(request);
    if (await right(rel, response)) {
      await cache.put(request, response.clone());
      return response;
    }
    return (await cached(cache, request, rel)) || response;   // a wrong answer: the last right copy, if any
  } catch (err) {
    const hit = await cached(cache, request, rel);
    if (hit) return hit;
    throw err;
  }
}

async function cacheFirst(request, rel) {
  const cache = await caches.open(CACHE);
  const hit = await cached(cache, request, rel);
  if (hit) return hit;
  const response = await fetch(request);
  if (await right(rel, response)) await cache.put(request, response.clone());
  return response;
}

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin) return;
  const rel = relative(event.request.url);
  event.respondWith(FRESH.test(rel) ? networkFirst(event.request, rel) : cacheFirst(event.request, rel));
});

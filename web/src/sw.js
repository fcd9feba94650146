// The service worker: the app works offline and a second visit downloads neither the model nor the Wasm
// files. Files that never change within a build (code, Wasm, the model, icons) come from the cache first;
// the page, its settings and the contract are asked from the network first (so an update is seen at once)
// and served from the cache when offline. Requests to other origins (S3, Cognito) are left alone.
/* global __BUILD__ */

const CACHE = `fruits-${__BUILD__}`;
const SHELL = ['./', 'index.html', 'app.js', 'worker.js', 'style.css', 'manifest.webmanifest', 'icon.svg',
               'icon-192.png', 'config.json', 'contract.json', 'probes.json'];
const FRESH = /^(index\.html|config\.json|contract\.json)?$/;   // relative to the scope

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name.startsWith('fruits-') && name !== CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});

async function networkFirst(request) {
  const cache = await caches.open(CACHE);
  try {
    const response = await fetch(request);
    if (response.ok) await cache.put(request, response.clone());
    return response;
  } catch (err) {
    const cached = await cache.match(request, {ignoreSearch: true});
    if (cached) return cached;
    throw err;
  }
}

async function cacheFirst(request) {
  const cache = await caches.open(CACHE);
  const cached = await cache.match(request, {ignoreSearch: true});
  if (cached) return cached;
  const response = await fetch(request);
  if (response.ok) await cache.put(request, response.clone());
  return response;
}

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin) return;
  const rel = (url.origin + url.pathname).slice(self.registration.scope.length);
  event.respondWith(FRESH.test(rel) ? networkFirst(event.request) : cacheFirst(event.request));
});

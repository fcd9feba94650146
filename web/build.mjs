// Builds the web app into dist/ from the pinned npm packages (package-lock.json): the page and worker
// bundles, the service worker, the static files and the Wasm files the app serves itself (nothing is ever
// loaded from a CDN). The model, its card and contract.json are passed in by `python -m web build` (web/build.py).
//   node build.mjs [OUT [EXTRA]]    (default dist/; EXTRA: a folder whose files are added, e.g. the model)

import {build} from 'esbuild';
import {createHash} from 'node:crypto';
import {copyFileSync, cpSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs';
import {dirname, join} from 'node:path';
import {fileURLToPath} from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] || join(here, 'dist');
rmSync(out, {recursive: true, force: true});
mkdirSync(join(out, 'wasm'), {recursive: true});

const common = {bundle: true, minify: true, sourcemap: true, target: ['chrome110', 'safari16.4', 'firefox115'],
                legalComments: 'external', logLevel: 'warning'};
// The page: an ES module. The workers: classic scripts (LiteRT.js loads its Wasm loader with importScripts).
await build({...common, entryPoints: [join(here, 'src/app.js')], outfile: join(out, 'app.js'), format: 'esm'});
await build({...common, entryPoints: [join(here, 'src/worker.js')], outfile: join(out, 'worker.js'), format: 'iife'});

cpSync(join(here, 'static'), out, {recursive: true});
if (process.argv[3]) cpSync(process.argv[3], out, {recursive: true});
const litert = join(here, 'node_modules/@litertjs/core/wasm');
for (const f of readdirSync(litert)) {
  // The single-threaded builds: relaxed SIMD, and "compat" for browsers without it (Safari). The threaded
  // and JSPI builds are not used (threads need cross-origin isolation; the page runs one worker per core).
  if (/^litert_wasm_(compat_)?internal\.(js|wasm)$/.test(f)) copyFileSync(join(litert, f), join(out, 'wasm', f));
}
copyFileSync(join(here, 'node_modules/parquet-wasm/esm/parquet_wasm_bg.wasm'), join(out, 'wasm/parquet_wasm_bg.wasm'));

// The service worker's cache is named after everything it may serve (the model included), so a new build
// replaces it; and it knows each file's size and sha256, so it keeps only what arrived whole and right.
const hash = createHash('sha256');
const files = {};
const walk = (dir, rel) => {
  for (const e of readdirSync(dir, {withFileTypes: true}).sort((a, b) => a.name.localeCompare(b.name))) {
    const p = join(dir, e.name);
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) { walk(p, r); continue; }
    const data = readFileSync(p);
    hash.update(e.name);
    hash.update(data);
    if (r !== 'config.json' && !r.endsWith('.map')) {   // config.json: the server's own answer, checked by the page
      files[r] = {size: data.length, sha256: createHash('sha256').update(data).digest('hex')};
    }
  }
};
walk(out, '');
const buildId = hash.digest('hex').slice(0, 12);
await build({...common, entryPoints: [join(here, 'src/sw.js')], outfile: join(out, 'sw.js'), format: 'iife',
             define: {__BUILD__: JSON.stringify(buildId), __FILES__: JSON.stringify(files)}});
writeFileSync(join(out, 'build.json'), JSON.stringify({build: buildId}) + '\n');
console.log(`built ${out} (${buildId})`);

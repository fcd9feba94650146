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
// The page: an ES module. The workers: classic scripts, one per LiteRT.js Wasm build, each with that build's
// Emscripten loader in front (what LiteRT.js would fetch with importScripts): the page starts the one its browser
// runs, and hands it the Wasm it compiled itself (web/src/wasm.js), so a worker fetches nothing. (In WebKit the
// service worker does not see a worker's own requests: a worker that fetched its Wasm could not start offline.)
await build({...common, entryPoints: [join(here, 'src/app.js')], outfile: join(out, 'app.js'), format: 'esm'});
const litert = join(here, 'node_modules/@litertjs/core/wasm');
for (const [name, loader] of [['simd', 'litert_wasm_internal'], ['compat', 'litert_wasm_compat_internal']]) {
  // The single-threaded builds: relaxed SIMD, and "compat" for browsers without it (Safari). The threaded
  // and JSPI builds are not used (threads need cross-origin isolation; the page runs one worker per core).
  await build({...common, entryPoints: [join(here, 'src/worker.js')], outfile: join(out, `worker-${name}.js`),
               format: 'iife', banner: {js: readFileSync(join(litert, `${loader}.js`), 'utf8')}});
  copyFileSync(join(litert, `${loader}.wasm`), join(out, 'wasm', `${loader}.wasm`));
}

cpSync(join(here, 'static'), out, {recursive: true});
if (process.argv[3]) cpSync(process.argv[3], out, {recursive: true});
copyFileSync(join(here, 'node_modules/@cwasm/jpeg-turbo/jpeg-turbo.wasm'), join(out, 'wasm/jpeg-turbo.wasm'));

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

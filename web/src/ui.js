// What the person sees: buttons, progress, the answer, the photos' list with their reasons, the queue.
// Plain DOM, no framework; every number shown comes from the app's state.

import {pageLanguage} from './catalog.js';
import {UNKNOWN} from './identify.js';

const $ = (id) => document.getElementById(id);
const MAX_LISTED = 60;
let thumbUrls = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('data-')) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

const pct = (score) => `${Math.round(score * 100)}%`;

export function status(text, kind = '') {
  const s = $('status');
  s.textContent = text;
  s.className = `status ${kind}`;
}

export function modelLine(card, file) {
  $('model').textContent = `Model ${card.name} (${(card.size_bytes / 1e6).toFixed(1)} MB, fingerprint ` +
    `${card.sha256.slice(0, 12)}…), run in this page by LiteRT.js`;
  $('model').dataset.sha256 = card.sha256;
  $('model').dataset.file = file;
}

/** What this browser does differently from the cloud's decoding, learned by the probes: one line, or ''. */
export function engineLine(engine) {
  if (!engine || !engine.caps) return '';
  const c = engine.caps;
  const off = [];
  if (!c.draft) off.push('large JPEGs are decoded fully, then averaged (no exact scaled decode)');
  else if (!c.draft.exact) off.push('large JPEGs use a scaled decode close to, not equal to, the cloud\'s');
  if (!c.alpha) off.push('transparency is composited 1 level off');
  if (!c.deep) off.push('16-bit photos are reduced to 8 bits differently');
  for (const [f, exact] of Object.entries(c.exact)) if (exact === false) off.push(`${f} decodes differently`);
  const wasm = engine.wasm === 'compat' ? ' LiteRT.js runs its compat Wasm here (no relaxed SIMD): vectors equal ' +
    'the cloud\'s to float rounding.' : '';
  return (off.length ? `In this browser ${off.join('; ')}: such photos are marked.` : 'This browser decodes photos as the cloud does.') + wasm;
}

/** Where this page's vectors go: the bucket and root, and on which server (the local stack, or AWS's region). */
export function whereLine(config, root) {
  if (!config.bucket || !config.identityPoolId) return '';
  let on = `AWS, ${config.region || 'its region'}`;
  if (config.endpoint) {
    const host = new URL(config.endpoint).host;
    on = /^(127\.0\.0\.1|localhost|\[::1\])(:|$)/.test(host) ? `the local stack on this machine, ${host}` : host;
  }
  return `Contributes to s3://${config.bucket}/${root ? `${root}/` : ''} (${on})`;
}

export function ready(app) {
  for (const id of ['take', 'choose', 'folder']) $(id).disabled = false;
  const t = app.timings;
  status(`Ready: model started in ${(t.modelStartMs / 1000).toFixed(1)} s on ${t.workers} worker${t.workers > 1 ? 's' : ''}.`, 'ok');
  $('engine').textContent = engineLine(app.engine);
  if (app.engine) {
    $('engine').dataset.wasm = app.engine.wasm;
    $('engine').dataset.caps = JSON.stringify({...app.engine.caps, report: undefined});
  }
  $('device').textContent = `This device: ${app.clientId}`;
  $('device').dataset.clientId = app.clientId;
  $('where').textContent = whereLine(app.config, app.root);
  $('problems').textContent = app.problems.join(' · ');
  document.body.dataset.state = 'ready';
  queueLine(app);
}

export function fatal(err) {
  status(`Cannot start: ${err.message}`, 'error');
  document.body.dataset.state = 'error';
}

export function publishedLine(app) {
  const p = app.published;
  const line = $('published');
  if (!p || p.missing) {
    line.textContent = p ? `Identification unavailable: ${p.missing}` : '';
    line.dataset.projectionId = '';
    return;
  }
  line.textContent = `Identifies ${p.index.labels.length} fruits (projection ${p.projection.projectionId}, ` +
    `${p.projection.k} components)`;
  line.dataset.projectionId = p.projection.projectionId;
}

export async function queueLine(app) {
  const q = $('queue');
  if (!app.queue) {
    q.textContent = 'Contribution is off: this page has no bucket and identity pool configured.';
    return;
  }
  const waiting = await app.queue.pending();
  const aside = await app.queue.aside();
  q.dataset.pending = String(waiting);
  q.dataset.sent = String(app.queue.sent);
  q.dataset.aside = String(aside.length);
  const parts = [`${app.queue.sent} file${app.queue.sent === 1 ? '' : 's'} of vectors sent this visit`];
  parts.push(waiting ? `${waiting} waiting` : 'nothing waiting');
  if (aside.length) parts.push(`${aside.length} set aside, not sent (${aside[0].reason})`);
  if (app.queue.lastError && !aside.some((a) => a.reason === app.queue.lastError)) parts.push(app.queue.lastError);
  $('retry-aside').hidden = aside.length === 0;
  q.textContent = parts.join(' · ');
  q.className = app.queue.lastError ? 'warn' : '';
}

let lastPaint = 0;

export function progress(done, total, batch) {
  const now = performance.now();
  if (done > 0 && done < total && now - lastPaint < 250) return;   // a few repaints a second, not one per photo
  lastPaint = now;
  const bar = $('progress');
  bar.hidden = total === 0;
  bar.max = Math.max(total, 1);
  bar.value = done;
  const s = (performance.now() - batch.started) / 1000;
  status(total ? `Vectorizing ${done} / ${total} photos${s > 0.5 ? ` · ${(done / s).toFixed(0)} per second` : ''}…` : 'No photos in that pick.');
}

// The card's own words, in the languages the catalog speaks (contract/catalog.py LANGUAGES).
const WORDS = {
  en: {season: 'Season', storage: 'Keeping', per100: 'Per 100 g', sources: 'Sources', notSure: 'Not sure',
       or: 'or', from: 'from', colon: ': ',
       energy_kj: 'Energy', energy_kcal: 'Energy', water_g: 'Water', sugars_g: 'Sugars', fibre_g: 'Fibre',
       vitamin_c_mg: 'Vitamin C', potassium_mg: 'Potassium'},
  fr: {season: 'Saison', storage: 'Conservation', per100: 'Pour 100 g', sources: 'Sources', notSure: 'Pas sûr',
       or: 'ou', from: 'd\'après', colon: '\u00a0: ',
       energy_kj: 'Énergie', energy_kcal: 'Énergie', water_g: 'Eau', sugars_g: 'Sucres', fibre_g: 'Fibres',
       vitamin_c_mg: 'Vitamine C', potassium_mg: 'Potassium'},
};

/** The page's language for the catalog: the one chosen in Settings, else navigator.language (English otherwise). */
export function language() {
  let chosen = '';
  try { chosen = localStorage.getItem('fruits.lang') || ''; } catch { /* storage refused: automatic */ }
  return pageLanguage(chosen || navigator.language);
}

function named(catalog, label, lang) { return catalog ? catalog.name(label, lang) : label; }

function answerText(answer, catalog, lang) {
  if (!answer) return {title: 'Vectorized', detail: 'no projection published yet to identify it'};
  const [best, next] = answer.ranked;
  if (answer.answer === UNKNOWN) {
    return {title: 'Not a fruit I know', detail: `nearest: ${named(catalog, best.label, lang)} (too far to say)`};
  }
  if (answer.answer !== answer.label) {    // "not sure: A or B"
    const w = WORDS[lang] || WORDS.en;
    return {title: `${w.notSure}: ${named(catalog, answer.label, lang)} ${w.or} ${named(catalog, answer.runnerUp, lang)}?`,
            detail: `${best.label} ${pct(best.score)}, ${next.label} ${pct(next.score)}: too close to tell apart`};
  }
  return {title: `${named(catalog, best.label, lang)} · ${pct(best.score)}`,
          detail: answer.ranked.slice(1).map((r) => `${named(catalog, r.label, lang)} ${pct(r.score)}`).join(', ')};
}

const number = (v, lang) => v.toLocaleString(lang === 'fr' ? 'fr-FR' : 'en-GB', {maximumFractionDigits: v < 10 ? 1 : 0});

/** What the catalog says of a label's fruit, as text only (every value set with textContent: never markup). */
export function fruitCard(catalog, label, lang) {
  const c = catalog && catalog.card(label, lang);
  if (!c) return null;
  const w = WORDS[lang] || WORDS.en;
  const used = new Map();
  const cite = (item) => { if (item && item.source) used.set(item.source.name, item.source); return item; };
  const box = el('section', {class: 'fruit-card', 'data-fruit': c.id, 'data-label': label, 'data-lang': lang});
  box.append(el('h3', {class: 'fruit-name'}, c.name + (c.variety ? ` · ${c.variety}` : '')));
  if (c.scientific) box.append(el('p', {class: 'scientific'}, cite(c.scientific).value));
  if (c.description) box.append(el('p', {class: 'description'}, cite(c.description).value));
  for (const key of ['season', 'storage']) {
    if (c[key]) box.append(el('p', {class: key}, el('b', {}, `${w[key]}${w.colon}`), cite(c[key]).value));
  }
  if (c.nutrition && c.nutrition.rows.length) {
    const food = c.nutrition.food ? cite(c.nutrition.food) : null;
    const table = el('table', {class: 'nutrition'});
    const kcal = c.nutrition.rows.find((r) => r.key === 'energy_kcal');
    for (const r of c.nutrition.rows) {
      cite(r);
      if (r.key === 'energy_kcal') continue;
      const value = `${number(r.value, lang)} ${r.unit}` + (r.key === 'energy_kj' && kcal ? ` (${number(kcal.value, lang)} kcal)` : '');
      table.append(el('tr', {'data-nutrient': r.key}, el('th', {}, w[r.key] || r.key), el('td', {}, value)));
    }
    box.append(el('p', {class: 'per100'}, el('b', {}, w.per100),
                  food ? ` (${w.from} ${food.source ? food.source.name.split(' (')[0] : ''}: ${food.value})` : ''), table);
  }
  const sources = el('p', {class: 'sources small'}, `${w.sources}${w.colon}`);
  [...used.values()].forEach((src, i) => {
    if (i) sources.append(' · ');
    sources.append(el('span', {title: `${src.version}; ${src.licence}`}, src.name));
  });
  if (used.size) box.append(sources);
  return box;
}

function thumb(file) {
  const url = URL.createObjectURL(file);
  thumbUrls.push(url);
  return el('img', {src: url, alt: '', loading: 'lazy', width: 56, height: 56});
}

export function results(app, batch) {
  for (const url of thumbUrls) URL.revokeObjectURL(url);
  thumbUrls = [];
  $('progress').hidden = true;
  const n = batch.rows.length;
  status(`${n} photo${n === 1 ? '' : 's'} vectorized in ${batch.seconds.toFixed(1)} s` +
         (batch.rejects.length ? ` · ${batch.rejects.length} could not be read` : '') + '.', n ? 'ok' : 'warn');
  // The answer for the first photo, large: the one a person just took.
  const answer = $('answer');
  answer.hidden = n === 0;
  answer.replaceChildren();
  const catalog = app.published && app.published.catalog;
  const lang = language();
  if (n) {
    const first = batch.rows[0];
    const t = answerText(first.answer, catalog, lang);
    answer.append(thumb(first.file), el('div', {}, el('p', {class: 'big', 'data-label': first.answer ? first.answer.answer : ''}, t.title),
                                           el('p', {class: 'small'}, t.detail)));
    const a = first.answer;
    if (a && a.answer !== UNKNOWN) {       // a card for the fruit named; for "not sure", both; none for "unknown"
      const cards = (a.answer === a.label ? [a.label] : [a.label, a.runnerUp]).map((l) => fruitCard(catalog, l, lang)).filter(Boolean);
      if (cards.length) answer.append(el('div', {class: 'cards'}, ...cards));
    }
  }
  $('batch').hidden = false;
  $('batch-summary').textContent = [`${n} vectorized`, `${batch.rejects.length} rejected`, `${batch.duplicates} duplicates`,
    batch.skipped.length ? `${batch.skipped.length} skipped (not photos)` : '',
    batch.approximate ? `${batch.approximate} decoded differently from the cloud (close: sent all the same; see the list)` : '',
    ...(batch.labelsRefused || []).map((r) => `label "${r.label}" refused (${r.problem}): sent without a label`)]
    .filter(Boolean).join(' · ');
  const list = $('rows');
  list.replaceChildren(...batch.rows.slice(0, MAX_LISTED).map((row) => {
    const t = answerText(row.answer, catalog, lang);
    const item = el('li', {'data-image-id': row.imageId, 'data-label': row.answer ? row.answer.answer : ''},
                    thumb(row.file), el('span', {class: 'name'}, row.source), el('span', {class: 'what'}, t.title));
    if (row.approximate) {
      item.dataset.approximate = row.approximate;
      item.append(el('span', {class: 'note', title: row.approximate}, 'decoded differently from the cloud'));
    }
    return item;
  }));
  if (n > MAX_LISTED) list.append(el('li', {class: 'small'}, `… and ${n - MAX_LISTED} more`));
  const box = $('rejects-box');
  const problems = [...batch.rejects, ...batch.skipped];
  box.hidden = problems.length === 0;
  $('rejects-summary').textContent = `${batch.rejects.length} photo${batch.rejects.length === 1 ? '' : 's'} could not be read` +
    (batch.skipped.length ? `, ${batch.skipped.length} other files skipped` : '');
  $('rejects').replaceChildren(...problems.map((r) => el('li', {'data-source': r.source}, el('b', {}, r.source), `: ${r.reason}`)));
  box.open = batch.rows.length === 0;
}

/** The batch is vectorized, shown and its vectors queued: scripts wait for this mark. */
export function batchDone(batch) {
  document.body.dataset.batch = String(batch.started);
}

export function bind(app) {
  const onPick = (input) => async () => {
    const files = Array.from(input.files || []);
    input.value = '';
    if (!files.length) return;
    for (const id of ['take', 'choose', 'folder']) $(id).disabled = true;
    try {
      await app.ready;
      await app.handleFiles(files, {label: $('label').value.trim() || null});
    } catch (err) {
      status(`Error: ${err.message}`, 'error');
    } finally {
      for (const id of ['take', 'choose', 'folder']) $(id).disabled = false;
    }
  };
  for (const id of ['take', 'choose', 'folder']) $(id).addEventListener('change', onPick($(id)));
  $('save').addEventListener('click', async () => {
    try {
      const bytes = await app.lastBatchParquet();
      const a = $('download');
      a.href = URL.createObjectURL(new Blob([bytes], {type: 'application/vnd.apache.parquet'}));
      a.download = 'vectors.parquet';
      a.click();
    } catch (err) {
      status(`Error: ${err.message}`, 'error');
    }
  });
  $('retry-aside').addEventListener('click', () => app.queue && app.queue.retryAside());
  try { $('lang').value = localStorage.getItem('fruits.lang') || ''; } catch { /* storage refused: automatic */ }
  $('lang').addEventListener('change', () => {
    try { localStorage.setItem('fruits.lang', $('lang').value); } catch { /* storage refused: for this visit only */ }
    document.documentElement.lang = language();
    if (app.lastBatch) results(app, app.lastBatch);     // the answer's card again, in the language chosen
  });
  document.documentElement.lang = language();
  $('reset-identity').addEventListener('click', async () => {
    if (!app.identity || !confirm('Start a new device identity? New vectors will go to a new folder.')) return;
    try {
      app.clientId = await app.identity.resetIdentity();
      $('device').textContent = `This device: ${app.clientId}`;
      $('device').dataset.clientId = app.clientId;
      // What waits, or was refused, under the old identity is this device's own: sent again under the new one.
      if (app.queue) await app.queue.retryAside();
    } catch (err) {
      status(`Error: ${err.message}`, 'error');
    }
  });
  const net = () => {
    $('net').textContent = navigator.onLine ? 'online' : 'offline';
    $('net').className = `pill ${navigator.onLine ? '' : 'off'}`;
  };
  window.addEventListener('online', net);
  window.addEventListener('offline', net);
  net();
}

// What the person sees: buttons, progress, the answer and its candidates, the photos' list with their reasons, the
// queue. Plain DOM, no framework; every word from i18n.js in the page's language, every number from the app's state.

import * as i18n from './i18n.js';
import {UNKNOWN} from './identify.js';
import {varietyIn} from './catalog.js';

const {t} = i18n;
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

export function status(text, kind = '') {
  const s = $('status');
  s.textContent = text;
  s.className = `status ${kind}`;
}

export function modelLine(card, file) {
  $('model').textContent = t('modelLine', {name: card.name, mb: i18n.number(card.size_bytes / 1e6),
                                           sha: card.sha256.slice(0, 12)});
  $('model').dataset.sha256 = card.sha256;
  $('model').dataset.file = file;
}

/** What this browser does differently from the cloud's decoding, learned by the probes: one line, or ''. */
export function engineLine(engine) {
  if (!engine || !engine.caps) return '';
  const c = engine.caps;
  const off = [];
  if (!c.draft) off.push(t('engineFull'));
  else if (!c.draft.exact) off.push(t('engineClose'));
  if (!c.alpha) off.push(t('engineAlpha'));
  if (!c.deep) off.push(t('engineDeep'));
  for (const [f, exact] of Object.entries(c.exact)) if (exact === false) off.push(t('engineFormat', {format: f}));
  return (off.length ? t('decodesDifferently', {what: off.join('; ')}) : t('decodesAsCloud')) +
    (engine.wasm === 'compat' ? t('engineCompat') : '');
}

/** Where this page's vectors go: the bucket and root, and on which server (the local stack, or AWS's region). */
export function whereLine(config, root) {
  if (!config.bucket || !config.identityPoolId) return '';
  let on = t('awsRegion', {region: config.region || t('itsRegion')});
  if (config.endpoint) {
    const host = new URL(config.endpoint).host;
    on = /^(127\.0\.0\.1|localhost|\[::1\])(:|$)/.test(host) ? t('localStack', {host}) : host;
  }
  return t('contributesTo', {where: `s3://${config.bucket}/${root ? `${root}/` : ''}`, on});
}

export function ready(app) {
  for (const id of ['take', 'choose', 'folder']) $(id).disabled = false;
  const tm = app.timings;
  status(t('ready', {s: i18n.number(tm.modelStartMs / 1000), n: tm.workers,
                     workers: t('worker', {n: tm.workers})}), 'ok');
  app.readyShown = true;
  $('engine').textContent = engineLine(app.engine);
  if (app.engine) {
    $('engine').dataset.wasm = app.engine.wasm;
    $('engine').dataset.caps = JSON.stringify({...app.engine.caps, report: undefined});
  }
  $('device').textContent = t('thisDevice', {id: app.clientId});
  $('device').dataset.clientId = app.clientId;
  $('where').textContent = whereLine(app.config, app.root);
  $('problems').textContent = app.problems.map((p) => t(p.key, p.params)).join(' · ');
  document.body.dataset.state = 'ready';
  queueLine(app);
}

export function fatal(err) {
  status(t('cannotStart', {reason: i18n.reason(err.message)}), 'error');
  document.body.dataset.state = 'error';
}

export function publishedLine(app) {
  const p = app.published;
  const line = $('published');
  if (!p || p.missing) {
    line.textContent = p ? t('identificationUnavailable', {reason: i18n.reason(p.missing)}) : '';
    line.dataset.projectionId = '';
    return;
  }
  line.textContent = t('identifies', {n: p.index.labels.length, id: p.projection.projectionId, k: p.projection.k});
  line.dataset.projectionId = p.projection.projectionId;
}

export async function queueLine(app) {
  const q = $('queue');
  if (!app.queue) {
    q.textContent = t('contributionOff');
    return;
  }
  const waiting = await app.queue.pending();
  const aside = await app.queue.aside();
  q.dataset.pending = String(waiting);
  q.dataset.sent = String(app.queue.sent);
  q.dataset.aside = String(aside.length);
  const parts = [t('sent', {n: app.queue.sent})];
  parts.push(waiting ? t('waiting', {n: waiting}) : t('nothingWaiting'));
  if (aside.length) parts.push(t('setAside', {n: aside.length, reason: i18n.reason(aside[0].reason)}));
  if (app.queue.lastError && !aside.some((a) => a.reason === app.queue.lastError)) parts.push(i18n.reason(app.queue.lastError));
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
  status(total ? t('vectorizing', {done, total}) + (s > 0.5 ? ` · ${t('perSecond', {n: i18n.number(done / s, 0)})}` : '')
    : t('noPhotos'));
}

/** The page's language: the one chosen in Settings (remembered), else the browser's first the page speaks. */
export function language() {
  let chosen = '';
  try { chosen = localStorage.getItem('fruits.lang') || ''; } catch { /* storage refused: automatic */ }
  return i18n.pickLanguage(chosen, navigator.languages && navigator.languages.length ? navigator.languages
    : [navigator.language]);
}

function named(catalog, label) { return catalog ? catalog.name(label, i18n.language()) : label; }

/** A label's fruit and variety, apart: {fruit, variety} in the page's language (the label itself without a card). */
function parts(catalog, label) {
  const found = catalog && catalog.lookup(label);
  if (!found) return {fruit: label, variety: ''};
  const c = catalog.card(label, i18n.language());
  return {fruit: c.name, variety: varietyIn(found.variety, i18n.language()) || ''};
}

/** One line about a label's fruit from its card: the description's first sentence, or ''. */
function cardLine(catalog, label) {
  const c = catalog && catalog.card(label, i18n.language());
  return c && c.description ? `${c.description.value.split('. ')[0].replace(/\.$/, '')}.` : '';
}

/** The answer as a person reads it: a title, a line under it, and whether candidates are offered. */
function answerText(answer, catalog, photos = 1) {
  if (!answer) return {title: t('vectorizedOnly'), detail: t('noProjection'), ask: false};
  const combined = photos > 1 ? ` ${t('combined', {n: photos})}` : '';
  if (answer.answer === UNKNOWN) return {title: t('unknown'), detail: t('unknownDetail') + combined, ask: true};
  if (answer.answer !== answer.label) {    // "not sure: A or B"
    if (answer.species) {                  // two varieties of one fruit: the fruit is named
      const a = parts(catalog, answer.label);
      const b = parts(catalog, answer.runnerUp);
      if (a.variety && b.variety && a.fruit === b.fruit) {
        return {title: t('notSureSpecies', {species: a.fruit, a: a.variety, b: b.variety}), detail: combined.trim(), ask: true,
                species: true};
      }
    }
    return {title: t('notSure', {a: named(catalog, answer.label), b: named(catalog, answer.runnerUp)}),
            detail: combined.trim(), ask: true};
  }
  const sure = answer.confidence === null || answer.confidence === undefined ? '' :
    t('confidence', {p: i18n.percent(answer.confidence)});
  return {title: named(catalog, answer.label), detail: [sure, combined.trim()].filter(Boolean).join(' '), ask: false};
}

const number = (v) => i18n.number(v, v < 10 ? 1 : 0);

/** What the catalog says of a label's fruit, as text only (every value set with textContent: never markup). */
export function fruitCard(catalog, label) {
  const lang = i18n.language();
  const c = catalog && catalog.card(label, lang);
  if (!c) return null;
  const used = new Map();
  const cite = (item) => { if (item && item.source) used.set(item.source.name, item.source); return item; };
  const box = el('section', {class: 'fruit-card', 'data-fruit': c.id, 'data-label': label, 'data-lang': lang});
  box.append(el('h3', {class: 'fruit-name'}, c.name + (c.variety ? ` · ${c.variety}` : '')));
  if (c.scientific) box.append(el('p', {class: 'scientific'}, cite(c.scientific).value));
  if (c.description) box.append(el('p', {class: 'description'}, cite(c.description).value));
  for (const key of ['season', 'storage']) {
    if (c[key]) box.append(el('p', {class: key}, el('b', {}, `${t(key)}${t('colon')}`), cite(c[key]).value));
  }
  if (c.nutrition && c.nutrition.rows.length) {
    const food = c.nutrition.food ? cite(c.nutrition.food) : null;
    const table = el('table', {class: 'nutrition'});
    const kcal = c.nutrition.rows.find((r) => r.key === 'energy_kcal');
    for (const r of c.nutrition.rows) {
      cite(r);
      if (r.key === 'energy_kcal') continue;
      const value = `${number(r.value)} ${r.unit}` + (r.key === 'energy_kj' && kcal ? ` (${number(kcal.value)} kcal)` : '');
      table.append(el('tr', {'data-nutrient': r.key}, el('th', {}, t(r.key)), el('td', {}, value)));
    }
    box.append(el('p', {class: 'per100'}, el('b', {}, t('per100')),
                  food ? ` (${t('from')} ${food.source ? food.source.name.split(' (')[0] : ''}${t('colon')}${food.value})` : ''),
               table);
  } else {
    box.append(el('p', {class: 'no-nutrition small'}, t('noNutrition')));
  }
  const sources = el('p', {class: 'sources small'}, `${t('sources')}${t('colon')}`);
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

/** The answer for the fruit in front of the person (the first photo of the last pick, and any added of it): its name
 *  and calibrated confidence, or "not sure" / "unknown" with the candidates as buttons ("Is it…?": a tap records the
 *  person's choice as the photo's label, sent with its vector), the fruit's card, and a button to add a photo. */
export function renderAnswer(app) {
  const answer = $('answer');
  const cur = app.current;
  answer.hidden = !cur;
  answer.replaceChildren();
  if (!cur) return;
  const catalog = app.published && app.published.catalog;
  const a = cur.answer;
  const txt = answerText(a, catalog, cur.rows.length);
  answer.append(thumb(cur.rows[0].file), el('div', {},
    el('p', {class: 'big', 'data-label': a ? a.answer : '', 'data-species': a ? a.species || '' : ''}, txt.title),
    el('p', {class: 'small', 'data-confidence': a && a.confidence !== null && a.confidence !== undefined ? String(a.confidence) : ''},
       txt.detail)));
  if (cur.chosen !== undefined) {
    answer.append(el('p', {class: 'chosen ok', 'data-chosen': cur.chosen || ''},
                     cur.chosen ? t('chosen', {name: named(catalog, cur.chosen)}) : t('noneChosen')));
  } else if (a && txt.ask && cur.held) {
    const box = el('div', {class: 'candidates'}, el('p', {class: 'ask'}, a.answer === UNKNOWN ? t('mayBe') : t('isIt')));
    for (const r of a.ranked.slice(0, 3)) {
      const button = el('button', {type: 'button', class: 'button candidate', 'data-candidate': r.label},
                        el('span', {class: 'candidate-name'}, named(catalog, r.label)),
                        el('span', {class: 'candidate-line small'}, cardLine(catalog, r.label)));
      button.addEventListener('click', () => app.choose(r.label));
      box.append(button);
    }
    const none = el('button', {type: 'button', class: 'button quiet', 'data-candidate': ''}, t('noneOfThese'));
    none.addEventListener('click', () => app.choose(null));
    box.append(none);
    answer.append(box);
  }
  const add = el('label', {class: 'button quiet add-photo'},
                 el('input', {type: 'file', accept: 'image/*', capture: 'environment', hidden: true, id: 'add-photo'}),
                 t('addPhoto'));
  add.firstChild.addEventListener('change', async (e) => {
    const file = e.target.files && e.target.files[0];
    e.target.value = '';
    if (file) {
      try { await app.addPhoto(file); } catch (err) { status(t('error', {reason: i18n.reason(err.message)}), 'error'); }
    }
  });
  answer.append(add);
  if (a && a.answer !== UNKNOWN) {       // a card for the fruit named; for "not sure", both; none for "unknown"
    const labels = cur.chosen ? [cur.chosen] : a.answer === a.label ? [a.label] : [a.label, a.runnerUp];
    const cards = labels.map((l) => fruitCard(catalog, l)).filter(Boolean);
    if (cards.length) answer.append(el('div', {class: 'cards'}, ...cards));
  } else if (cur.chosen) {
    const card = fruitCard(catalog, cur.chosen);
    if (card) answer.append(el('div', {class: 'cards'}, card));
  }
}

export function results(app, batch) {
  for (const url of thumbUrls) URL.revokeObjectURL(url);
  thumbUrls = [];
  $('progress').hidden = true;
  const n = batch.rows.length;
  status(t('vectorized', {n, s: i18n.number(batch.seconds, batch.seconds < 1 ? 2 : 1)}).replace(/\.$/, '') +
         (batch.rejects.length ? ` · ${t('unread', {n: batch.rejects.length})}` : '') + '.', n ? 'ok' : 'warn');
  renderAnswer(app);
  const catalog = app.published && app.published.catalog;
  $('batch').hidden = false;
  $('batch-summary').textContent = [t('summaryVectorized', {n}), t('summaryRejected', {n: batch.rejects.length}),
    t('summaryDuplicates', {n: batch.duplicates}),
    batch.skipped.length ? t('summarySkipped', {n: batch.skipped.length}) : '',
    batch.approximate ? t('summaryApproximate', {n: batch.approximate}) : '',
    ...(batch.labelsRefused || []).map((r) => t('labelRefused', {label: r.label, problem: i18n.reason(r.problem)}))]
    .filter(Boolean).join(' · ');
  const list = $('rows');
  list.replaceChildren(...batch.rows.slice(0, MAX_LISTED).map((row) => {
    const what = answerText(row.answer, catalog);
    const item = el('li', {'data-image-id': row.imageId, 'data-label': row.answer ? row.answer.answer : ''},
                    thumb(row.file), el('span', {class: 'name'}, row.source), el('span', {class: 'what'}, what.title));
    if (row.approximate) {
      item.dataset.approximate = row.approximate;
      item.append(el('span', {class: 'note', title: i18n.reason(row.approximate)}, t('decodedDifferently')));
    }
    return item;
  }));
  if (n > MAX_LISTED) list.append(el('li', {class: 'small'}, t('andMore', {n: n - MAX_LISTED})));
  const box = $('rejects-box');
  const problems = [...batch.rejects, ...batch.skipped];
  box.hidden = problems.length === 0;
  $('rejects-summary').textContent = t('rejectsSummary', {n: batch.rejects.length}) +
    (batch.skipped.length ? t('otherSkipped', {n: batch.skipped.length}) : '');
  $('rejects').replaceChildren(...problems.map((r) => el('li', {'data-source': r.source, 'data-reason': r.reason},
                                                          el('b', {}, r.source), `${t('colon')}${i18n.reason(r.reason)}`)));
  box.open = batch.rows.length === 0;
}

/** The batch is vectorized, shown and its vectors queued: scripts wait for this mark. */
export function batchDone(batch) {
  document.body.dataset.batch = String(batch.started);
}

/** Every word of the page in the language now chosen (at start, and when Settings changes it). */
export function relabel(app) {
  i18n.setLanguage(language());
  i18n.localize();
  net();
  if (app.readyShown) ready(app);
  else if (app.state === 'starting') status(t('starting'));
  if (app.card) modelLine(app.card, app.contract.model.file);
  if (app.published) publishedLine(app);
  if (app.lastBatch) results(app, app.lastBatch);
  else renderAnswer(app);
}

function net() {
  $('net').textContent = navigator.onLine ? t('online') : t('offline');
  $('net').className = `pill ${navigator.onLine ? '' : 'off'}`;
}

export function bind(app) {
  i18n.setLanguage(language());
  i18n.localize();
  const onPick = (input) => async () => {
    const files = Array.from(input.files || []);
    input.value = '';
    if (!files.length) return;
    for (const id of ['take', 'choose', 'folder']) $(id).disabled = true;
    try {
      await app.ready;
      await app.handleFiles(files, {label: $('label').value.trim() || null});
    } catch (err) {
      status(t('error', {reason: i18n.reason(err.message)}), 'error');
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
      status(t('error', {reason: i18n.reason(err.message)}), 'error');
    }
  });
  $('retry-aside').addEventListener('click', () => app.queue && app.queue.retryAside());
  try { $('lang').value = localStorage.getItem('fruits.lang') || ''; } catch { /* storage refused: automatic */ }
  $('lang').addEventListener('change', () => {
    try { localStorage.setItem('fruits.lang', $('lang').value); } catch { /* storage refused: for this visit only */ }
    relabel(app);
  });
  $('reset-identity').addEventListener('click', async () => {
    if (!app.identity || !confirm(t('confirmReset'))) return;
    try {
      app.clientId = await app.identity.resetIdentity();
      $('device').textContent = t('thisDevice', {id: app.clientId});
      $('device').dataset.clientId = app.clientId;
      // What waits, or was refused, under the old identity is this device's own: sent again under the new one.
      if (app.queue) await app.queue.retryAside();
    } catch (err) {
      status(t('error', {reason: i18n.reason(err.message)}), 'error');
    }
  });
  window.addEventListener('online', net);
  window.addEventListener('offline', net);
  net();
}

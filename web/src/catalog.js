// The fruit catalog in the page (contract/catalog.py mirrored): the same rules, with the same messages, one line
// per problem; the catalog a pointer names is checked (its content must be its id, then the rules) before any of
// it is shown. What a person reads comes from here: the fruit's name in the page's language, its variety, the
// description, season, storage, and nutrition with its source.

import {inRanges} from './labels.js';
import {sha256Hex} from './sha256.js';

export const CATALOG_FORMAT = 1;
export const LANGUAGES = ['en', 'fr'];
export const NUTRIENTS = {
  energy_kj: ['kJ', 4000], energy_kcal: ['kcal', 1000], water_g: ['g', 100], sugars_g: ['g', 100],
  fibre_g: ['g', 100], vitamin_c_mg: ['mg', 3000], potassium_mg: ['mg', 5000]};
export const MAX_BYTES = 1000000;
const MAX_FRUITS = 2000;
const TEXT_LIMITS = {name: 80, scientific_name: 120, description: 600, season: 300, storage: 300, food: 120};
const ID = /^[a-z0-9][a-z0-9-]{0,39}$/;
const SOURCE_ID = /^[a-z0-9][a-z0-9.-]{0,39}$/;
const LANG = /^[a-z]{2}$/;
const TOP = ['format', 'version', 'sources', 'fruits'];
const SOURCE_KEYS = ['name', 'version', 'licence', 'url', 'note'];
const FRUIT_KEYS = ['id', 'labels', 'name', 'scientific_name', 'description', 'season', 'storage', 'nutrition'];
// contract.catalog._URL: printable ASCII but space " < >
const URL_RE = /^https?:\/\/[!#-;=?-~]+$/;

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isText = (v) => typeof v === 'string';
const chars = (s) => [...s].length;
const q = (s) => JSON.stringify(s);   // json.dumps(s, ensure_ascii=False)
const sorted = (xs) => [...xs].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
const strip = (s) => s.replace(/^\s+|\s+$/g, '');

// What a text shown as it is may not hold: Cc Cf Co Cs Zl Zp from the labels' own Unicode table (contract/unicode.json,
// as contract.labels.control_in), never this browser's \p{Cf}, which knows characters Python's Unicode does not.
let CONTROLS = null;

function badText(text) {
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (inRanges(CONTROLS, cp)) return `holds the character U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;
  }
  return null;
}

/** check_catalog: every problem of a parsed catalog, one line each; [] for a good catalog. */
export function checkCatalog(data, labelRules) {
  CONTROLS = labelRules.rules.unicode.controls;
  const out = [];
  if (!isObject(data)) return ['the catalog is not a JSON object'];
  for (const key of sorted(Object.keys(data).filter((k) => !TOP.includes(k)))) {
    out.push(`${key}: not a catalog field (fields: ${sorted(TOP).join(', ')})`);
  }
  if (data.format !== CATALOG_FORMAT) out.push(`format: must be ${CATALOG_FORMAT}`);
  if ('version' in data && !(isText(data.version) && chars(data.version) <= 100)) {
    out.push('version: must be text of at most 100 characters');
  }
  let sources = data.sources;
  if (!isObject(sources) || !Object.keys(sources).length) {
    out.push('sources: must be an object naming at least one source');
    sources = {};
  }
  for (const sid of sorted(Object.keys(sources))) {
    const where = `sources.${sid}`;
    if (!SOURCE_ID.test(sid)) out.push(`${where}: a source id is 1-40 of a-z 0-9 . - (starting with a letter or digit)`);
    const src = sources[sid];
    if (!isObject(src)) {
      out.push(`${where}: must be an object`);
      continue;
    }
    for (const key of sorted(Object.keys(src).filter((k) => !SOURCE_KEYS.includes(k)))) {
      out.push(`${where}.${key}: not a source field (fields: ${sorted(SOURCE_KEYS).join(', ')})`);
    }
    for (const key of ['name', 'version', 'licence']) {
      if (!(isText(src[key]) && strip(src[key]))) out.push(`${where}.${key}: missing`);
    }
    for (const key of sorted(SOURCE_KEYS.filter((k) => k in src))) {
      if (isText(src[key]) && (chars(src[key]) > 300 || badText(src[key]))) {
        out.push(`${where}.${key}: at most 300 characters, no control characters`);
      }
    }
    const url = 'url' in src ? src.url : '';
    if (url !== '' && url !== null && !(isText(url) && URL_RE.test(url))) {
      out.push(`${where}.url: must be an http(s) address`);
    }
  }
  const fruits = data.fruits;
  if (!Array.isArray(fruits) || !fruits.length) {
    out.push('fruits: must be a list of at least one fruit');
    return out;
  }
  if (fruits.length > MAX_FRUITS) out.push(`fruits: ${fruits.length} fruits, at most ${MAX_FRUITS}`);
  const ids = new Map();
  const owner = new Map();
  fruits.forEach((fruit, i) => {
    const fid = isObject(fruit) ? fruit.id : undefined;
    const where = `fruits[${i}]` + (isText(fid) ? ` (${fid})` : '');
    if (!isObject(fruit)) {
      out.push(`${where}: must be an object`);
      return;
    }
    for (const key of sorted(Object.keys(fruit).filter((k) => !FRUIT_KEYS.includes(k)))) {
      out.push(`${where}.${key}: not a fruit field (fields: ${sorted(FRUIT_KEYS).join(', ')})`);
    }
    if (!(isText(fid) && ID.test(fid))) out.push(`${where}.id: 1-40 of a-z 0-9 - (starting with a letter or digit)`);
    else if (ids.has(fid)) out.push(`${where}.id: also the id of fruits[${ids.get(fid)}]`);
    else ids.set(fid, i);
    let labels = fruit.labels;
    if (!isObject(labels) || !Object.keys(labels).length) {
      out.push(`${where}.labels: must map at least one label to its variety ("" for none)`);
      labels = {};
    }
    for (const label of sorted(Object.keys(labels))) {
      const variety = labels[label];
      const checked = labelRules.check(label);   // the rules of every label (contract/labels.py, labels.js)
      if (checked.problem || checked.label !== label) {
        const why = checked.problem || `not in its canonical form ${q(checked.label)}`;
        out.push(`${where}.labels: ${q(label)} is not a label (${why})`);
      } else if (owner.has(label)) {
        out.push(`${where}.labels: ${q(label)} is also a label of ${owner.get(label)}`);
      } else {
        owner.set(label, where);
      }
      if (!goodVariety(variety)) {
        out.push(`${where}.labels.${q(label)}: the variety must be text of at most 60 characters, or an object of ` +
                 'such texts by language (en at least)');
      }
    }
    for (const field of ['name', 'description']) out.push(...checkTexts(fruit[field], `${where}.${field}`, TEXT_LIMITS[field], sources, true));
    for (const field of ['season', 'storage']) {
      if (field in fruit) out.push(...checkTexts(fruit[field], `${where}.${field}`, TEXT_LIMITS[field], sources, false));
    }
    if ('scientific_name' in fruit) {
      out.push(...checkSourced(fruit.scientific_name, `${where}.scientific_name`, sources, {limit: TEXT_LIMITS.scientific_name}));
    }
    if ('nutrition' in fruit) out.push(...checkNutrition(fruit.nutrition, `${where}.nutrition`, sources));
  });
  return out;
}

function checkTexts(value, where, limit, sources, required) {
  if ((value === undefined || value === null) && !required) return [];
  if (!isObject(value)) return [`${where}: must be an object of languages (${LANGUAGES.join(', ')} at least)`];
  const out = LANGUAGES.filter((lang) => !(lang in value)).map((lang) => `${where}.${lang}: missing`);
  for (const lang of sorted(Object.keys(value))) {
    if (!LANG.test(lang)) {
      out.push(`${where}.${lang}: a language is two letters a-z`);
      continue;
    }
    out.push(...checkSourced(value[lang], `${where}.${lang}`, sources, {limit}));
  }
  return out;
}

function checkSourced(item, where, sources, {limit = null, numberMax = null} = {}) {
  if (!isObject(item) || Object.keys(item).length !== 2 || !('value' in item) || !('source' in item)) {
    return [`${where}: must be {"value": ..., "source": ...}`];
  }
  const out = [];
  if (typeof item.source !== 'string') {
    out.push(`${where}: the source must be text (a key of sources)`);
  } else if (!Object.prototype.hasOwnProperty.call(sources, item.source)) {
    out.push(`${where}: source ${q(item.source)} is not in sources`);
  }
  const value = item.value;
  if (numberMax === null) {
    if (!isText(value) || !strip(value)) out.push(`${where}: the value must be text`);
    else if (chars(value) > limit) out.push(`${where}: ${chars(value)} characters, at most ${limit}`);
    else if (badText(value)) out.push(`${where}: the value ${badText(value)}`);
  } else if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > numberMax) {
    out.push(`${where}: the value must be a number from 0 to ${numberMax}`);
  }
  return out;
}

function checkNutrition(value, where, sources) {
  if (!isObject(value) || Object.keys(value).some((k) => k !== 'food' && k !== 'per_100g') || !('per_100g' in value)) {
    return [`${where}: must be {"food": ..., "per_100g": {...}}`];
  }
  const out = 'food' in value ? checkSourced(value.food, `${where}.food`, sources, {limit: TEXT_LIMITS.food})
    : [`${where}.food: missing (which food of the source the numbers are)`];
  const per = value.per_100g;
  if (!isObject(per) || !Object.keys(per).length) {
    return [...out, `${where}.per_100g: must be an object of nutrients (${Object.keys(NUTRIENTS).join(', ')})`];
  }
  for (const key of sorted(Object.keys(per))) {
    if (!(key in NUTRIENTS)) out.push(`${where}.per_100g.${key}: not a nutrient (${Object.keys(NUTRIENTS).join(', ')})`);
    else out.push(...checkSourced(per[key], `${where}.per_100g.${key}`, sources, {numberMax: NUTRIENTS[key][1]}));
  }
  return out;
}

export class CatalogError extends Error {
  constructor(message) { super(message); this.name = 'CatalogError'; }
}

export class Catalog {
  /** Catalog.from_bytes: the bytes must be the catalog `catalogId` names, then a good catalog. */
  static async fromBytes(bytes, {origin, catalogId, labelRules}) {
    if (bytes.length > MAX_BYTES) throw new CatalogError(`${origin}: ${bytes.length} bytes, at most ${MAX_BYTES}`);
    if (catalogId !== undefined && (await sha256Hex(bytes)).slice(0, 16) !== catalogId) {
      throw new CatalogError(`${origin}: content does not match its catalog id ${catalogId}`);
    }
    let data;
    try {
      data = JSON.parse(new TextDecoder('utf-8', {fatal: true}).decode(bytes));
    } catch (err) {
      throw new CatalogError(`${origin}: not JSON (${err.message})`);
    }
    const problems = checkCatalog(data, labelRules);
    if (problems.length) throw new CatalogError(`${origin}: ${problems.length} problem(s): ${problems.join('; ')}`);
    return new Catalog(data, catalogId);
  }

  constructor(data, catalogId) {
    this.data = data;
    this.catalogId = catalogId;
    this.byLabel = new Map();
    for (const fruit of data.fruits) for (const [label, variety] of Object.entries(fruit.labels)) this.byLabel.set(label, {fruit, variety});
  }

  lookup(label) { return this.byLabel.get(label) || null; }

  /** Catalog.name: "Apple (Braeburn)" in `lang` (English where the entry has no such language); the label itself
   *  when the catalog does not have it. */
  name(label, lang = 'en') {
    const found = this.lookup(label);
    if (!found) return label;
    const variety = varietyIn(found.variety, lang);
    return textIn(found.fruit.name, lang) + (variety ? ` (${variety})` : '');
  }

  /** What the card shows for a label, in `lang`: every value with its source's name. */
  card(label, lang = 'en') {
    const found = this.lookup(label);
    if (!found) return null;
    const {fruit, variety} = found;
    const src = (item) => item && this.data.sources[item.source];
    const text = (texts) => (texts ? {value: textIn(texts, lang), source: src(texts[lang] || texts.en)} : null);
    const nutrition = fruit.nutrition ? {
      food: fruit.nutrition.food ? {value: fruit.nutrition.food.value, source: src(fruit.nutrition.food)} : null,
      rows: Object.keys(NUTRIENTS).filter((k) => k in fruit.nutrition.per_100g).map((k) => ({
        key: k, value: fruit.nutrition.per_100g[k].value, unit: NUTRIENTS[k][0], source: src(fruit.nutrition.per_100g[k])})),
    } : null;
    return {id: fruit.id, label, name: textIn(fruit.name, lang), variety: varietyIn(variety, lang),
            scientific: fruit.scientific_name ? {value: fruit.scientific_name.value, source: src(fruit.scientific_name)} : null,
            description: text(fruit.description), season: text(fruit.season), storage: text(fruit.storage), nutrition};
  }
}

function textIn(texts, lang) { return (texts[lang] || texts.en).value; }

/** contract.catalog._good_variety: one text, or texts by language with English. */
function goodVariety(variety) {
  const text = (v) => isText(v) && chars(v) <= 60 && !badText(v);
  if (isObject(variety)) return 'en' in variety && Object.entries(variety).every(([k, v]) => LANG.test(k) && text(v));
  return text(variety);
}

/** contract.catalog.variety_in: a variety in `lang`, else English, else its one text. */
export function varietyIn(variety, lang) {
  return isObject(variety) ? (variety[lang] || variety.en) : variety;
}


// The page's settings (config.json), checked against the one schema the server checks them with
// (web/server.py CONFIG_SCHEMA, carried in contract.json): a setting of the wrong type or shape is one message
// naming it and what it must be, before anything is sent anywhere. An endpoint must be https (http only on this
// machine's loopback): the device's identity calls and its signed requests would go to it.

export class ConfigError extends Error {
  constructor(message) { super(message); this.name = 'ConfigError'; }
}

/** `data` against `schema` ({key: {type, pattern | minimum/maximum, must}}): the settings without empty values. */
export function checkConfig(data, schema, origin = 'config.json') {
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new ConfigError(`${origin}: must be a JSON object of settings (${Object.keys(schema).join(', ')})`);
  }
  const unknown = Object.keys(data).filter((k) => !(k in schema)).sort();
  if (unknown.length) {
    throw new ConfigError(`${origin}: unknown setting(s) ${unknown.join(', ')}; known: ${Object.keys(schema).join(', ')}`);
  }
  const out = {};
  for (const [key, rule] of Object.entries(schema)) {
    const value = data[key];
    if (value === undefined || value === null || value === '') continue;
    const ok = rule.type === 'integer'
      ? Number.isInteger(value) && value >= rule.minimum && value <= rule.maximum
      : typeof value === 'string' && new RegExp(rule.pattern).test(value);
    if (!ok) throw new ConfigError(`${origin}: ${key} must be ${rule.must} (got ${JSON.stringify(value).slice(0, 80)})`);
    out[key] = value;
  }
  if (Boolean(out.bucket) !== Boolean(out.identityPoolId)) {
    throw new ConfigError(`${origin}: bucket and identityPoolId go together: the page needs both to contribute ` +
                          '(or neither, to vectorize and save files only)');
  }
  if (out.prefix !== undefined) out.prefix = out.prefix.replace(/^\/+|\/+$/g, '');
  if (out.identityPoolId && !out.region) out.region = out.identityPoolId.split(':')[0];
  return out;
}

/** config.json fetched and checked; {} when the server has none (404). */
export async function loadConfig(schema, url = 'config.json') {
  const response = await fetch(url, {cache: 'no-cache'});
  if (response.status === 404) return {};
  if (!response.ok) throw new ConfigError(`${url}: HTTP ${response.status}`);
  const type = response.headers.get('content-type') || '';
  const text = await response.text();
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    throw new ConfigError(`${url} is not JSON (${type || 'no content type'}: ${JSON.stringify(text.slice(0, 40))}…): ` +
                          'a captive portal or a misconfigured server answered');
  }
  return checkConfig(data, schema, url);
}

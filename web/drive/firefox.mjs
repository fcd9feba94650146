// Firefox ESR, headless, driven over WebDriver BiDi by puppeteer-core (pinned in package-lock.json; no
// geckodriver, no browser download), for web/device.py: one JSON command per line on stdin, one JSON answer per
// line on stdout ({id, value} or {id, error}). Console messages of the page and its workers are kept per tab.
//   node drive/firefox.mjs      (then: {"id": 1, "op": "launch", "executable": "/usr/bin/firefox-esr", ...})

import puppeteer from 'puppeteer-core';
import {createInterface} from 'node:readline';

let browser = null;
const tabs = new Map();
let nextTab = 0;

function tab(id) {
  const t = tabs.get(id);
  if (!t) throw new Error(`no tab ${id}`);
  return t;
}

const ops = {
  async launch({executable, profile, prefs}) {
    browser = await puppeteer.launch({browser: 'firefox', executablePath: executable, headless: true,
                                      userDataDir: profile, extraPrefsFirefox: prefs || {}, protocolTimeout: 600000});
    return browser.version();
  },
  async open({url, width, height, scale}) {
    const page = await browser.newPage();
    const id = String(++nextTab);
    const log = [];
    page.on('console', (m) => log.push({type: m.type(), text: m.text()}));
    page.on('pageerror', (e) => log.push({type: 'pageerror', text: String((e && e.message) || e)}));
    tabs.set(id, {page, log});
    if (width) await page.setViewport({width, height, deviceScaleFactor: scale || 1});
    await page.goto(url);
    return id;
  },
  async evaluate({tab: id, expression}) { return tab(id).page.evaluate(expression); },
  async upload({tab: id, selector, paths}) {
    const handle = await tab(id).page.$(selector);
    if (!handle) throw new Error(`no element ${selector}`);
    await handle.uploadFile(...paths);
    return null;
  },
  async screenshot({tab: id, path, fullPage}) { await tab(id).page.screenshot({path, fullPage}); return path; },
  async console({tab: id}) { return tab(id).log.splice(0); },
  async closeTab({tab: id}) { const t = tab(id); tabs.delete(id); await t.page.close(); return null; },
  async close() { if (browser) await browser.close(); browser = null; return null; },
};

const lines = createInterface({input: process.stdin});
for await (const line of lines) {
  let msg;
  try { msg = JSON.parse(line); } catch { continue; }
  try {
    const value = await ops[msg.op](msg);
    process.stdout.write(JSON.stringify({id: msg.id, value: value === undefined ? null : value}) + '\n');
  } catch (err) {
    process.stdout.write(JSON.stringify({id: msg.id, error: String((err && err.message) || err)}) + '\n');
  }
  if (msg.op === 'close') break;
}
if (browser) await browser.close();

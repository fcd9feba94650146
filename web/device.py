"""A phone in a script: the served page opened in a real browser engine and used as a person does: picking photos
through its file inputs, pressing its buttons, reading what it shows. The demo, the benchmarks and the tests use it.

Three engines, each from Debian's packages (``./run setup`` installs them as root), none downloaded:

- ``chromium`` (Blink: Android phones): ``/usr/bin/chromium`` driven by Playwright for Python (``FRUITS_CHROMIUM``
  overrides the binary);
- ``firefox`` (Gecko): ``/usr/bin/firefox-esr``, headless, over WebDriver BiDi by ``puppeteer-core`` (pinned in
  ``web/package-lock.json``), through ``web/drive/firefox.mjs``: one JSON command per line;
- ``webkit`` (WebKit: every iPhone browser): WebKitGTK's MiniBrowser through ``WebKitWebDriver`` (W3C WebDriver,
  spoken here over HTTP with the standard library) under ``Xvfb`` (MiniBrowser has no headless mode).

Each browser gets a profile folder of its own (the page's IndexedDB, service worker and caches live there, so a
second visit is a second visit). WebKit's driver cannot read the console: the page keeps its own errors
(``fruits.errors``, its workers' included), which :attr:`Phone.errors` adds to what the driver saw.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from contract.errors import FruitsError

ENGINES = ("chromium", "firefox", "webkit")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-quic",
         "--disable-features=MediaRouter,OptimizationHints,Translate"]
PHONE = {"width": 412, "height": 915}      # a common Android phone's viewport, CSS pixels
FIREFOX = "/usr/bin/firefox-esr"
WEBKIT_DRIVER = "WebKitWebDriver"
MINIBROWSER = "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser"
# Firefox, quiet and offline as the machine is: no updates, telemetry, first-run pages or remote settings.
FIREFOX_PREFS = {"app.update.enabled": False, "browser.shell.checkDefaultBrowser": False,
                 "datareporting.policy.dataSubmissionEnabled": False, "toolkit.telemetry.enabled": False,
                 "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
                 "network.captive-portal-service.enabled": False, "network.connectivity-service.enabled": False,
                 "extensions.getAddons.cache.enabled": False, "browser.aboutwelcome.enabled": False,
                 "dom.serviceWorkers.testing.enabled": True}
WEB = Path(__file__).resolve().parent


class BrowserError(FruitsError):
    """No browser to drive, or the page failed: says what to do."""


def chromium_path() -> Path:
    path = Path(os.environ.get("FRUITS_CHROMIUM", "/usr/bin/chromium"))
    if not path.exists():
        raise BrowserError(f"no Chromium at {path}: `./run setup` (as root) installs Debian's chromium; or set "
                           f"FRUITS_CHROMIUM to a Chromium or Chrome binary")
    return path


def missing(engine: str) -> str | None:
    """Why ``engine`` cannot be driven here (what to install), or None when it can."""
    import importlib.util

    if engine == "chromium":
        if importlib.util.find_spec("playwright") is None:
            return "Playwright for Python is not installed (./run setup)"
        try:
            chromium_path()
        except BrowserError as exc:
            return str(exc)
        return None
    if engine == "firefox":
        if not Path(FIREFOX).exists():
            return f"no {FIREFOX}: `./run setup` (as root) installs Debian's firefox-esr"
        if shutil.which("node") is None or not (WEB / "node_modules" / "puppeteer-core").is_dir():
            return "no Node.js or no web/node_modules/puppeteer-core (./run setup runs npm ci in web/)"
        return None
    if engine == "webkit":
        for tool, package in ((WEBKIT_DRIVER, "webkit2gtk-driver"), ("Xvfb", "xvfb")):
            if shutil.which(tool) is None:
                return f"no {tool}: `./run setup` (as root) installs Debian's {package}"
        if not Path(MINIBROWSER).exists():
            return f"no MiniBrowser at {MINIBROWSER} (Debian's libwebkit2gtk-4.1-0, which webkit2gtk-driver brings)"
        return None
    raise BrowserError(f"engine {engine!r}: one of {', '.join(ENGINES)}")


def have_browser(engine: str = "chromium") -> bool:
    return missing(engine) is None


def browser(engine: str = "chromium", profile: str | Path | None = None, **kw) -> "Browser":
    """A browser of ``engine`` (not started: use it as a context manager)."""
    if engine not in ENGINES:
        raise BrowserError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    return {"chromium": Chromium, "firefox": Firefox, "webkit": WebKit}[engine](profile, **kw)


# ------------------------------------------------------------------------------------------- browsers
class Browser:
    """``with browser(engine) as b: phone = b.open(url)``: one browser with one profile (kept in ``profile`` when
    given, else a temporary folder removed at the end)."""

    engine = "?"

    def __init__(self, profile: str | Path | None = None, *, viewport: dict | None = None):
        self._own = profile is None
        self.profile = Path(profile) if profile else Path(tempfile.mkdtemp(prefix=f"fruits-{self.engine}-"))
        self.profile.mkdir(parents=True, exist_ok=True)
        self.viewport = viewport or PHONE
        self.version = ""

    def start(self) -> "Browser":
        raise NotImplementedError

    def _tab(self, url: str) -> "Tab":
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def open(self, url: str, *, timeout_s: float = 120, ready: bool = True) -> "Phone":
        """The page at ``url``, once the app has started (``ready``; any other page: at once)."""
        phone = Phone(self._tab(url), self.engine)
        if ready:
            phone.wait_ready(timeout_s)
        return phone

    def set_offline(self, offline: bool) -> None:
        raise BrowserError(f"{self.engine}: going offline is only driven in Chromium here")

    def close(self) -> None:
        try:
            self._close()
        finally:
            if self._own:
                shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class Tab:
    """One page of a browser: what :class:`Phone` needs of an engine."""

    page = None      # Playwright's Page for Chromium (requests, downloads); None elsewhere

    def evaluate(self, function: str, arg=None):
        """Run ``function`` (JavaScript source of a function of one argument, maybe async) in the page with ``arg``
        (JSON); its JSON result."""
        raise NotImplementedError

    def upload(self, selector: str, paths: list[str]) -> None:
        raise NotImplementedError

    def screenshot(self, path: Path, full_page: bool) -> None:
        raise NotImplementedError

    def console_errors(self) -> list[str]:
        return []

    def close(self) -> None:
        raise NotImplementedError


# -------------------------------------------------------------------------------------- Chromium
class Chromium(Browser):
    engine = "chromium"

    def __init__(self, profile: str | Path | None = None, *, viewport: dict | None = None, locale: str | None = None):
        super().__init__(profile, viewport=viewport)
        self.locale = locale          # navigator.language (e.g. "fr-FR"); default: the browser's own

    def start(self) -> "Chromium":
        from playwright.sync_api import sync_playwright

        executable = chromium_path()
        self._pw = sync_playwright().start()
        try:
            self.context = self._pw.chromium.launch_persistent_context(
                str(self.profile), executable_path=str(executable), headless=True, args=FLAGS, accept_downloads=True,
                viewport=self.viewport, device_scale_factor=2, is_mobile=True, has_touch=True,
                **({"locale": self.locale} if self.locale else {}))
        except Exception:
            self._pw.stop()
            raise
        self.version = self.context.browser.version if self.context.browser else ""
        return self

    def _tab(self, url: str) -> "Tab":
        tab = ChromiumTab(self.context.new_page())
        tab.page.goto(url)
        return tab

    def set_offline(self, offline: bool) -> None:
        self.context.set_offline(offline)

    def _close(self) -> None:
        try:
            if getattr(self, "context", None) is not None:
                self.context.close()
        finally:
            self.context = None
            if getattr(self, "_pw", None) is not None:
                self._pw.stop()
                self._pw = None


class ChromiumTab(Tab):
    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def evaluate(self, function: str, arg=None):
        return self.page.evaluate(function, arg)

    def upload(self, selector: str, paths: list[str]) -> None:
        self.page.set_input_files(selector, paths)

    def screenshot(self, path: Path, full_page: bool) -> None:
        self.page.screenshot(path=str(path), full_page=full_page)

    def console_errors(self) -> list[str]:
        return list(self.errors)

    def close(self) -> None:
        self.page.close()


# --------------------------------------------------------------------------------------- Firefox
class Firefox(Browser):
    engine = "firefox"

    def start(self) -> "Firefox":
        problem = missing("firefox")
        if problem:
            raise BrowserError(problem)
        self._proc = subprocess.Popen(["node", str(WEB / "drive" / "firefox.mjs")], cwd=WEB, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True)
        self._lock = threading.Lock()
        self._next = 0
        self._stderr: list[str] = []
        threading.Thread(target=lambda: self._stderr.extend(self._proc.stderr), daemon=True).start()
        try:
            self.version = self.call("launch", executable=FIREFOX, profile=str(self.profile), prefs=FIREFOX_PREFS)
        except BaseException:
            self._close()
            raise
        return self

    def call(self, op: str, timeout_s: float = 600, **args):
        with self._lock:
            self._next += 1
            self._proc.stdin.write(json.dumps({"id": self._next, "op": op, **args}) + "\n")
            self._proc.stdin.flush()
            line = _readline(self._proc.stdout, timeout_s)
        if not line:
            raise BrowserError(f"firefox driver exited: {''.join(self._stderr)[-2000:]}")
        answer = json.loads(line)
        if "error" in answer:
            raise BrowserError(f"firefox: {op}: {answer['error']}")
        return answer["value"]

    def _tab(self, url: str) -> "Tab":
        tab_id = self.call("open", url=url, width=self.viewport["width"], height=self.viewport["height"], scale=2)
        return FirefoxTab(self, tab_id)

    def _close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self.call("close", timeout_s=30)
        except (BrowserError, OSError, TimeoutError, ValueError):
            pass
        finally:
            _end_group(proc)
            self._proc = None


class FirefoxTab(Tab):
    def __init__(self, firefox: Firefox, tab_id: str):
        self.ff, self.id = firefox, tab_id
        self.errors: list[str] = []

    def evaluate(self, function: str, arg=None):
        return self.ff.call("evaluate", tab=self.id, expression=f"({function})({json.dumps(arg)})")

    def upload(self, selector: str, paths: list[str]) -> None:
        self.ff.call("upload", tab=self.id, selector=selector, paths=list(paths))

    def screenshot(self, path: Path, full_page: bool) -> None:
        self.ff.call("screenshot", tab=self.id, path=str(path), fullPage=full_page)

    def console_errors(self) -> list[str]:
        self.errors += [m["text"] for m in self.ff.call("console", tab=self.id) if m["type"] in ("error", "pageerror")]
        return list(self.errors)

    def close(self) -> None:
        self.ff.call("closeTab", tab=self.id)


# ---------------------------------------------------------------------------------------- WebKit
class WebKit(Browser):
    engine = "webkit"

    def start(self) -> "WebKit":
        problem = missing("webkit")
        if problem:
            raise BrowserError(problem)
        read, write = os.pipe()
        # Xvfb picks a free display and writes its number to the pipe (-displayfd): no guessing, no clash.
        self._xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten",
                                       "tcp"], pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        os.close(write)
        with os.fdopen(read) as f:
            display = f.readline().strip()
        if not display:
            _end_group(self._xvfb)
            raise BrowserError("Xvfb did not start (no display number)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "DISPLAY": f":{display}", "HOME": str(self.profile), "XDG_DATA_HOME": str(self.profile),
               "XDG_CACHE_HOME": str(self.profile / "cache")}
        self._driver = subprocess.Popen([WEBKIT_DRIVER, f"--port={port}", "--host=127.0.0.1"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(self.base + "/status", timeout=2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self._driver.poll() is not None:
                        raise BrowserError("WebKitWebDriver did not answer within 30 s") from None
                    time.sleep(0.2)
            caps = {"capabilities": {"alwaysMatch": {"browserName": "MiniBrowser", "webkitgtk:browserOptions": {
                "binary": MINIBROWSER, "args": ["--automation"]}}}}
            session = self.request("POST", "/session", caps)
            self.session = session["sessionId"]
            self.version = session["capabilities"].get("browserVersion", "")
            self.request("POST", f"/session/{self.session}/timeouts", {"script": 600_000, "pageLoad": 120_000})
            self.request("POST", f"/session/{self.session}/window/rect",
                         {"width": self.viewport["width"], "height": self.viewport["height"]})
        except BaseException:
            self._close()
            raise
        self._tabs = 0
        return self

    def request(self, method: str, path: str, body=None, timeout_s: float = 660):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as exc:
            try:
                value = json.loads(exc.read()).get("value", {})
                message = f"{value.get('error')}: {value.get('message')}"
            except ValueError:
                message = str(exc)
            raise BrowserError(f"webkit: {method} {path.split('/')[-1] or path}: {message}") from None

    def _tab(self, url: str) -> "Tab":
        # One top-level window per session: a second open() navigates it (the page state is in the profile).
        self._tabs += 1
        self.request("POST", f"/session/{self.session}/url", {"url": url})
        return WebKitTab(self)

    def _close(self) -> None:
        if getattr(self, "session", None):
            try:
                self.request("DELETE", f"/session/{self.session}", timeout_s=30)
            except (BrowserError, OSError):
                pass
            self.session = None
        for name in ("_driver", "_xvfb"):
            proc = getattr(self, name, None)
            if proc is not None:
                _end_group(proc)
                setattr(self, name, None)


# The page's function run through WebDriver's async script: its result or its error, as JSON.
_ASYNC = """const done = arguments[arguments.length - 1];
Promise.resolve().then(() => (%s)(arguments[0])).then(
  (v) => done({ok: v === undefined ? null : v}),
  (e) => done({error: String((e && e.stack) || e)}));"""


class WebKitTab(Tab):
    def __init__(self, webkit: WebKit):
        self.wk = webkit

    def evaluate(self, function: str, arg=None):
        out = self.wk.request("POST", f"/session/{self.wk.session}/execute/async",
                              {"script": _ASYNC % function, "args": [arg]})
        if out is None or "error" in out:
            raise BrowserError(f"webkit: {out.get('error') if out else 'no answer'}")
        return out["ok"]

    def upload(self, selector: str, paths: list[str]) -> None:
        element = self.wk.request("POST", f"/session/{self.wk.session}/element",
                                  {"using": "css selector", "value": selector})
        ref = next(iter(element.values()))
        self.wk.request("POST", f"/session/{self.wk.session}/element/{ref}/value", {"text": "\n".join(paths)})

    def screenshot(self, path: Path, full_page: bool) -> None:
        png = self.wk.request("GET", f"/session/{self.wk.session}/screenshot")
        Path(path).write_bytes(base64.b64decode(png))

    def close(self) -> None:
        self.wk.request("POST", f"/session/{self.wk.session}/url", {"url": "about:blank"})


def _readline(stream, timeout_s: float) -> str:
    """A line from a pipe, or TimeoutError after ``timeout_s`` (a hung driver must not hang its caller)."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if reader.is_alive():
        raise TimeoutError(f"the browser driver did not answer within {timeout_s:.0f} s")
    return out[0]


def _end_group(proc: subprocess.Popen) -> None:
    """End a driver and everything it started (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue


# ------------------------------------------------------------------------------------------- the app
class Phone:
    """One tab of the app in any engine. ``errors``: the page's own errors (``fruits.errors``) and what the driver
    saw in the console."""

    def __init__(self, tab: Tab, engine: str):
        self.tab = tab
        self.engine = engine
        self.page = tab.page          # Playwright's page in Chromium (requests, downloads), else None

    def evaluate(self, function: str, arg=None):
        return self.tab.evaluate(function, arg)

    @property
    def errors(self) -> list[str]:
        try:
            own = self.evaluate("() => (window.fruits && fruits.errors) || []")
        except BrowserError:
            own = []
        return self.tab.console_errors() + [e for e in own if e not in self.tab.console_errors()]

    def wait_for(self, predicate: str, timeout_s: float, what: str = "the page") -> None:
        """Wait until the JavaScript expression ``predicate`` is true in the page."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.evaluate(f"() => Boolean({predicate})"):
                    return
                problem = None
            except BrowserError as exc:   # a page still loading: WebKit's driver then fails to read a script's result
                problem = exc
            if time.monotonic() > deadline:
                raise BrowserError(f"{self.engine}: {what} did not happen within {timeout_s:.0f} s "
                                   f"({problem or 'status: ' + repr(self.text('#status'))})")
            time.sleep(0.1)

    def wait_ready(self, timeout_s: float = 120) -> None:
        self.wait_for("['ready', 'error'].includes(document.body && document.body.dataset.state)", timeout_s,
                      "the page's start")
        if self.evaluate("() => document.body.dataset.state") == "error":
            raise BrowserError(f"{self.engine}: the page could not start: {self.text('#status')}")

    def wait_published(self, timeout_s: float = 30) -> str:
        """Wait until the page knows whether a projection is published; returns its id, or "missing"."""
        self.wait_for("document.body.dataset.published !== undefined", timeout_s, "the projection's check")
        return self.evaluate("() => document.body.dataset.published")

    def pick(self, paths, *, folder: bool = False, label: str | None = None, timeout_s: float = 600) -> dict:
        """Pick photos (files, or one folder through the folder input: Chromium only) and wait for the page to
        finish them; returns :meth:`summary`."""
        before = self.evaluate("() => document.body.dataset.batch || ''")
        self.evaluate("(v) => { document.getElementById('label').value = v; }", label or "")
        if folder:
            if self.engine != "chromium":
                raise BrowserError(f"{self.engine}: a folder pick is driven in Chromium only; pick the files")
            self.tab.upload("#folder", [str(paths)])
        else:
            self.tab.upload("#choose", [str(Path(p).resolve()) for p in paths])
        self.wait_for(f"(document.body.dataset.batch || '') !== {json.dumps(before)}", timeout_s, "the batch")
        return self.summary()

    def summary(self) -> dict:
        return self.evaluate("""() => {
          const b = fruits.lastBatch;
          return {rows: b.rows.length, rejects: b.rejects, skipped: b.skipped, duplicates: b.duplicates,
                  seconds: b.seconds, imagesPerS: b.imagesPerS, queuedRows: b.queuedRows, alreadySent: b.alreadySent,
                  msPerPhoto: b.msPerPhoto, approximate: b.approximate, held: b.held || [],
                  labelsRefused: b.labelsRefused || [],
                  answers: b.rows.map(r => ({imageId: r.imageId, source: r.source, answer: r.answer || null,
                                             approximate: r.approximate || null}))};
        }""")

    def vectors(self) -> list[dict]:
        """The last batch's rows with their vectors (float32 values, exactly: sent as base64 bytes)."""
        import numpy as np

        rows = self.evaluate("""() => fruits.lastBatch.rows.map(r => {
            const b = new Uint8Array(r.features.buffer, r.features.byteOffset, r.features.byteLength);
            let s = ''; for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
            return {imageId: r.imageId, label: r.label, source: r.source, width: r.width, height: r.height,
                    approximate: r.approximate || null, features: btoa(s)};
        })""")
        for r in rows:
            r["features"] = np.frombuffer(base64.b64decode(r["features"]), "<f4").copy()
        return rows

    def parquet(self) -> bytes:
        """The Parquet file the page makes of the last batch (what "Save vectors" downloads)."""
        b64 = self.evaluate("""async () => {
            const b = await fruits.lastBatchParquet();
            let s = ''; for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
            return btoa(s);
        }""")
        return base64.b64decode(b64)

    def save(self, out: str | Path) -> Path:
        """Press "Save vectors" and keep the Parquet file the page made (Chromium: the real download; elsewhere the
        same bytes from the page)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if self.page is None:
            out.write_bytes(self.parquet())
            return out
        with self.page.expect_download() as info:
            self.page.click("#save")
        info.value.save_as(out)
        return out

    def identify_vectors(self, projection: bytes, index: bytes, index_id: str, vectors) -> tuple[list[dict], float]:
        """The page's answers for ``vectors`` (n x 1280) with the given published files (``fruits.debug``): a list of
        {answer, label, runnerUp, score, distances} and the page's identify time per vector (ms)."""
        import numpy as np

        v = np.ascontiguousarray(vectors, "<f4")
        b64 = lambda b: base64.b64encode(b).decode()   # noqa: E731
        got = self.evaluate("(a) => fruits.debug.identifyVectors(a)", {
            "projection": b64(projection), "index": b64(index), "indexId": index_id, "vectors": b64(v.tobytes()),
            "dim": int(v.shape[1])})
        return got["answers"], float(got["msPerPhoto"])

    def pending(self) -> int:
        return int(self.evaluate("async () => fruits.queue ? await fruits.queue.pending() : 0"))

    def wait_uploaded(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pending():
            if time.monotonic() > deadline:
                raise BrowserError(f"uploads still waiting after {timeout_s:.0f} s: {self.text('#queue')}")
            self.evaluate("() => { fruits.queue.drain(); }")
            time.sleep(0.2)

    def text(self, selector: str) -> str:
        return self.evaluate("(s) => { const e = document.querySelector(s); return e ? e.innerText : ''; }", selector)

    def attribute(self, selector: str, name: str):
        return self.evaluate("([s, n]) => { const e = document.querySelector(s); return e ? e.getAttribute(n) : null; }",
                             [selector, name])

    def screenshot(self, path: str | Path, *, full_page: bool = True) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tab.screenshot(path, full_page)
        return path

    def close(self) -> None:
        self.tab.close()

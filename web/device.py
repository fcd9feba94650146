"""A phone in a script: headless Chromium (Debian's ``chromium``, driven by Playwright for Python) opening the
served page and using it as a person does: picking photos through its file inputs, pressing its buttons,
reading what it shows, saving the Parquet file it makes. The demo, the benchmarks and the tests use it.

Nothing here downloads a browser: Playwright is pointed at ``/usr/bin/chromium`` (``FRUITS_CHROMIUM``
overrides), which ``./run setup`` installs from Debian's packages. Chromium is started without background
networking (this machine's network is closed), with a profile folder of its own (the page's IndexedDB, its
service worker and cache live there, so a second visit is a second visit).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from contract.errors import FruitsError

FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-quic",
         "--disable-features=MediaRouter,OptimizationHints,Translate"]
PHONE = {"width": 412, "height": 915}      # a common Android phone's viewport, CSS pixels


class BrowserError(FruitsError):
    """No browser to drive, or the page failed: says what to do."""


def chromium_path() -> Path:
    path = Path(os.environ.get("FRUITS_CHROMIUM", "/usr/bin/chromium"))
    if not path.exists():
        raise BrowserError(f"no Chromium at {path}: `./run setup` (as root) installs Debian's chromium; or set "
                           f"FRUITS_CHROMIUM to a Chromium or Chrome binary")
    return path


def have_browser() -> bool:
    import importlib.util

    try:
        if importlib.util.find_spec("playwright") is None:
            return False
        chromium_path()
        return True
    except BrowserError:
        return False


class Browser:
    """``with Browser() as b: phone = b.open(url)``: one Chromium with one profile (kept in ``profile`` when given,
    else a temporary folder removed at the end)."""

    def __init__(self, profile: str | Path | None = None, *, viewport: dict | None = None):
        self._own = profile is None
        self.profile = Path(profile) if profile else Path(tempfile.mkdtemp(prefix="fruits-chromium-"))
        self.viewport = viewport or PHONE
        self._pw = None
        self.context = None

    def start(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        executable = chromium_path()
        self._pw = sync_playwright().start()
        try:
            self.context = self._pw.chromium.launch_persistent_context(
                str(self.profile), executable_path=str(executable), headless=True, args=FLAGS, accept_downloads=True,
                viewport=self.viewport, device_scale_factor=2, is_mobile=True, has_touch=True)
        except Exception:
            self._pw.stop()
            raise
        return self

    def open(self, url: str, *, timeout_s: float = 120) -> "Phone":
        page = self.context.new_page()
        phone = Phone(page)
        page.goto(url)
        phone.wait_ready(timeout_s)
        return phone

    def set_offline(self, offline: bool) -> None:
        self.context.set_offline(offline)

    def close(self) -> None:
        try:
            if self.context is not None:
                self.context.close()
        finally:
            self.context = None
            if self._pw is not None:
                self._pw.stop()
                self._pw = None
            if self._own:
                shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class Phone:
    """One tab of the app. ``errors`` collects the page's console errors and uncaught exceptions."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def wait_ready(self, timeout_s: float = 120) -> None:
        self.page.wait_for_function("document.body.dataset.state === 'ready' || document.body.dataset.state === 'error'",
                                    timeout=timeout_s * 1000)
        if self.page.evaluate("document.body.dataset.state") == "error":
            raise BrowserError(f"the page could not start: {self.page.inner_text('#status')}")

    def wait_published(self, timeout_s: float = 30) -> str:
        """Wait until the page knows whether a projection is published; returns its id, or "missing"."""
        self.page.wait_for_function("document.body.dataset.published !== undefined", timeout=timeout_s * 1000)
        return self.page.evaluate("document.body.dataset.published")

    def pick(self, paths, *, folder: bool = False, label: str | None = None, timeout_s: float = 600) -> dict:
        """Pick photos (files, or one folder through the folder input) and wait for the page to finish them;
        returns :meth:`summary`."""
        before = self.page.evaluate("document.body.dataset.batch || ''")
        if label is not None:
            self.page.fill("#label", label)
        if folder:
            self.page.set_input_files("#folder", str(paths))
        else:
            self.page.set_input_files("#choose", [str(p) for p in paths])
        self.page.wait_for_function(f"(document.body.dataset.batch || '') !== {before!r}", timeout=timeout_s * 1000)
        return self.summary()

    def summary(self) -> dict:
        return self.page.evaluate("""() => {
          const b = fruits.lastBatch;
          return {rows: b.rows.length, rejects: b.rejects, skipped: b.skipped, duplicates: b.duplicates,
                  seconds: b.seconds, imagesPerS: b.imagesPerS, queuedRows: b.queuedRows, alreadySent: b.alreadySent,
                  msPerPhoto: b.msPerPhoto,
                  approximate: b.approximate,
                  answers: b.rows.map(r => ({imageId: r.imageId, source: r.source, answer: r.answer || null}))};
        }""")

    def vectors(self) -> list[dict]:
        """The last batch's rows with their vectors (lists of floats, exactly the float32 values)."""
        return self.page.evaluate("""() => fruits.lastBatch.rows.map(r => ({imageId: r.imageId, label: r.label,
            source: r.source, width: r.width, height: r.height, features: Array.from(r.features)}))""")

    def save(self, out: str | Path) -> Path:
        """Press "Save vectors" and keep the Parquet file the page made."""
        with self.page.expect_download() as info:
            self.page.click("#save")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        info.value.save_as(out)
        return out

    def pending(self) -> int:
        return int(self.page.evaluate("fruits.queue ? fruits.queue.pending() : 0"))

    def wait_uploaded(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pending():
            if time.monotonic() > deadline:
                raise BrowserError(f"uploads still waiting after {timeout_s:.0f} s: {self.page.inner_text('#queue')}")
            self.page.evaluate("fruits.queue.drain()")
            time.sleep(0.2)

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def screenshot(self, path: str | Path, *, full_page: bool = True) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        self.page.close()

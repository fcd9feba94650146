"""Reliability of the phone's page and its server (issue 31, each case failed before its fix): a bad response never
bricks the page (the service worker keeps only what is right), one refused upload never stalls the queue (entries
checked before any PUT, set aside when refused for good, re-made under a new identity), the settings have one
schema checked by the page and the server, a GIF's frames count for the pixel limit, and the server sends security
headers, holds no thread for a half-sent request and answers a malformed path with 400."""
from __future__ import annotations

import re

import http.client
import json
import socket
import threading
import time

import pytest

from conftest import require_browser
from web.server import WebServer

pytestmark = pytest.mark.usefixtures("chromium")
MODEL = "model/mobilenetv2_160_int8.tflite"


@pytest.fixture(scope="module")
def chromium():
    require_browser("chromium")


def settled(page, timeout_s: float = 120) -> None:
    """Wait until the page started or failed (polled with evaluate: wait_for_function's string eval is what the
    page's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout_s
    while page.evaluate("() => document.body.dataset.state || ''") not in ("ready", "error"):
        assert time.monotonic() < deadline, "the page neither started nor failed"
        time.sleep(0.1)


def objects(s3, bucket, prefix=""):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


# ------------------------------------------------------------------------------- 2. the service worker
@pytest.mark.parametrize("bad", ["truncated", "captive portal"])
def test_a_bad_model_response_is_never_kept(web_dist, tmp_path, bad):
    """The model served cut short once (or a captive portal's page in its place): that visit says what is wrong; the
    next visit, with no action from the person, fetches it again and starts; the one after, from the cache (before:
    the bad copy was cached for good and the page never started again)."""
    from web.device import BrowserError, Chromium

    model = (web_dist / MODEL).read_bytes()
    with WebServer(web_dist, {}) as server:
        profile = tmp_path / "profile"
        if bad == "truncated":
            server.serve_once(MODEL, model[: len(model) // 3])
        else:
            server.serve_once(MODEL, b"<html><body>Sign in to the hotel Wi-Fi</body></html>", "text/html")
        with Chromium(profile) as b, pytest.raises(BrowserError, match="sha256"):
            b.open(server.url)                # the service worker is installed; the model comes wrong
        assert server.requests[MODEL] == 1
        server.reset_counts()
        with Chromium(profile) as b:
            b.open(server.url)                # recovers by itself: fetched again, right this time
        assert server.requests[MODEL] == 1
        server.reset_counts()
        with Chromium(profile) as b:
            b.open(server.url)
        assert server.requests.get(MODEL, 0) == 0, "the right model is kept now"


# ------------------------------------------------------------------------------------- 3. the queue
def test_a_new_identity_sends_the_old_identitys_vectors_under_the_new_one(served, cloud, photos, tmp_path):
    """Vectors waiting under identity A (S3 unreachable); the person starts a new identity B; when S3 answers they go
    under B's folder with B as client_id (they are this device's own), nothing under A (before: refused forever, and
    every file behind them stuck)."""
    import io

    import pyarrow.parquet as pq

    from web.device import Chromium

    lemons = sorted((photos / "Lemon").glob("*.jpg"))
    with Chromium(tmp_path / "profile") as browser:
        phone = browser.open(served.url)
        old = phone.evaluate("() => fruits.clientId")
        bucket_puts = lambda r: r.method == "PUT" and cloud["bucket"] in r.url   # noqa: E731
        phone.page.route(lambda url: cloud["bucket"] in url, lambda route: route.abort()
                         if bucket_puts(route.request) else route.continue_())
        phone.pick(lemons)                    # S3 unreachable: the file waits under identity A
        assert phone.pending() == 1 and objects(cloud["s3"], cloud["bucket"]) == []
        phone.page.once("dialog", lambda d: d.accept())
        phone.evaluate("() => { document.querySelector('footer details').open = true; }")
        phone.page.dispatch_event("#reset-identity", "click")   # Settings: "Start a new device identity", confirmed
        phone.wait_for(f"fruits.clientId !== {json.dumps(old)}", 30, "the new identity")
        new = phone.evaluate("() => fruits.clientId")
        phone.page.unroute_all()
        phone.wait_uploaded()
    keys = objects(cloud["s3"], cloud["bucket"])
    assert len(keys) == 1 and f"/client={new}/" in keys[0] and old != new, (old, new, keys)
    table = pq.read_table(io.BytesIO(cloud["s3"].get_object(Bucket=cloud["bucket"], Key=keys[0])["Body"].read()))
    assert set(table.column("client_id").to_pylist()) == {new} and table.num_rows == len(lemons)


def test_vectors_that_waited_offline_past_their_day_go_under_the_day_they_are_sent(served, cloud, photos, tmp_path):
    """Vectors made on a day S3 could not be reached wait in the queue; sent days later, they are filed under the
    day they go (a daily refresh lists the last few days only: under their first day, no refresh would find them)."""
    from datetime import datetime, timedelta, timezone

    from contract.layout import day_of, upload_day
    from web.device import Chromium

    limes = sorted((photos / "Lime").glob("*.jpg"))[:2]
    then = datetime.now(timezone.utc) - timedelta(days=5)
    with Chromium(tmp_path / "profile") as browser:
        phone = browser.open(served.url)
        bucket_puts = lambda r: r.method == "PUT" and cloud["bucket"] in r.url   # noqa: E731
        phone.page.route(lambda url: cloud["bucket"] in url, lambda route: route.abort()
                         if bucket_puts(route.request) else route.continue_())
        phone.page.clock.set_system_time(then)           # the page's clock: five days ago, no network for S3
        phone.pick(limes)
        waiting = phone.evaluate("async () => (await fruits.queue.waiting()).map((e) => e.key)")
        assert phone.pending() == 1 and objects(cloud["s3"], cloud["bucket"]) == []
        phone.page.clock.set_system_time(datetime.now(timezone.utc))
        phone.page.unroute_all()
        phone.wait_uploaded()
    keys = objects(cloud["s3"], cloud["bucket"])
    assert [day_of(k) for k in waiting] == [upload_day(then)], waiting
    assert len(keys) == 1 and day_of(keys[0]) in {upload_day(), upload_day(datetime.now(timezone.utc) - timedelta(minutes=5))}, keys


def test_refused_and_malformed_entries_are_set_aside_and_never_block_the_others(served, cloud, photos, tmp_path):
    """Four bad entries put in the queue first (no image ids; bytes that are not Parquet; features no model can
    produce; a file S3 refuses with 403 every time) and one good pick after them: the good file reaches the bucket, the malformed ones are set aside
    at once without any PUT, the refused one after its attempts, and the page shows them (before: the first failure
    stopped the queue, and malformed bytes were uploaded as they were)."""
    from web.device import Chromium

    with Chromium(tmp_path / "profile") as browser:
        phone = browser.open(served.url)
        puts = []
        phone.page.on("request", lambda r: puts.append(r.url) if r.method == "PUT" else None)
        refused_key = phone.evaluate("""async () => {
            const a = fruits;
            const key = (c) => a.contract.vectorsObjectKey(a.root, a.modelSha256, a.clientId, [c.repeat(64)]);
            const put = (e) => new Promise((ok, no) => { const r = indexedDB.open('fruits', 1); r.onsuccess = () => {
              const tx = r.result.transaction('queue', 'readwrite'); tx.objectStore('queue').put(e); tx.oncomplete = ok;
              tx.onerror = () => no(tx.error); }; });
            const base = {rows: 1, scope: a.scope, createdAt: 1, attempts: 0, nextAt: 0, state: 'waiting'};
            await put({...base, key: await key('a'), imageIds: null, bytes: new Uint8Array([80, 65, 82, 49])});
            await put({...base, key: await key('b'), imageIds: ['b'.repeat(64)], bytes: new TextEncoder().encode('not parquet at all')});
            const good = await a.parquet([{imageId: 'c'.repeat(64), label: null, source: 'x.jpg', width: 1, height: 1,
              features: new Float32Array(a.contract.feature_dim), vectorizedAt: Date.now()}]);
            const k = await key('c');
            await put({...base, key: k, imageIds: ['c'.repeat(64)], bytes: good});
            const wild = await a.parquet([{imageId: 'd'.repeat(64), label: null, source: 'y.jpg', width: 1, height: 1,
              features: new Float32Array(a.contract.feature_dim).fill(1e6), vectorizedAt: Date.now()}]);
            await put({...base, key: await key('d'), imageIds: ['d'.repeat(64)], bytes: wild});
            return k;
        }""")
        from urllib.parse import unquote

        origin = served.url.rstrip("/")
        phone.page.route(lambda url: refused_key in unquote(url), lambda route: route.fulfill(
            status=403, body="<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
            headers={"Access-Control-Allow-Origin": origin, "Content-Type": "application/xml"}))
        phone.evaluate("() => { fruits.queue.drain(); }")
        summary = phone.pick(sorted((photos / "Banana").glob("*.jpg")))
        for _ in range(6):   # the refused entry's attempts, without waiting out its back-off
            phone.evaluate("""async () => { const r = indexedDB.open('fruits', 1); await new Promise((ok) => { r.onsuccess = () => {
                const tx = r.result.transaction('queue', 'readwrite'); const os = tx.objectStore('queue');
                os.getAll().onsuccess = (e) => { for (const x of e.target.result) os.put({...x, nextAt: 0}); }; tx.oncomplete = ok; }; });
                await fruits.queue.drain(); }""")
        aside = phone.evaluate("() => fruits.queue.aside()")
        line = phone.text("#queue")
    assert summary["rows"] == 10
    keys = objects(cloud["s3"], cloud["bucket"])
    assert len(keys) == 1 and refused_key not in keys, keys
    reasons = sorted(a["reason"] for a in aside)
    assert len(aside) == 4, aside
    assert any("no list of image ids" in r for r in reasons) and any("not a Parquet file" in r for r in reasons)
    assert any("access denied" in r for r in reasons), reasons
    assert any(re.search(r"outside the model's output range \[0, [\d.]+\]", r) for r in reasons), reasons   # issue 32
    assert "4 set aside" in line, line
    assert sum(refused_key in unquote(u) for u in puts) == 6 and len(puts) == 7, puts   # malformed: no PUT at all


# ------------------------------------------------------------------------------------- 4. settings
@pytest.mark.parametrize("config, message", [
    (b'{"workers": "abc"}', 'config.json: workers must be an integer from 1 to 16 (got "abc")'),
    (b'{"prefix": 123}', "config.json: prefix must be a dataset root"),
    (b'<html><body>captive portal</body></html>', "config.json is not JSON"),
    (b'{"bucket": "fruits-data", "identityPoolId": "us-east-1:00000000-0000-4000-8000-000000000001", '
     b'"endpoint": "http://10.9.8.7:9000"}', "config.json: endpoint must be an https:// URL"),
    (b'{"bucket": "fruits-data"}', "config.json: bucket and identityPoolId go together"),
    (b'[1, 2]', "config.json: must be a JSON object"),
])
def test_the_page_checks_its_settings_with_the_servers_schema(web_dist, config, message):
    """A wrong setting is one message naming it and what it must be, and nothing is sent anywhere (before: "Ready on
    NaN worker", "...replace is not a function", "Unexpected token '<'", or the device's identity calls and signed
    PUTs sent to a plain-http host)."""
    from web.device import Chromium

    with WebServer(web_dist, {}) as server, Chromium() as b:
        server.serve_once("config.json", config, "text/html" if config.startswith(b"<") else "application/json")
        page = b.context.new_page()
        others = []
        page.on("request", lambda r: others.append(r.url) if not r.url.startswith(server.url) else None)
        page.goto(server.url)
        settled(page)
        state, status = page.evaluate("document.body.dataset.state"), page.inner_text("#status")
    assert state == "error" and message in status, status
    assert others == []


def test_the_server_and_the_cli_check_the_same_schema(tmp_path, capsys):
    from web.__main__ import main

    bad = tmp_path / "config.json"
    for text, message in [('{"workers": "abc"}', 'workers must be an integer from 1 to 16 (got "abc")'),
                          ('{"endpoint": "ftp://x"}', "endpoint must be an https:// URL"),
                          ('{"prefix": "a/../b"}', "prefix must be a dataset root"), ('[]', "must be a JSON object"),
                          ('{"bukcet": "b"}', "unknown setting(s) bukcet")]:
        bad.write_text(text)
        assert main(["vectorize", str(tmp_path), "--out", str(tmp_path / "v.parquet"), "--config", str(bad)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("Error: ") and message in err[0], err
    assert main(["serve", "--workers", "0", "--port", "0"]) == 1
    assert "--workers must be an integer from 1 to 16 (got 0)" in capsys.readouterr().err


def test_a_gifs_frames_count_for_the_pixel_limit(web_dist, tmp_path):
    """A GIF whose header says 1x1 over a 16000x10000 frame: refused unread, as the Python edge refuses it (before:
    the page decoded it, +1.6 GB)."""
    import io
    import struct

    from PIL import Image

    from featurizer.preprocess import ImageRejected, preprocess
    from web.device import Chromium

    buf = io.BytesIO()
    Image.new("P", (16000, 10000)).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", 1, 1)
    (tmp_path / "bomb.gif").write_bytes(bytes(data))
    with pytest.raises(ImageRejected, match="over the limit"):
        preprocess(bytes(data), 160)
    with WebServer(web_dist, {}) as server, Chromium() as b:
        summary = b.open(server.url).pick([tmp_path / "bomb.gif"])
    assert summary["rows"] == 0 and "16000x10000" in summary["rejects"][0]["reason"], summary


# ------------------------------------------------------------------------------------- 5. the server
def test_security_headers_and_a_policy_that_names_only_the_apps_own_places(web_dist):
    config = {"bucket": "fruits-data", "identityPoolId": "eu-west-3:00000000-0000-4000-8000-000000000001"}
    with WebServer(web_dist, config) as server:
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        c.request("GET", "/")
        r = c.getresponse()
        r.read()
    csp = r.getheader("Content-Security-Policy")
    assert r.status == 200 and "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    assert "script-src 'self' 'wasm-unsafe-eval';" in csp and "unsafe-inline" not in csp and "'unsafe-eval'" not in csp
    assert ("connect-src 'self' https://fruits-data.s3.eu-west-3.amazonaws.com https://s3.eu-west-3.amazonaws.com "
            "https://cognito-identity.eu-west-3.amazonaws.com;") in csp
    assert (r.getheader("X-Frame-Options"), r.getheader("Referrer-Policy")) == ("DENY", "no-referrer")
    assert r.getheader("Cross-Origin-Opener-Policy") == "same-origin"


def test_half_sent_requests_hold_no_thread_and_are_closed(web_dist, monkeypatch):
    """300 connections that send half a request: a normal request is answered at once, the server's threads stay
    bounded, and the 300 are closed after the header timeout (before: 302 threads, never closed)."""
    import web.server as srv

    monkeypatch.setattr(srv, "HEADER_TIMEOUT_S", 2.0)
    with WebServer(web_dist, {}) as server:
        held = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        time.sleep(0.3)
        threads = threading.active_count()
        start = time.monotonic()
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        c.request("GET", "/app.js")
        assert c.getresponse().status == 200
        answered = time.monotonic() - start
        time.sleep(4)
        closed = 0
        for s in held:
            s.settimeout(2)
            try:
                closed += s.recv(10) == b""
            except OSError:
                pass
            s.close()
    assert answered < 2 and threads < 40 and closed == 300, (answered, threads, closed)


def test_a_malformed_path_is_400_not_a_traceback(web_dist, capsys):
    with WebServer(web_dist, {}) as server:
        answers = []
        for raw in (b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /wasm/\\..\\x HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /" + b"a" * 300 + b".js HTTP/1.1\r\nHost: x\r\n\r\n",            # a name too long to open
                    b"GET /" + b"a/" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(raw)
            answers.append(s.recv(40).split(b"\r\n")[0])
            s.close()
    assert answers[0] == answers[1] == answers[3] == b"HTTP/1.1 400 Bad Request", answers
    assert answers[2] in (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 400 Bad Request")
    assert answers[4] == b"HTTP/1.1 404 Not Found", answers
    assert answers[5] in (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 414 Request-URI Too Long"), answers
    assert "Traceback" not in capsys.readouterr().err

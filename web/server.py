"""Serve the built web app: static files, the page's settings as ``config.json``, on 127.0.0.1 by default.

- Types a browser insists on (``application/wasm`` for the Wasm files, ``text/javascript``, the manifest's);
- gzip for the text and Wasm files when the browser accepts it (the LiteRT Wasm file: 9.4 MB -> ~2.5 MB);
- ``Cache-Control: no-cache`` with an ``ETag``: the service worker does the caching, so an update is seen at once,
  and a file asked for again that has not changed is a 304 of a few hundred bytes;
- ``link=(bits per second, seconds per request)`` (benchmarks, tests): every answer paced as over one shared mobile
  link, so that every engine and every worker sees the same network (a browser's own throttling does not reach the
  page's workers);
- security headers: a Content-Security-Policy that lets the page load only its own files and Wasm and talk only
  to the bucket and identity pool of its settings, ``frame-ancestors 'none'`` (and X-Frame-Options), no referrer;
- limits: a request's headers must arrive within :data:`HEADER_TIMEOUT_S` (a connection that sends half a request
  waits in one selector thread, never in a worker: 300 of them held open cost no threads), a bounded pool of
  worker threads, idle connections closed, malformed paths answered 400;
- every request counted (path, bytes sent), which the tests and ``bench web`` read;
- ``--https`` with a self-signed certificate for a phone on the LAN: only a secure context gets the service
  worker, WebCodecs and WebCrypto, which the page's offline cache and Pillow-equal decoding need.

The page's settings have one schema (:data:`CONFIG_SCHEMA`), checked here when the server starts and by the page
when it loads them (``contract.json`` carries the schema), with one message naming the setting and what it must be.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import re
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from contract import layout
from contract.errors import FruitsError

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css",
         ".json": "application/json", ".map": "application/json", ".wasm": "application/wasm",
         ".webmanifest": "application/manifest+json", ".svg": "image/svg+xml", ".png": "image/png",
         ".tflite": "application/octet-stream", ".txt": "text/plain; charset=utf-8"}
COMPRESS = {".html", ".js", ".css", ".json", ".map", ".wasm", ".webmanifest", ".svg", ".tflite"}
HEADER_TIMEOUT_S = 10.0       # the request line and headers must arrive within this
IDLE_TIMEOUT_S = 30.0         # a kept-alive connection with nothing to say is closed after this
MAX_WORKERS = 16              # threads answering complete requests
MAX_WAITING = 1024            # connections whose headers are still arriving; more are closed at once
MAX_HEADER_BYTES = 16 * 1024

# One schema for config.json (the page checks the same one: web/build.py puts it in contract.json).
LOOPBACK_HOSTS = r"(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[::1\])"
CONFIG_SCHEMA = {
    "bucket": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
               "must": "an S3 bucket name (3-63 lowercase letters, digits, '.' and '-')"},
    "prefix": {"type": "string", "pattern": r"^/*((?!\.\.?(/|$))[A-Za-z0-9._-]+(/(?!\.\.?(/|$))[A-Za-z0-9._-]+)*)?/*$",
               "must": "a dataset root: folders of letters, digits and . _ - separated by '/' (no '.' or '..')"},
    "region": {"type": "string", "pattern": r"^[a-z]{2}(-gov)?-[a-z]+-\d$", "must": "an AWS region such as eu-west-3"},
    "identityPoolId": {"type": "string", "pattern": r"^[a-z]{2}(-gov)?-[a-z]+-\d:[0-9a-f-]{36}$",
                       "must": "a Cognito identity pool id, REGION:UUID"},
    "endpoint": {"type": "string",
                 "pattern": rf"^(https://[A-Za-z0-9.-]+(:\d{{1,5}})?|http://{LOOPBACK_HOSTS}(:\d{{1,5}})?)/?$",
                 "must": "an https:// URL (http:// only on this machine's loopback), without a path: the "
                         "device's credentials travel to it"},
    "workers": {"type": "integer", "minimum": 1, "maximum": 16, "must": "an integer from 1 to 16"},
}
CONFIG_KEYS = tuple(CONFIG_SCHEMA)


class WebConfigError(FruitsError):
    """A setting the page cannot use; names it and what it must be."""


def check_config(data, origin: str = "config.json") -> dict:
    """``data`` (the page's settings) against :data:`CONFIG_SCHEMA`: unknown keys, types, patterns and ranges, and
    that a bucket and an identity pool go together. Returns the settings without empty values."""
    if not isinstance(data, dict):
        raise WebConfigError(f"{origin}: must be a JSON object of settings ({', '.join(CONFIG_KEYS)}), "
                             f"not {type(data).__name__}")
    unknown = sorted(set(data) - set(CONFIG_SCHEMA))
    if unknown:
        raise WebConfigError(f"{origin}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
    out = {}
    for key, rule in CONFIG_SCHEMA.items():
        value = data.get(key)
        if value is None or value == "":
            continue
        if rule["type"] == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool) and rule["minimum"] <= value <= rule["maximum"]
        else:
            ok = isinstance(value, str) and re.fullmatch(rule["pattern"], value) is not None
        if not ok:
            raise WebConfigError(f"{origin}: {key} must be {rule['must']} (got {json.dumps(value)[:80]})")
        out[key] = value
    if bool(out.get("bucket")) != bool(out.get("identityPoolId")):
        raise WebConfigError(f"{origin}: bucket and identityPoolId go together: the page needs both to contribute "
                             f"(or neither, to vectorize and save files only)")
    if "prefix" in out:
        try:
            out["prefix"] = layout.check_root(out["prefix"])
        except FruitsError as exc:
            raise WebConfigError(f"{origin}: prefix: {exc}") from None
        if not out["prefix"]:
            del out["prefix"]
    if out.get("identityPoolId") and "region" not in out:
        out["region"] = out["identityPoolId"].split(":", 1)[0]
    return out


def page_config(*, bucket: str | None = None, prefix: str = "", region: str | None = None,
                identity_pool: str | None = None, endpoint_url: str | None = None, workers: int | None = None) -> dict:
    """The page's settings (``config.json``) from command-line values, checked (:func:`check_config`)."""
    names = {"bucket": "--bucket", "prefix": "--prefix", "region": "--region", "identityPoolId": "--identity-pool",
             "endpoint": "--endpoint-url", "workers": "--workers"}
    data = {"bucket": bucket, "prefix": prefix, "region": region, "identityPoolId": identity_pool,
            "endpoint": endpoint_url, "workers": workers}
    try:
        return check_config(data, origin="settings")
    except WebConfigError as exc:
        text = str(exc)
        for key, flag in names.items():
            text = text.replace(f"settings: {key} ", f"{flag} ")
        raise WebConfigError(text.replace("settings: ", "")) from None


def load_config(path: str | Path) -> dict:
    """A config file as written by hand or by ``fruits-cloud emr launch``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise WebConfigError(f"{path}: not a readable JSON file ({exc})") from None
    return check_config(data, origin=str(path))


def content_security_policy(config: dict) -> str:
    """The page's own files, its Wasm (``wasm-unsafe-eval``: compiling Wasm, never ``eval``), images it makes
    (``blob:``), and connections only to itself and the settings' endpoint or the region's S3 bucket and Cognito."""
    connect = ["'self'"]
    if config.get("endpoint"):
        u = urlparse(config["endpoint"])
        connect.append(f"{u.scheme}://{u.netloc}")
    elif config.get("bucket"):
        region = config.get("region", "us-east-1")
        connect += [f"https://{config['bucket']}.s3.{region}.amazonaws.com", f"https://s3.{region}.amazonaws.com",
                    f"https://cognito-identity.{region}.amazonaws.com"]
    return ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; "
            f"connect-src {' '.join(connect)}; img-src 'self' blob: data:; style-src 'self'; object-src 'none'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; manifest-src 'self'")


_BAD_PATH = re.compile(r"[\x00-\x1f\x7f\\]|(^|/)\.\.?(/|$)")


class _Prefixed(io.RawIOBase):
    """A socket's input with the bytes already read (the request's headers) put back in front. Unbuffered: what is
    left of ``prefix`` after a request is the next request's start (kept for the gate)."""

    def __init__(self, prefix: bytes, sock):
        self.prefix, self.sock = memoryview(prefix), sock

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        return self.sock.recv_into(b)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


class WebServer:
    """``with WebServer(dist, config) as s: s.url``: the app on a free port of 127.0.0.1 (or ``host``)."""

    def __init__(self, dist: str | Path, config: dict | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 tls: tuple[Path, Path] | None = None, link: tuple[float, float] | None = None):
        self.dist = Path(dist).resolve()
        self.config = check_config(dict(config or {}), origin="settings")
        self.csp = content_security_policy(self.config)
        self.host, self.port, self.tls = host, port, tls
        self.requests: Counter = Counter()      # path -> requests
        self.bytes_sent: Counter = Counter()    # path -> body bytes sent
        self.statuses: Counter = Counter()      # HTTP status -> answers
        self.once: dict[str, list] = {}         # path -> (body, type) to serve instead, one per request (faults)
        self._gz: dict[tuple[str, float], tuple[bytes, str]] = {}   # a file's gzip body and its ETag
        self._lock = threading.Lock()
        self._httpd = None
        self.link = link                        # (bits per second, seconds per request): a paced, shared link
        self._link_lock = threading.Lock()
        self._link_free_at = 0.0

    def pace(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more have crossed the emulated link (shared by every connection, in order)."""
        if not self.link:
            return
        with self._link_lock:
            start = max(time.monotonic(), self._link_free_at)
            self._link_free_at = start + nbytes * 8 / self.link[0]
            until = self._link_free_at
        time.sleep(max(0.0, until - time.monotonic()))

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent.clear()
            self.statuses.clear()

    def serve_once(self, rel: str, body: bytes, content_type: str | None = None) -> None:
        """Answer the next request for ``rel`` with ``body`` (and ``content_type``) instead of the file: a truncated
        download, a captive portal's page; what a bad network does."""
        with self._lock:
            self.once.setdefault(rel, []).append((body, content_type))

    def _body(self, rel: str, accept_gzip: bool) -> tuple[bytes, str, bool, str] | None:
        """(body, content type, gzipped, ETag) of ``rel``, or None: not a file of the app."""
        with self._lock:
            queued = self.once.get(rel)
            fault = queued.pop(0) if queued else None
        if rel == "config.json" and fault is None:
            body = json.dumps(self.config).encode()
            return body, TYPES[".json"], False, _etag(body)
        try:   # a name the file system refuses (too long, ...) is not a file of the app
            path = (self.dist / rel).resolve()
            if not path.is_relative_to(self.dist) or not (path.is_file() or rel == "config.json"):
                return None
        except (OSError, ValueError):
            return None
        ctype = TYPES.get(path.suffix, "application/octet-stream")
        if fault is not None:
            return fault[0], fault[1] or ctype, False, _etag(fault[0])
        if accept_gzip and path.suffix in COMPRESS:
            key = (str(path), path.stat().st_mtime)
            with self._lock:
                found = self._gz.get(key)
            if found is None:
                data = gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)
                found = (data, _etag(data))
                with self._lock:
                    self._gz[key] = found
            return found[0], ctype, True, found[1]
        body = path.read_bytes()
        return body, ctype, False, _etag(body)

    def start(self) -> "WebServer":
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IDLE_TIMEOUT_S

            def setup(self):
                super().setup()
                # The headers were read by the gate: this request's input is in memory, never a wait on the socket
                self.rfile = _Prefixed(self.server.heads.pop(self.request, b""), self.connection)

            def handle(self):
                """One request; a kept-alive connection goes back to the gate to wait for its next one, so an idle
                connection never holds a worker thread."""
                self.close_connection = True
                self.handle_one_request()
                if not self.close_connection:
                    self.server.local.kept = True
                    self.server.admit(self.request, self.client_address, bytes(self.rfile.prefix), IDLE_TIMEOUT_S)

            def log_message(self, *args):   # quiet: the tests and the CLI say what matters
                pass

            def send_plain(self, status: int, text: str, head: bool = False) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.security_headers()
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                with server._lock:
                    server.statuses[status] += 1

            def security_headers(self) -> None:
                self.send_header("Content-Security-Policy", server.csp)
                self.send_header("X-Frame-Options", "DENY")
                self.send_header("Referrer-Policy", "no-referrer")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")

            def do_HEAD(self):
                self.do_GET(head=True)

            def do_GET(self, head: bool = False):
                rel = self.path.split("?", 1)[0].split("#", 1)[0].lstrip("/") or "index.html"
                if _BAD_PATH.search(rel) or not rel.isascii():
                    self.send_plain(400, "bad request: malformed path\n", head)
                    return
                found = server._body(rel, "gzip" in self.headers.get("Accept-Encoding", ""))
                if found is None:
                    self.send_plain(404, "not found\n", head)
                    return
                body, ctype, gzipped, etag = found
                if server.link:
                    time.sleep(server.link[1])     # the request's round trip on the emulated link
                fresh = etag in [t.strip() for t in self.headers.get("If-None-Match", "").split(",")]
                self.send_response(304 if fresh else 200)
                self.send_header("ETag", etag)
                self.send_header("Cache-Control", "no-cache")
                self.security_headers()
                if gzipped:
                    self.send_header("Vary", "Accept-Encoding")
                if fresh:
                    self.end_headers()
                    with server._lock:
                        server.requests[rel] += 1
                        server.statuses[304] += 1
                    return
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if gzipped:
                    self.send_header("Content-Encoding", "gzip")
                if rel == "sw.js":
                    self.send_header("Service-Worker-Allowed", "/")
                self.end_headers()
                if not head:
                    for at in range(0, len(body), 16384):
                        chunk = body[at:at + 16384]
                        server.pace(len(chunk))
                        self.wfile.write(chunk)
                with server._lock:
                    server.requests[rel] += 1
                    server.bytes_sent[rel] += 0 if head else len(body)
                    server.statuses[200] += 1

        class Server(http.server.HTTPServer):
            """Complete requests go to a bounded pool of threads; connections whose headers are still arriving wait
            in one selector thread (:meth:`_gate`) for at most HEADER_TIMEOUT_S."""

            def __init__(self, *args, **kw):
                super().__init__(*args, **kw)
                self.pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="fruits-web")
                self.selector = selectors.DefaultSelector()
                self.waiting: dict = {}       # socket -> (address, bytes so far, deadline): in the gate
                self.heads: dict = {}         # socket -> its request's headers, for the worker that answers it
                self.local = threading.local()   # .kept: this worker's connection went back to the gate, open
                self.gate_lock = threading.Lock()
                self.wake_r, self.wake_w = socket.socketpair()
                self.closing = False          # set by server_close: nothing more is admitted or answered
                self.selector.register(self.wake_r, selectors.EVENT_READ)
                self.gate = threading.Thread(target=self._gate, name="fruits-web-gate", daemon=True)
                self.gate.start()

            def process_request(self, request, client_address):
                if server.tls:   # a TLS handshake first: in a worker, with the header timeout (the LAN dev mode)
                    self.pool.submit(self._handshake, request, client_address)
                else:
                    self.admit(request, client_address, b"", HEADER_TIMEOUT_S)

            def admit(self, sock, address, head: bytes, timeout_s: float) -> None:
                """Wait (in the gate) until ``sock`` has sent a whole request's headers, for at most ``timeout_s``."""
                if self.closing:
                    self.shutdown_request(sock)
                    return
                if b"\r\n\r\n" in head:
                    self.heads[sock] = head
                    self._submit(sock, address)
                    return
                with self.gate_lock:
                    if len(self.waiting) >= MAX_WAITING:
                        self.shutdown_request(sock)
                        return
                    sock.setblocking(False)
                    self.waiting[sock] = (address, head, time.monotonic() + timeout_s)
                    self.selector.register(sock, selectors.EVENT_READ)
                self.wake_w.send(b"x")

            def _handshake(self, sock, address) -> None:
                try:
                    sock.settimeout(HEADER_TIMEOUT_S)
                    sock.do_handshake()
                except (OSError, ssl.SSLError):
                    self.shutdown_request(sock)
                    return
                self.admit(sock, address, b"", HEADER_TIMEOUT_S)

            def _gate(self) -> None:
                while True:
                    events = self.selector.select(timeout=1.0)
                    now = time.monotonic()
                    for key, _ in events:
                        sock = key.fileobj
                        if sock is self.wake_r:
                            try:
                                woken = sock.recv(4096)
                            except OSError:
                                woken = b""
                            if not woken or self.closing:   # the server is closing: so are the connections waiting
                                with self.gate_lock:
                                    waiting, self.waiting = list(self.waiting), {}
                                for s in waiting:
                                    self.shutdown_request(s)
                                return
                            continue
                        with self.gate_lock:
                            address, head, deadline = self.waiting[sock]
                        try:
                            chunk = sock.recv(4096)
                        except (BlockingIOError, ssl.SSLWantReadError):
                            continue
                        except OSError:
                            chunk = b""
                        head += chunk
                        if not chunk or len(head) > MAX_HEADER_BYTES:
                            self._drop(sock)
                        elif b"\r\n\r\n" in head:
                            with self.gate_lock:
                                self.selector.unregister(sock)
                                del self.waiting[sock]
                            sock.setblocking(True)
                            self.heads[sock] = head
                            self._submit(sock, address)
                        else:
                            with self.gate_lock:
                                self.waiting[sock] = (address, head, deadline)
                    with self.gate_lock:
                        late = [s for s, (_, _, deadline) in self.waiting.items() if deadline < now]
                    for sock in late:
                        self._drop(sock)

            def _submit(self, sock, address) -> None:
                try:
                    self.pool.submit(self._handle, sock, address)
                except RuntimeError:        # the pool was shut down: the server is closing
                    self.shutdown_request(sock)

            def _drop(self, sock) -> None:
                with self.gate_lock:
                    if sock in self.waiting:
                        self.selector.unregister(sock)
                        del self.waiting[sock]
                self.shutdown_request(sock)

            def _handle(self, sock, address) -> None:
                self.local.kept = False
                try:
                    sock.settimeout(IDLE_TIMEOUT_S)
                    self.finish_request(sock, address)
                except Exception:
                    self.handle_error(sock, address)
                if not self.local.kept:
                    self.shutdown_request(sock)

            def server_close(self):
                self.closing = True
                super().server_close()
                self.wake_w.close()          # wakes the gate, which closes the connections waiting in it and ends
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.gate.join(timeout=5)

            def handle_error(self, request, client_address):
                import sys

                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError,
                                                      ssl.SSLError)):
                    super().handle_error(request, client_address)   # a browser that went away is not an error

        httpd = Server((self.host, self.port), Handler)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="fruits-web", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "WebServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def self_signed(folder: Path, hosts: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for ``hosts`` (kept in ``folder``), for ``serve --https`` on the LAN."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fruits! dev server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False).sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path

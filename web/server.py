"""Serve the built web app: static files, the page's settings as ``config.json``, on 127.0.0.1 by default.

- Types a browser insists on (``application/wasm`` for the Wasm files, ``text/javascript``, the manifest's);
- gzip for the text and Wasm files when the browser accepts it (the LiteRT Wasm file: 9.4 MB -> ~2.5 MB);
- ``Cache-Control: no-cache``: the service worker does the caching, so an update is seen at once;
- every request counted (path, bytes sent), which the tests and ``bench web`` read;
- ``--https`` with a self-signed certificate for a phone on the LAN: only a secure context gets the service
  worker, WebCodecs and WebCrypto, which the page's offline cache and Pillow-equal decoding need.
"""
from __future__ import annotations

import gzip
import http.server
import json
import ssl
import threading
from collections import Counter
from pathlib import Path

from contract import layout
from contract.errors import FruitsError

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css",
         ".json": "application/json", ".map": "application/json", ".wasm": "application/wasm",
         ".webmanifest": "application/manifest+json", ".svg": "image/svg+xml", ".png": "image/png",
         ".tflite": "application/octet-stream", ".txt": "text/plain; charset=utf-8"}
COMPRESS = {".html", ".js", ".css", ".json", ".map", ".wasm", ".webmanifest", ".svg"}
CONFIG_KEYS = ("bucket", "prefix", "region", "identityPoolId", "endpoint", "workers")


class WebConfigError(FruitsError):
    """A setting the page cannot use; names it."""


def page_config(*, bucket: str | None = None, prefix: str = "", region: str | None = None,
                identity_pool: str | None = None, endpoint_url: str | None = None, workers: int | None = None) -> dict:
    """The page's settings (``config.json``), checked: a bucket and an identity pool go together."""
    if bool(bucket) != bool(identity_pool):
        raise WebConfigError("the page needs both --bucket and --identity-pool to contribute (or neither, to "
                             "vectorize and save files only)")
    if identity_pool and ":" not in identity_pool:
        raise WebConfigError(f"--identity-pool {identity_pool!r} is not REGION:UUID")
    try:
        root = layout.check_root(prefix or "")
    except FruitsError as exc:
        raise WebConfigError(str(exc)) from None
    if workers is not None and not 1 <= workers <= 16:
        raise WebConfigError(f"--workers={workers} must be between 1 and 16")
    out = {"bucket": bucket, "prefix": root, "region": region or (identity_pool.split(":", 1)[0] if identity_pool else None),
           "identityPoolId": identity_pool, "endpoint": endpoint_url, "workers": workers}
    return {k: v for k, v in out.items() if v not in (None, "")}


def load_config(path: str | Path) -> dict:
    """A config file as written by hand or by ``fruits-cloud emr launch`` (keys of :data:`CONFIG_KEYS`)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise WebConfigError(f"{path}: not a readable JSON file ({exc})") from None
    unknown = set(data) - set(CONFIG_KEYS)
    if unknown:
        raise WebConfigError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(CONFIG_KEYS)}")
    return page_config(bucket=data.get("bucket"), prefix=data.get("prefix", ""), region=data.get("region"),
                       identity_pool=data.get("identityPoolId"), endpoint_url=data.get("endpoint"),
                       workers=data.get("workers"))


class WebServer:
    """``with WebServer(dist, config) as s: s.url``: the app on a free port of 127.0.0.1 (or ``host``)."""

    def __init__(self, dist: str | Path, config: dict | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 tls: tuple[Path, Path] | None = None):
        self.dist = Path(dist).resolve()
        self.config = dict(config or {})
        self.host, self.port, self.tls = host, port, tls
        self.requests: Counter = Counter()      # path -> requests
        self.bytes_sent: Counter = Counter()    # path -> body bytes sent
        self._gz: dict[tuple[str, float], bytes] = {}
        self._lock = threading.Lock()
        self._httpd = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent.clear()

    def _body(self, rel: str, accept_gzip: bool) -> tuple[bytes, str, bool] | None:
        if rel == "config.json":
            return json.dumps(self.config).encode(), TYPES[".json"], False
        path = (self.dist / rel).resolve()
        if not path.is_relative_to(self.dist) or not path.is_file():
            return None
        ctype = TYPES.get(path.suffix, "application/octet-stream")
        if accept_gzip and path.suffix in COMPRESS:
            key = (str(path), path.stat().st_mtime)
            with self._lock:
                data = self._gz.get(key)
            if data is None:
                data = gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)
                with self._lock:
                    self._gz[key] = data
            return data, ctype, True
        return path.read_bytes(), ctype, False

    def start(self) -> "WebServer":
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):   # quiet: the tests and the CLI say what matters
                pass

            def do_HEAD(self):
                self.do_GET(head=True)

            def do_GET(self, head: bool = False):
                rel = self.path.split("?", 1)[0].split("#", 1)[0].lstrip("/") or "index.html"
                found = server._body(rel, "gzip" in self.headers.get("Accept-Encoding", ""))
                if found is None:
                    body = b"not found\n"
                    self.send_response(404)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                    return
                body, ctype, gzipped = found
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
                self.send_header("X-Content-Type-Options", "nosniff")
                if gzipped:
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Vary", "Accept-Encoding")
                if rel == "sw.js":
                    self.send_header("Service-Worker-Allowed", "/")
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                with server._lock:
                    server.requests[rel] += 1
                    server.bytes_sent[rel] += 0 if head else len(body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                import sys

                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ssl.SSLError)):
                    super().handle_error(request, client_address)   # a browser that went away is not an error

        httpd = Server((self.host, self.port), Handler)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
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

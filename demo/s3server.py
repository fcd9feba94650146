"""A local S3-compatible server on 127.0.0.1 (moto's server mode), for the demo and the tests.

``mode="thread"`` runs it inside this process (state survives a stop/start on the same port, which the
fault tests use); ``mode="process"`` runs it as a child (``python -m demo.s3server``) that is always stopped.
Only loopback is ever bound or contacted.

With IAM checks on (``INITIAL_NO_AUTH_ACTION_COUNT``), moto matches policy resources with a regex in which
``?`` is a quantifier; in AWS, ``?`` is one character (the generated policies use it to fix key shapes).
:func:`aws_globs` makes moto match as AWS does, and :func:`aws_preflight` answers a browser's CORS preflight for an
existing object as S3 does (moto refused it); both are applied in both modes.

``state=FOLDER`` (process mode, ``python -m demo.s3server --state FOLDER``) keeps what moto holds only in memory on
disk, write-through: S3 buckets and objects (bytes, ETag, metadata, the store's modification time) and Cognito
identity pools with their identities. A request that changed them is answered only once the change is on disk, and
the next server started on the folder serves them again (``./run web``'s local stack, :mod:`demo.stack`). IAM,
bucket policies and CORS rules are not kept: whoever starts the server sets those again.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import threading
import subprocess
import sys
import time
import urllib.request

TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


def aws_globs() -> None:
    """Make moto's IAM resource matching AWS's: ``*`` any characters, ``?`` exactly one, the rest literal."""
    from moto.iam.access_control import IAMPolicyStatement

    def _match(pattern: str, string: str):
        return re.match("^" + re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") + "$", string, re.DOTALL)

    IAMPolicyStatement._match = staticmethod(_match)


def aws_preflight() -> None:
    """Answer a CORS preflight for an existing object as S3 does. A preflight carries no credentials (browsers
    never sign OPTIONS); moto runs its anonymous-read check on it first and answers 403 for any private object,
    so a browser could GET only keys that do not exist. S3 answers preflights from the bucket's CORS rule alone."""
    from moto.s3.responses import S3Response

    if getattr(S3Response, "_fruits_preflight", False):
        return
    original = S3Response._key_response

    def _key_response(self, request, full_url):
        if request.method == "OPTIONS":
            return self._response_options(request.headers, self.parse_bucket_name_from_url(request, full_url))
        return original(self, request, full_url)

    S3Response._key_response = _key_response
    S3Response._fruits_preflight = True


def aws_listing() -> None:
    """List a prefix from an index of the bucket's key names, as S3 does, not by walking the bucket. moto's
    ``list_objects`` copies every key of the bucket and tests each name: ~20 ms a request at 12,000 keys, so on the
    local stack every listing (the job's daily one, S3A's check before each write) grew with everything the bucket
    held. Here each key store keeps its names sorted (kept up to date by its own writes and deletes) and moto's code
    runs on the keys under the prefix only: the same answer (``tests/test_local_stack.py``)."""
    import threading
    from bisect import bisect_left

    from moto.s3.models import S3Backend
    from moto.s3.utils import _VersionedKeyStore as Store

    if getattr(S3Backend, "_fruits_listing", False):
        return

    lock = threading.Lock()     # the server answers requests in threads

    def names(store) -> list[str]:
        with lock:
            index = store.__dict__.get("_fruits_names")
            if index is None:
                index = store.__dict__["_fruits_names"] = sorted(dict.keys(store))
            return index[:]

    def follow(store, key) -> None:
        """The index made to hold ``key`` exactly when the store does."""
        with lock:
            index = store.__dict__.get("_fruits_names")
            if index is None:
                return
            at = bisect_left(index, key)
            there = at < len(index) and index[at] == key
            if key in store and not there:
                index.insert(at, key)
            elif there and key not in store:
                del index[at]

    def changes(method):
        def wrapped(self, key, *args, **kwargs):
            try:
                return method(self, key, *args, **kwargs)
            finally:
                follow(self, key)
        return wrapped

    def forget(method):   # anything else that changes the names: rebuilt at the next listing
        def wrapped(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            finally:
                with lock:
                    self.__dict__.pop("_fruits_names", None)
        return wrapped

    Store.__setitem__, Store.setlist = changes(Store.__setitem__), changes(Store.setlist)
    Store.pop, Store.__delitem__ = changes(Store.pop), changes(Store.__delitem__)
    Store.clear, Store.update, Store.popitem, Store.setdefault = (forget(Store.clear), forget(Store.update),
                                                                  forget(Store.popitem), forget(Store.setdefault))

    class Under:
        """The key store of a bucket, seen under one prefix (what moto's listing iterates)."""

        def __init__(self, store, prefix: str):
            self.store, self.prefix = store, prefix

        def items(self):
            index = names(self.store)
            out = []
            for name in index[bisect_left(index, self.prefix):]:
                if not name.startswith(self.prefix):
                    break
                try:
                    out.append((name, self.store[name]))
                except KeyError:      # deleted since the index was copied
                    continue
            return out

    class Bucket:
        def __init__(self, bucket, prefix: str):
            self.keys = Under(bucket.keys, prefix)

    original = S3Backend.list_objects

    def list_objects(self, bucket, prefix, delimiter, marker, max_keys):
        if prefix and isinstance(bucket.keys, Store) and type(bucket).__name__ == "FakeBucket":
            bucket = Bucket(bucket, prefix)
        return original(self, bucket, prefix, delimiter, marker, max_keys)

    S3Backend.list_objects = list_objects
    S3Backend._fruits_listing = True


class DamagedStore(RuntimeError):
    """A file of the local stack's folder that cannot be read back as written: named, with the fix; nothing is changed
    (never an empty bucket, never bytes deleted)."""


RECORD_FIELDS = {"key": str, "etag": str, "last_modified": str}


class Persisted:
    """moto's S3 objects and Cognito identities in ``folder``, kept write-through by :meth:`app` (a WSGI wrapper around
    moto's server) and put back into moto's backends by :meth:`restore` before the server answers.

    Layout: ``s3/<bucket>/bucket.json`` and, per object, ``<sha256 of the key>.bin`` (the bytes) and ``.json`` (key,
    ETag, metadata, modification time, size; written after the bytes, so an object is there only whole); ``cognito.json``
    (pools and their identity ids). Each file is written to a temporary name and renamed.

    What cannot be read back is an error naming the file and the fix (:meth:`check`, run before the server starts and
    again by :meth:`restore`): a damaged ``bucket.json`` used to bring the bucket back empty, and a damaged object
    record made the object vanish and its bytes be deleted at the next bucket-level save. Only a half-written object
    (bytes without a record, or a ``.tmp`` file: the process stopped between the two writes) is passed over, and kept."""

    def __init__(self, folder: str | os.PathLike):
        from pathlib import Path

        self.folder = Path(folder)
        (self.folder / "s3").mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    # ---------------------------------------------------------------- moto's backends
    @staticmethod
    def _s3():
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    @staticmethod
    def _cognito(region: str):
        from moto.cognitoidentity.models import cognitoidentity_backends
        from moto.core import DEFAULT_ACCOUNT_ID

        return cognitoidentity_backends[DEFAULT_ACCOUNT_ID][region]

    def _write(self, path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _object_paths(self, bucket: str, key: str):
        name = hashlib.sha256(key.encode()).hexdigest()
        base = self.folder / "s3" / bucket
        return base / f"{name}.bin", base / f"{name}.json"

    # ---------------------------------------------------------------- checking
    def _damaged(self, path, what: str, fix: str) -> DamagedStore:
        return DamagedStore(f"{path}: {what}. The local stack's data is damaged and was left as it is; {fix}, or move "
                            f"{self.folder} away to start an empty stack")

    def _bucket_info(self, folder) -> dict:
        where = folder / "bucket.json"
        fix = (f'write {json.dumps({"name": folder.name, "region": "us-east-1"})} into it (the folder is named after '
               f'its bucket)')
        try:
            info = json.loads(where.read_text())
        except FileNotFoundError:
            raise self._damaged(where, "missing", fix) from None
        except (OSError, ValueError) as exc:
            raise self._damaged(where, f"not readable as JSON ({str(exc).splitlines()[0][:120]})", fix) from None
        if not isinstance(info, dict) or not isinstance(info.get("name"), str) or info["name"] != folder.name:
            raise self._damaged(where, f"does not name the bucket {folder.name!r}", fix)
        return info

    def _record(self, meta) -> dict:
        """An object's record, checked against its bytes' file."""
        blob = meta.with_suffix(".bin")
        fix = f"put back {meta.name} and {blob.name} from a backup, or remove both to drop that one object"
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise self._damaged(meta, f"an object's record not readable as JSON ({str(exc).splitlines()[0][:120]})",
                                fix) from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in RECORD_FIELDS.items()):
            raise self._damaged(meta, "an object's record without its key, ETag and time", fix)
        if self._object_paths(meta.parent.name, record["key"])[1] != meta:
            raise self._damaged(meta, f"holds the record of another key ({record['key'][:80]!r})", fix)
        try:
            size = blob.stat().st_size
        except OSError:
            raise self._damaged(meta, f"its object's bytes ({blob.name}) are missing", fix) from None
        if isinstance(record.get("size"), int) and size != record["size"]:
            raise self._damaged(blob, f"{size} bytes, the record says {record['size']}", fix)
        return record

    def check(self) -> dict:
        """Every bucket, object record and the identity pools readable as written (:class:`DamagedStore` naming the
        first file that is not); returns {buckets, objects}."""
        counts = {"buckets": 0, "objects": 0}
        for folder in sorted(d for d in (self.folder / "s3").iterdir() if d.is_dir()):
            self._bucket_info(folder)
            counts["buckets"] += 1
            for meta in folder.glob("*.json"):
                if meta.name != "bucket.json":
                    self._record(meta)
                    counts["objects"] += 1
        self._pools()
        return counts

    def _pools(self) -> list:
        where = self.folder / "cognito.json"
        try:
            saved = json.loads(where.read_text())["pools"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._damaged(where, f"the identity pools not readable ({str(exc).splitlines()[0][:120]})",
                                "put it back from a backup (removing it forgets every device identity)") from None
        if not isinstance(saved, list) or not all(isinstance(p, dict) and isinstance(p.get("Identities"), list)
                                                  for p in saved):
            raise self._damaged(where, "the identity pools not readable (a list of pools with identities expected)",
                                "put it back from a backup (removing it forgets every device identity)")
        return saved

    # ---------------------------------------------------------------- saving
    def save_bucket(self, bucket: str) -> None:
        """The bucket's existence and every object it holds now (after a batch delete or a bucket-level change)."""
        b = self._s3().buckets.get(bucket)
        folder = self.folder / "s3" / bucket
        if b is None:
            shutil.rmtree(folder, ignore_errors=True)
            return
        folder.mkdir(parents=True, exist_ok=True)
        self._write(folder / "bucket.json", json.dumps({"name": bucket, "region": b.region_name}).encode())
        keys = {k for k in b.keys.keys()}
        for meta in folder.glob("*.json"):
            if meta.name == "bucket.json":
                continue
            try:
                key = json.loads(meta.read_text())["key"]
            except (OSError, ValueError, KeyError, TypeError):
                continue   # a record that cannot be read is never taken for a deleted object: its bytes stay
            if key not in keys:
                meta.unlink(missing_ok=True)
                meta.with_suffix(".bin").unlink(missing_ok=True)
        for key in keys:
            self.save_object(bucket, key)

    def save_object(self, bucket: str, key: str) -> None:
        b = self._s3().buckets.get(bucket)
        blob, meta = self._object_paths(bucket, key)
        obj = b.keys.get(key) if b is not None else None
        if obj is None:
            meta.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
            return
        record = {"key": key, "etag": obj.etag.strip('"'), "metadata": dict(obj.metadata),
                  "last_modified": obj.last_modified.isoformat(), "size": obj.size}
        if meta.exists():
            try:
                if json.loads(meta.read_text()) == record:
                    return
            except (OSError, ValueError):
                pass
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "s3" / bucket / "bucket.json").exists():
            self._write(self.folder / "s3" / bucket / "bucket.json",
                        json.dumps({"name": bucket, "region": b.region_name}).encode())
        self._write(blob, obj.value)
        self._write(meta, json.dumps(record).encode())

    def save_cognito(self) -> None:
        from moto.cognitoidentity.models import cognitoidentity_backends
        from moto.core import DEFAULT_ACCOUNT_ID

        pools = []
        for region, backend in cognitoidentity_backends[DEFAULT_ACCOUNT_ID].items():
            for pid, pool in backend.identity_pools.items():
                pools.append({"region": region, **json.loads(pool.to_json()),
                              "Identities": [i["IdentityId"] for i in
                                             backend.pools_identities.get(pid, {}).get("Identities", [])]})
        self._write(self.folder / "cognito.json", json.dumps({"pools": pools}, indent=1).encode())

    # ---------------------------------------------------------------- restoring
    def restore(self) -> dict:
        """Put the folder's buckets, objects and identity pools back into moto; returns what was restored."""
        import datetime as dt

        from moto.cognitoidentity.models import CognitoIdentityPool

        self.check()   # all or nothing: a damaged file stops the start, before moto holds anything
        s3, counts = self._s3(), {"buckets": 0, "objects": 0, "pools": 0, "identities": 0}
        for folder in sorted(d for d in (self.folder / "s3").iterdir() if d.is_dir()):
            info = self._bucket_info(folder)
            if info["name"] not in s3.buckets:
                s3.create_bucket(info["name"], info.get("region") or "us-east-1")
            counts["buckets"] += 1
            for meta in folder.glob("*.json"):   # (bytes without a record: half-written, never answered as stored)
                if meta.name == "bucket.json":
                    continue
                record = self._record(meta)
                data = meta.with_suffix(".bin").read_bytes()
                obj = s3.put_object(info["name"], record["key"], data, etag=record["etag"],
                                    disable_notification=True)
                obj.set_metadata(dict(record.get("metadata") or {}))
                obj.last_modified = dt.datetime.fromisoformat(record["last_modified"])
                counts["objects"] += 1
        for p in self._pools():
            backend = self._cognito(p["region"])
            pool = CognitoIdentityPool(p["region"], p["IdentityPoolName"],
                                       allow_unauthenticated_identities=p.get("AllowUnauthenticatedIdentities"),
                                       tags=p.get("IdentityPoolTags"))
            pool.identity_pool_id = p["IdentityPoolId"]
            backend.identity_pools[pool.identity_pool_id] = pool
            backend.pools_identities[pool.identity_pool_id] = {
                "IdentityPoolId": pool.identity_pool_id, "Identities": [{"IdentityId": i} for i in p["Identities"]]}
            counts["pools"] += 1
            counts["identities"] += len(p["Identities"])
        return counts

    # ---------------------------------------------------------------- the WSGI wrapper
    def app(self, inner):
        """``inner`` (moto's WSGI application), saving what a successful changing request changed before it is
        answered."""
        from urllib.parse import unquote

        def wrapped(environ, start_response):
            method = environ.get("REQUEST_METHOD", "GET")
            if method in ("GET", "HEAD", "OPTIONS"):
                return inner(environ, start_response)
            status, keys = [], None
            query = environ.get("QUERY_STRING", "")
            if method == "POST" and ("delete" in query.split("&") or query.startswith("delete")):
                # A batch delete (Hadoop's S3A sends one after each file it writes, for the folder markers above
                # it): the keys it names are saved, not the whole bucket (a year of refreshes made each one
                # re-check every object on disk).
                length = environ.get("CONTENT_LENGTH")
                if length or environ.get("wsgi.input_terminated"):   # (a chunked body is read to its end)
                    body = environ["wsgi.input"].read(int(length)) if length else environ["wsgi.input"].read()
                    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
                    keys = _batch_keys(body)

            def capture(code, headers, exc_info=None):
                status.append(int(code.split()[0]))
                return start_response(code, headers, exc_info) if exc_info else start_response(code, headers)

            body = list(inner(environ, capture))   # moto has changed its state by now
            if status and status[0] < 300:
                with self.lock:
                    target = environ.get("HTTP_X_AMZ_TARGET", "")
                    if target.startswith("AWSCognitoIdentityService."):
                        self.save_cognito()
                    elif not target and not environ.get("PATH_INFO", "").startswith("/moto-api"):
                        self._saved_s3(environ, method, unquote, keys)
            return body

        return wrapped

    def _saved_s3(self, environ, method: str, unquote, keys: list[str] | None = None) -> None:
        host = environ.get("HTTP_HOST", "").split(":")[0]
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if raw:   # the path as sent, decoded once (PATH_INFO is decoded already, as latin-1)
            path = unquote(raw.split("?", 1)[0])
        else:
            path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
        if host and not re.fullmatch(r"[0-9.]+|localhost|\[[0-9a-fA-F:]+\]", host) and host.count(".") >= 1 \
                and not host.endswith(".amazonaws.com"):
            bucket, key = host.split(".")[0], path.lstrip("/")          # virtual-host style
        else:
            bucket, _, key = path.lstrip("/").partition("/")            # path style
        if not bucket:
            return
        query = environ.get("QUERY_STRING", "")
        if keys is not None:
            for k in keys:
                self.save_object(bucket, k)
        elif key and not ("delete" in query.split("&") or query.startswith("delete")):
            if method in ("PUT", "POST", "DELETE"):
                self.save_object(bucket, key)
        else:
            self.save_bucket(bucket)


def _batch_keys(body: bytes) -> list[str] | None:
    """The keys a DeleteObjects request names (``<Delete><Object><Key>``), or None when its body cannot be read
    (then the whole bucket is saved)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    return [el.text or "" for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Key"]


def serve(host: str, port: int, state: str | None = None) -> None:
    """moto's server (all services on one port), with ``state``: what it holds kept in that folder."""
    import signal

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    aws_globs()
    aws_preflight()
    aws_listing()
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    if state:
        persisted = Persisted(state)
        try:
            restored = persisted.restore()
        except DamagedStore as exc:
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            sys.exit(3)
        print(f"restored from {state}: {restored}", flush=True)
        app = persisted.app(app)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """``with LocalS3() as s3: s3.endpoint_url``."""

    def __init__(self, port: int | None = None, *, mode: str = "thread", env: dict | None = None,
                 state: str | os.PathLike | None = None):
        if mode not in ("thread", "process"):
            raise ValueError(f"mode={mode!r} must be 'thread' or 'process'")
        if state is not None and mode != "process":
            raise ValueError("state= (what the server holds, kept in a folder) needs mode='process'")
        self.port = port or free_port()
        self.mode = mode
        self.state = state
        self.env = env or {}
        self._server = None
        self._proc = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalS3":
        if self.mode == "thread":
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
            aws_globs()
            aws_preflight()
            aws_listing()
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
        else:
            env = {**os.environ, **TEST_CREDENTIALS, **self.env}
            argv = [sys.executable, "-m", "demo.s3server", "-H", "127.0.0.1", "-p", str(self.port)]
            if self.state is not None:
                argv += ["--state", str(self.state)]
            self._proc = subprocess.Popen(argv,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                          # its own session: Ctrl-C in the terminal reaches us, not the server,
                                          # so it keeps serving until we stop it in order
                                          start_new_session=True)
        self._wait()
        return self

    def _wait(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"the local S3 server exited with code {self._proc.returncode}")
            try:
                urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the local S3 server did not answer on {self.endpoint_url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def prefix_bytes(s3, bucket: str, prefix: str) -> tuple[int, int]:
    """(objects, bytes) under a prefix."""
    n = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            n += 1
            size += obj["Size"]
    return n, size


if __name__ == "__main__":  # the child of mode="process": moto's server, matching resources as AWS does
    import argparse

    ap = argparse.ArgumentParser(description="moto's server on loopback (demo, tests, ./run web's local stack)")
    ap.add_argument("-H", "--host", default="127.0.0.1")
    ap.add_argument("-p", "--port", type=int, required=True)
    ap.add_argument("--state", help="a folder: keep the S3 objects and Cognito identities there (write-through)")
    a = ap.parse_args()
    serve(a.host, a.port, a.state)

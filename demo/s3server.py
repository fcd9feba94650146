"""A local S3-compatible server on 127.0.0.1 (moto's server mode), for the demo and the tests.

``mode="thread"`` runs it inside this process (state survives a stop/start on the same port, which the
fault tests use); ``mode="process"`` runs it as a child (``python -m demo.s3server``) that is always stopped.
Only loopback is ever bound or contacted.

With IAM checks on (``INITIAL_NO_AUTH_ACTION_COUNT``), moto matches policy resources with a regex in which
``?`` is a quantifier; in AWS, ``?`` is one character (the generated policies use it to fix key shapes).
:func:`aws_globs` makes moto match as AWS does, and :func:`aws_preflight` answers a browser's CORS preflight for an
existing object as S3 does (moto refused it); both are applied in both modes.
"""
from __future__ import annotations

import os
import re
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """``with LocalS3() as s3: s3.endpoint_url``."""

    def __init__(self, port: int | None = None, *, mode: str = "thread", env: dict | None = None):
        if mode not in ("thread", "process"):
            raise ValueError(f"mode={mode!r} must be 'thread' or 'process'")
        self.port = port or free_port()
        self.mode = mode
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
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
        else:
            env = {**os.environ, **TEST_CREDENTIALS, **self.env}
            self._proc = subprocess.Popen([sys.executable, "-m", "demo.s3server", "-H", "127.0.0.1", "-p", str(self.port)],
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
    from moto.server import main as moto_main

    aws_globs()
    aws_preflight()
    sys.exit(moto_main(sys.argv[1:]))

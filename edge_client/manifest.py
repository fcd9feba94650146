"""The device's upload manifest: what S3 confirmed, so an interrupted upload resumes and a re-run sends nothing.

One SQLite file per device, keyed by **endpoint, bucket and root**: the same bucket name on another endpoint
(a local server, another S3-compatible store) is another destination. The manifest is a cache of S3's
answers, never the truth: ``--recheck`` ignores it and re-sends every object conditionally (S3 answers 412
for what it has), and a lost or deleted manifest only costs those conditional PUTs (see docs/edge.md for
what a lost manifest costs when photos were added meanwhile).
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable

from contract.errors import FruitsError

SCHEMA_VERSION = 2   # 1: keyed by bucket and root only (it ignored the endpoint); dropped when met


class ManifestError(FruitsError):
    """The manifest file cannot be used; says which file and what to do."""


def default_manifest_path() -> Path:
    return Path(os.environ.get("FRUITS_STATE", Path.home() / ".fruits")) / "upload-manifest.sqlite"


def endpoint_key(endpoint_url: str | None) -> str:
    """How a destination's endpoint is recorded: AWS's S3, or the URL of an S3-compatible server."""
    if not endpoint_url:
        return "aws"
    return endpoint_url.strip().rstrip("/").lower()


class Manifest:
    """What S3 confirmed, per (endpoint, bucket, root); safe to interrupt at any point."""

    def __init__(self, path: str | os.PathLike, endpoint_url: str | None = None):
        self.path = Path(path)
        self.endpoint = endpoint_key(endpoint_url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path)
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                # An older manifest did not record the endpoint: its entries cannot be trusted for any one
                # destination. Dropping it costs one conditional PUT per object already uploaded (412 = done).
                self.db.executescript("DROP TABLE IF EXISTS objects; DROP TABLE IF EXISTS images;")
            self.db.executescript(f"""
                CREATE TABLE IF NOT EXISTS objects (
                    endpoint TEXT, bucket TEXT, key TEXT, rows INTEGER, bytes INTEGER, etag TEXT, uploaded_at REAL,
                    PRIMARY KEY (endpoint, bucket, key));
                CREATE TABLE IF NOT EXISTS images (
                    endpoint TEXT, bucket TEXT, root TEXT, kind TEXT, model_sha256 TEXT, image_id TEXT, key TEXT,
                    PRIMARY KEY (endpoint, bucket, root, kind, model_sha256, image_id));
                PRAGMA user_version = {SCHEMA_VERSION};
            """)
        except sqlite3.DatabaseError as exc:
            raise ManifestError(f"the upload manifest {self.path} is not a readable SQLite file ({exc}): move it "
                                f"away or pass --manifest NEW; the next run re-checks every object with S3 "
                                f"(conditional PUTs), nothing is uploaded twice") from None

    def _query(self, sql: str, args: tuple):
        try:
            return self.db.execute(sql, args)
        except sqlite3.DatabaseError as exc:
            raise ManifestError(f"the upload manifest {self.path} is damaged ({exc}): move it away or pass "
                                f"--manifest NEW") from None

    def has_object(self, bucket: str, key: str) -> bool:
        return self._query("SELECT 1 FROM objects WHERE endpoint=? AND bucket=? AND key=?",
                           (self.endpoint, bucket, key)).fetchone() is not None

    def uploaded_ids(self, bucket: str, root: str, kind: str, model_sha256: str = "") -> set[str]:
        cur = self._query("SELECT image_id FROM images WHERE endpoint=? AND bucket=? AND root=? AND kind=? AND "
                          "model_sha256=?", (self.endpoint, bucket, root, kind, model_sha256))
        return {r[0] for r in cur}

    def record(self, bucket: str, key: str, *, root: str, kind: str, model_sha256: str,
               image_ids: Iterable[str], rows: int, size: int, etag: str) -> None:
        try:
            with self.db:  # one transaction: the object and its ids, or nothing
                self.db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?,?)",
                                (self.endpoint, bucket, key, rows, size, etag, time.time()))
                self.db.executemany("INSERT OR IGNORE INTO images VALUES (?,?,?,?,?,?,?)",
                                    [(self.endpoint, bucket, root, kind, model_sha256, i, key) for i in image_ids])
        except sqlite3.DatabaseError as exc:
            raise ManifestError(f"the upload manifest {self.path} is damaged ({exc}): move it away or pass "
                                f"--manifest NEW") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Manifest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

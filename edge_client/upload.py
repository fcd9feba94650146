"""Upload vectors (never photos, unless asked) to S3: content-named objects, a local manifest, retries.

Idempotence: rows are sorted by ``image_id`` and cut into objects of ``rows_per_object`` rows, each named
by the fingerprint and the ids it holds (:func:`contract.vectors_object_key`).  Uploading the same rows
again maps to the same keys; every PUT is conditional (``If-None-Match: *``), so S3 itself refuses to
write a key that exists (412) and nothing is ever overwritten.  Rows that the manifest says are already
uploaded are left out before cutting.  An object is recorded in the manifest only after S3 confirmed it,
so an interrupted run resumes where it stopped.

Least privilege: the uploader never reads or lists the bucket. It needs ``s3:PutObject`` (and
``s3:AbortMultipartUpload``) under ``vectors/`` and ``raw/`` only; ``bootstrap/policies.py`` grants
exactly that. ``HeadBucket`` is tried first for a clear "bucket does not exist" message; a 403 there
(write-only credentials cannot see the bucket) is not an error.
"""
from __future__ import annotations

import io
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

from contract import ContractError, content_key, read_vectors, vectors_object_key
from contract.projection import projected_prefix
from contract.vectors import file_metadata, parquet_options, raw_object_key
from edge_client.vectorize import Photo, UserError

log = logging.getLogger(__name__)
DEFAULT_ROWS_PER_OBJECT = 5000  # ~15-25 MB of zstd Parquet: few PUTs, still resumable in small steps
SINGLE_PUT_MAX = 64 * 1024 * 1024   # above this, a multipart upload in PART_SIZE parts
PART_SIZE = 8 * 1024 * 1024


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at the ends)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
        raise UserError(f"{uri!r} is not an S3 URI (expected s3://BUCKET[/PREFIX])")
    return parsed.netloc, parsed.path.strip("/")


# -------------------------------------------------------------------------------------------- manifest
class Manifest:
    """What S3 confirmed: one SQLite file per device, safe to interrupt at any point."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS objects (
                bucket TEXT, key TEXT, rows INTEGER, bytes INTEGER, etag TEXT, uploaded_at REAL,
                PRIMARY KEY (bucket, key));
            CREATE TABLE IF NOT EXISTS images (
                bucket TEXT, root TEXT, kind TEXT, model_sha256 TEXT, image_id TEXT, key TEXT,
                PRIMARY KEY (bucket, root, kind, model_sha256, image_id));
        """)

    def has_object(self, bucket: str, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM objects WHERE bucket=? AND key=?", (bucket, key)).fetchone() is not None

    def uploaded_ids(self, bucket: str, root: str, kind: str, model_sha256: str = "") -> set[str]:
        cur = self.db.execute("SELECT image_id FROM images WHERE bucket=? AND root=? AND kind=? AND model_sha256=?",
                              (bucket, root, kind, model_sha256))
        return {r[0] for r in cur}

    def record(self, bucket: str, key: str, *, root: str, kind: str, model_sha256: str,
               image_ids: Iterable[str], rows: int, size: int, etag: str) -> None:
        with self.db:  # one transaction: the object and its ids, or nothing
            self.db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?)",
                            (bucket, key, rows, size, etag, time.time()))
            self.db.executemany("INSERT OR IGNORE INTO images VALUES (?,?,?,?,?,?)",
                                [(bucket, root, kind, model_sha256, i, key) for i in image_ids])

    def close(self) -> None:
        self.db.close()


def default_manifest_path() -> Path:
    return Path(os.environ.get("FRUITS_STATE", Path.home() / ".fruits")) / "upload-manifest.sqlite"


# ------------------------------------------------------------------------------------------ S3 client
def s3_client(*, endpoint_url: str | None = None, profile: str | None = None, region: str | None = None,
              retries: int = 8):
    """A boto3 S3 client with adaptive retries (backoff on throttling, 5xx and dropped connections)."""
    import boto3
    from botocore.config import Config

    session = boto3.Session(profile_name=profile) if profile else boto3.Session()
    config = Config(retries={"max_attempts": retries, "mode": "adaptive"}, connect_timeout=5, read_timeout=60,
                    s3={"addressing_style": "path"} if endpoint_url else None)
    return session.client("s3", endpoint_url=endpoint_url, region_name=region or session.region_name or "us-east-1",
                          config=config)


def explain(exc: Exception, bucket: str, endpoint_url: str | None = None) -> str:
    """One line for a boto3 failure, naming the bucket, the endpoint and what to check."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = f" at {endpoint_url}" if endpoint_url else ""
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found (set AWS_PROFILE / --profile, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket", "404") or (status == 404 and code in ("", "NotFound")):
            return f"bucket {bucket!r} does not exist{where}"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken"):
            return f"S3{where} rejected the credentials ({code}): check the access key and secret"
        if code in ("AccessDenied", "403") or status == 403:
            return f"access denied to bucket {bucket!r}{where} ({code or status}): check the credentials and policy"
        return f"S3{where} answered {code or status}: {exc}"
    if isinstance(exc, EndpointConnectionError) or "Connect" in type(exc).__name__:
        return f"cannot reach S3{where or ''} ({type(exc).__name__}); the upload can be resumed by running the same command again"
    return f"{type(exc).__name__}: {exc}"


def _fail(exc: Exception, bucket: str, endpoint_url: str | None):
    raise UserError(explain(exc, bucket, endpoint_url)) from exc


def check_bucket(client, bucket: str, endpoint_url: str | None = None) -> None:
    """Fail early, before anything is written, on a missing bucket or bad credentials."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
            log.debug("HeadBucket %s: 403; write-only credentials cannot check the bucket, going on", bucket)
            return
        _fail(exc, bucket, endpoint_url)
    except BotoCoreError as exc:
        _fail(exc, bucket, endpoint_url)


def _precondition_failed(exc) -> bool:
    err = exc.response.get("Error", {})
    return err.get("Code") in ("PreconditionFailed", "412") or \
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412


def put_if_absent(client, bucket: str, key: str, body: bytes, **extra) -> str | None:
    """Write ``key`` unless it exists (S3 conditional write ``If-None-Match: *``).

    Returns the ETag S3 confirmed, or ``None`` when the object was already there. Bodies over
    :data:`SINGLE_PUT_MAX` go up as a multipart upload whose completion carries the same condition.
    """
    from botocore.exceptions import ClientError

    if len(body) <= SINGLE_PUT_MAX:
        try:
            return client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", **extra)["ETag"]
        except ClientError as exc:
            if _precondition_failed(exc):
                return None
            raise
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, len(body), PART_SIZE), start=1):
            resp = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                      Body=body[start:start + PART_SIZE])
            parts.append({"PartNumber": number, "ETag": resp["ETag"]})
        return client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, IfNoneMatch="*",
                                                MultipartUpload={"Parts": parts})["ETag"]
    except BaseException as exc:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:  # the original error matters more; S3 lifecycle rules clean up leftovers
            log.debug("abort of multipart upload %s failed", upload_id)
        if isinstance(exc, ClientError) and _precondition_failed(exc):
            return None
        raise


class RequestCounter:
    """Counts every HTTP request a boto3 client sends (retries included), by operation."""

    def __init__(self, client):
        self.by_operation: dict[str, int] = {}
        client.meta.events.register("before-send.s3", self._count)

    def _count(self, request=None, **kwargs):
        op = kwargs.get("event_name", "").rsplit(".", 1)[-1]
        self.by_operation[op] = self.by_operation.get(op, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())


@dataclass
class UploadSummary:
    objects_put: int = 0
    objects_skipped: int = 0
    rows_put: int = 0
    rows_skipped: int = 0
    bytes_put: int = 0
    requests: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.rows_put} rows in {self.objects_put} new objects ({self.bytes_put / 1e6:.2f} MB), "
                f"{self.rows_skipped} rows already uploaded, {self.objects_skipped} objects already there; "
                f"{self.requests} S3 requests in {self.seconds:.1f} s")


def upload_vectors(client, files: Iterable[str | os.PathLike], bucket: str, root: str, *, manifest: Manifest,
                   client_id: str | None = None, rows_per_object: int = DEFAULT_ROWS_PER_OBJECT,
                   endpoint_url: str | None = None, progress: bool = True,
                   projection_id: str | None = None) -> UploadSummary:
    """Upload the rows of vectors files under ``s3://bucket/root/vectors/`` (or, for projected vectors
    made with ``projection_id``, under ``root/projected/``); see the module doc."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from botocore.exceptions import BotoCoreError, ClientError
    from tqdm import tqdm

    if rows_per_object < 1:
        raise UserError(f"--rows-per-object={rows_per_object} must be at least 1")
    tables = []
    for f in files:
        try:
            tables.append(read_vectors(f))
        except ContractError as exc:
            raise UserError(str(exc)) from None
    if not tables:
        raise UserError("no vectors files to upload")
    table = pa.concat_tables(tables)
    summary = UploadSummary()
    counter = RequestCounter(client)
    start = time.perf_counter()
    check_bucket(client, bucket, endpoint_url)
    for model_sha in sorted(set(table.column("model_sha256").to_pylist())):
        part = table.filter(pc.equal(table.column("model_sha256"), model_sha))
        # Same image twice (in two files): keep the first, as downstream would.
        ids = part.column("image_id").to_pylist()
        first = {}
        for n, i in enumerate(ids):
            first.setdefault(i, n)
        kind = f"projected:{projection_id}" if projection_id else "vectors"
        done = manifest.uploaded_ids(bucket, root, kind, model_sha)
        keep = sorted((i, n) for i, n in first.items() if i not in done)
        summary.rows_skipped += len(first) - len(keep)
        if not keep:
            continue
        part = part.take(pa.array([n for _, n in keep]))
        model_name = part.column("model_name")[0].as_py()
        chunks = [part.slice(o, rows_per_object) for o in range(0, part.num_rows, rows_per_object)]
        bar = tqdm(total=part.num_rows, desc="uploading vectors", unit="row", disable=not progress, leave=False)
        for chunk in chunks:
            chunk_ids = chunk.column("image_id").to_pylist()
            by = client_id or chunk.column("client_id")[0].as_py()
            key = vectors_object_key(root, model_sha, by, chunk_ids) if not projection_id else (
                projected_prefix(root, model_sha, projection_id)
                + f"client={by}/part-{content_key(model_sha + projection_id, chunk_ids)}.parquet")
            if manifest.has_object(bucket, key):
                summary.objects_skipped += 1
                bar.update(chunk.num_rows)
                continue
            buf = io.BytesIO()
            meta = file_metadata(model_sha, model_name)
            if projection_id:
                meta[b"fruits.projection_id"] = projection_id.encode()
            pq.write_table(chunk.replace_schema_metadata(meta), buf, **parquet_options())
            body = buf.getvalue()
            try:
                etag = put_if_absent(client, bucket, key, body, ContentType="application/vnd.apache.parquet",
                                     Metadata={"fruits-model-sha256": model_sha, "fruits-rows": str(chunk.num_rows),
                                               "fruits-content": content_key(model_sha, chunk_ids)})
            except (ClientError, BotoCoreError) as exc:
                bar.close()
                _fail(exc, bucket, endpoint_url)
            except ConnectionError as exc:  # urllib3 errors that botocore does not wrap
                bar.close()
                _fail(exc, bucket, endpoint_url)
            if etag is None:  # on S3 already (another machine, or a run killed after the PUT): remember it
                manifest.record(bucket, key, root=root, kind=kind, model_sha256=model_sha,
                                image_ids=chunk_ids, rows=chunk.num_rows, size=0, etag="")
                summary.objects_skipped += 1
                bar.update(chunk.num_rows)
                continue
            manifest.record(bucket, key, root=root, kind=kind, model_sha256=model_sha,
                            image_ids=chunk_ids, rows=chunk.num_rows, size=len(body), etag=etag)
            summary.objects_put += 1
            summary.rows_put += chunk.num_rows
            summary.bytes_put += len(body)
            bar.update(chunk.num_rows)
        bar.close()
    summary.seconds = time.perf_counter() - start
    summary.requests = counter.total
    return summary


def upload_raw(client, photos: list[Photo], bucket: str, root: str, *, manifest: Manifest, client_id: str,
               endpoint_url: str | None = None, progress: bool = True) -> UploadSummary:
    """For clients that cannot vectorize: put the photos themselves under ``root/raw/``.

    Keys are :func:`contract.raw_object_key`: ``client=<id>/label=<label>/<image_id><ext>``, so the same
    photo is stored once whatever its name, and the server-side featurization reads the label from the key;
    the original name travels as object metadata (ASCII-escaped).
    """
    from botocore.exceptions import BotoCoreError, ClientError
    from tqdm import tqdm

    from featurizer.preprocess import image_id

    summary = UploadSummary()
    counter = RequestCounter(client)
    check_bucket(client, bucket, endpoint_url)
    start = time.perf_counter()
    done = manifest.uploaded_ids(bucket, root, "raw")
    for photo in tqdm(photos, desc="uploading photos", unit="img", disable=not progress, leave=False):
        try:
            data = photo.path.read_bytes()
        except OSError as exc:
            log.warning("%s: cannot read (%s); not uploaded", photo.source, exc)
            continue
        iid = image_id(data)
        if iid in done:
            summary.rows_skipped += 1
            continue
        key = raw_object_key(root, client_id, photo.label, iid, photo.path.suffix)
        meta = {"fruits-source": photo.source.encode("ascii", "backslashreplace").decode()[:1024]}
        if photo.label is not None:
            meta["fruits-label"] = photo.label.encode("ascii", "backslashreplace").decode()
        try:
            etag = put_if_absent(client, bucket, key, data, Metadata=meta)
        except (ClientError, BotoCoreError) as exc:
            _fail(exc, bucket, endpoint_url)
        manifest.record(bucket, key, root=root, kind="raw", model_sha256="", image_ids=[iid], rows=1,
                        size=len(data) if etag else 0, etag=etag or "")
        done.add(iid)
        if etag is None:
            summary.rows_skipped += 1
            summary.objects_skipped += 1
            continue
        summary.objects_put += 1
        summary.rows_put += 1
        summary.bytes_put += len(data)
    summary.seconds = time.perf_counter() - start
    summary.requests = counter.total
    return summary



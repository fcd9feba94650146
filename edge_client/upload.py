"""Upload vectors (never photos, unless asked) to S3: content-named objects, a local manifest, retries.

Idempotence: rows are sorted by ``image_id`` and cut into objects of ``rows_per_object`` rows, each named
by the fingerprint and the ids it holds (:func:`contract.vectors_object_key`) and filed under the UTC day it is
sent (``day=``: a daily refresh lists the last few days only).  Uploading the same rows again the same day maps
to the same keys; every PUT is conditional (``If-None-Match: *``), so S3 itself refuses to write a key that
exists (412) and nothing is ever overwritten (rows sent again on a later day, when S3's answer was lost, are a
second object: the job counts each image id once).  Rows that the manifest says are already
uploaded are left out before cutting.  An object is recorded in the manifest only after S3 confirmed it,
so an interrupted run resumes where it stopped.

Least privilege: the uploader never reads or lists the bucket. It needs ``s3:PutObject`` (and
``s3:AbortMultipartUpload``) under its own ``client=<id>/`` folders of ``vectors/``, ``projected/`` and
``raw/`` only; ``bootstrap/policies.py`` grants exactly that (from ``contract.layout``). ``HeadBucket`` is
tried first for a clear "bucket does not exist" message; a 403 there (write-only credentials cannot see the
bucket) is not an error.

The manifest (:mod:`edge_client.manifest`) is keyed by endpoint, bucket and root; ``recheck`` ignores it and
re-sends every object conditionally, which is how a device finds out that a bucket was emptied.
"""
from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import quote, urlparse

from contract import ContractError, read_vectors
from contract.layout import check_client_id, check_root, content_key, projected_object_key, raw_object_key, vectors_object_key
from contract.vectors import file_metadata, parquet_options
from edge_client.manifest import Manifest
from edge_client.vectorize import Photo, UserError

log = logging.getLogger(__name__)
DEFAULT_ROWS_PER_OBJECT = 5000  # ~15-25 MB of zstd Parquet: few PUTs, still resumable in small steps
SINGLE_PUT_MAX = 64 * 1024 * 1024   # above this, a multipart upload in PART_SIZE parts
PART_SIZE = 8 * 1024 * 1024


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at the ends).

    >>> parse_s3_uri("s3://fruits-data/team-a/")
    ('fruits-data', 'team-a')
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
        raise UserError(f"{uri!r} is not an S3 URI (expected s3://BUCKET[/PREFIX])")
    try:
        return parsed.netloc, check_root(parsed.path)
    except ContractError as exc:
        raise UserError(str(exc)) from None


# ------------------------------------------------------------------------------------------ S3 client
def s3_client(*, endpoint_url: str | None = None, profile: str | None = None, region: str | None = None,
              retries: int = 8, session=None):
    """A boto3 S3 client with adaptive retries (backoff on throttling, 5xx and dropped connections).

    ``session``: a boto3 Session with the device's credentials (e.g. from a Cognito identity pool); default:
    the standard credential chain (or ``profile``)."""
    import boto3
    from botocore.config import Config

    if retries < 1:
        raise UserError(f"--retries={retries} must be at least 1")
    if session is None:
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
        if code in ("ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "RequestExpired"):
            return (f"the temporary credentials expired ({code}) and were not renewed: run the same command again "
                    f"(with --identity-pool it gets new ones; a profile's session token must be renewed)")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId"):
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
    objects_skipped: int = 0       # refused by S3 (412: already there) or known to the manifest
    rows_put: int = 0
    rows_skipped: int = 0
    rows_on_manifest_word: int = 0  # of rows_skipped: left out because the manifest says S3 has them
    bytes_put: int = 0
    requests: int = 0
    seconds: float = 0.0
    refused: list[tuple[str, str]] = field(default_factory=list)   # (source, reason) not uploaded

    def line(self) -> str:
        word = (f" ({self.rows_on_manifest_word} of them on the manifest's word, not re-checked with S3: "
                f"--recheck)" if self.rows_on_manifest_word else "")
        return (f"{self.rows_put} rows in {self.objects_put} new objects ({self.bytes_put / 1e6:.2f} MB), "
                f"{self.rows_skipped} rows already uploaded{word}, {self.objects_skipped} objects already there; "
                f"{self.requests} S3 requests in {self.seconds:.1f} s")


@dataclass
class PlannedObject:
    """One object to upload: its key and the rows (a contract table) it holds."""

    key: str
    table: object
    model_sha256: str
    model_name: str
    kind: str                   # "vectors" or "projected:<id>" (the manifest's kind)
    projection_id: str | None = None

    @property
    def image_ids(self) -> list[str]:
        return self.table.column("image_id").to_pylist()

    def body(self) -> bytes:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        meta = file_metadata(self.model_sha256, self.model_name, self.projection_id)
        pq.write_table(self.table.replace_schema_metadata(meta), buf, **parquet_options())
        return buf.getvalue()


def read_tables(files: Iterable[str | os.PathLike]) -> list:
    """The vectors files, each checked against the contract (the job's own definition) and cast to it."""
    tables = []
    for f in files:
        try:
            tables.append(read_vectors(f))
        except ContractError as exc:
            raise UserError(str(exc)) from None
    if not tables:
        raise UserError("no vectors files to upload")
    return tables


def plan_objects(tables: list, root: str, *, done: dict[str, set[str]], client_id: str | None = None,
                 rows_per_object: int = DEFAULT_ROWS_PER_OBJECT,
                 projection_id: str | None = None) -> tuple[list[PlannedObject], int]:
    """Cut the rows into content-named objects: per model fingerprint, rows not in ``done[model]`` (the
    manifest's image ids), the first row of each image id, sorted by image id, ``rows_per_object`` at a time.
    Returns the objects and the number of rows left out because ``done`` has them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if rows_per_object < 1:
        raise UserError(f"--rows-per-object={rows_per_object} must be at least 1")
    table = pa.concat_tables(tables)
    kind = f"projected:{projection_id}" if projection_id else "vectors"
    planned, skipped = [], 0
    for model_sha in sorted(set(table.column("model_sha256").to_pylist())):
        part = table.filter(pc.equal(table.column("model_sha256"), model_sha))
        first: dict[str, int] = {}
        for n, i in enumerate(part.column("image_id").to_pylist()):
            first.setdefault(i, n)    # same image twice (in two files): the first, as the job would keep
        keep = sorted((i, n) for i, n in first.items() if i not in done.get(model_sha, set()))
        skipped += len(first) - len(keep)
        if not keep:
            continue
        part = part.take(pa.array([n for _, n in keep]))
        by = client_id or _one_client(part)
        model_name = part.column("model_name")[0].as_py() or ""
        for offset in range(0, part.num_rows, rows_per_object):
            chunk = part.slice(offset, rows_per_object)
            ids = chunk.column("image_id").to_pylist()
            key = (projected_object_key(root, model_sha, projection_id, by, ids) if projection_id
                   else vectors_object_key(root, model_sha, by, ids))
            planned.append(PlannedObject(key, chunk, model_sha, model_name, kind, projection_id))
    return planned, skipped


def _one_client(table) -> str:
    clients = set(table.column("client_id").to_pylist())
    if None in clients or len(clients) != 1:
        raise UserError(f"the rows name {'no' if None in clients else len(clients)} client id(s) "
                        f"({', '.join(sorted(str(c) for c in clients))[:200]}); pass --client-id to name who uploads")
    try:
        return check_client_id(clients.pop())
    except ContractError as exc:
        raise UserError(f"{exc}; pass --client-id") from None


def upload_vectors(client, files: Iterable[str | os.PathLike], bucket: str, root: str, *, manifest: Manifest,
                   client_id: str | None = None, rows_per_object: int = DEFAULT_ROWS_PER_OBJECT,
                   endpoint_url: str | None = None, progress: bool = True,
                   projection_id: str | None = None, recheck: bool = False) -> UploadSummary:
    """Upload the rows of vectors files under ``s3://bucket/root/vectors/`` (or, for projected vectors
    made with ``projection_id``, under ``root/projected/``); see the module doc. ``recheck``: send every object
    again (conditionally), whatever the manifest says."""
    from botocore.exceptions import BotoCoreError, ClientError
    from tqdm import tqdm

    if client_id is not None:
        try:
            check_client_id(client_id)
        except ContractError as exc:
            raise UserError(str(exc)) from None
    tables = read_tables(files)
    kind = f"projected:{projection_id}" if projection_id else "vectors"
    shas = {sha for t in tables for sha in t.column("model_sha256").to_pylist()}
    done = {} if recheck else {sha: manifest.uploaded_ids(bucket, root, kind, sha) for sha in shas}
    planned, skipped = plan_objects(tables, root, done=done, client_id=client_id, rows_per_object=rows_per_object,
                                    projection_id=projection_id)
    summary = UploadSummary(rows_skipped=skipped, rows_on_manifest_word=skipped)
    counter = RequestCounter(client)
    start = time.perf_counter()
    check_bucket(client, bucket, endpoint_url)
    bar = tqdm(total=sum(o.table.num_rows for o in planned), desc="uploading vectors", unit="row",
               disable=not progress, leave=False)
    try:
        for obj in planned:
            rows = obj.table.num_rows
            if not recheck and manifest.has_object(bucket, obj.key):
                summary.objects_skipped += 1
                summary.rows_skipped += rows
                summary.rows_on_manifest_word += rows
                bar.update(rows)
                continue
            body = obj.body()
            try:
                etag = put_if_absent(client, bucket, obj.key, body, ContentType="application/vnd.apache.parquet",
                                     Metadata={"fruits-model-sha256": obj.model_sha256, "fruits-rows": str(rows),
                                               "fruits-content": content_key(obj.model_sha256, obj.image_ids)})
            except (ClientError, BotoCoreError, ConnectionError) as exc:  # urllib3 errors botocore does not wrap
                _fail(exc, bucket, endpoint_url)
            manifest.record(bucket, obj.key, root=root, kind=obj.kind, model_sha256=obj.model_sha256,
                            image_ids=obj.image_ids, rows=rows, size=len(body) if etag else 0, etag=etag or "")
            bar.update(rows)
            if etag is None:  # on S3 already (another machine, or a run killed after the PUT)
                summary.objects_skipped += 1
                summary.rows_skipped += rows
                continue
            summary.objects_put += 1
            summary.rows_put += rows
            summary.bytes_put += len(body)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    summary.requests = counter.total
    return summary


def header_safe(text: str, limit: int = 1024) -> str:
    r"""Text for an S3 user-metadata header: printable ASCII; anything else (newlines, accents) percent-encoded.

    >>> header_safe("Pomme\nrouge é")
    'Pomme%0Arouge %C3%A9'
    """
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[]^_`{|}~")[:limit]


def upload_raw(client, photos: list[Photo], bucket: str, root: str, *, manifest: Manifest, client_id: str,
               endpoint_url: str | None = None, progress: bool = True, recheck: bool = False) -> UploadSummary:
    """For clients that cannot vectorize: put the photos themselves under ``root/raw/``.

    Keys are :func:`contract.layout.raw_object_key`: ``client=<id>/label=<label>/<image_id><ext>``, so the same
    photo is stored once whatever its name, and the server-side featurization reads the label from the key;
    the original name and label travel as object metadata, percent-encoded (:func:`header_safe`). A photo that
    cannot be read or named is listed in ``summary.refused`` with its reason; the others go on.
    """
    from botocore.exceptions import BotoCoreError, ClientError
    from tqdm import tqdm

    from featurizer.preprocess import ImageRejected, image_id, read_photo

    try:
        check_client_id(client_id)
    except ContractError as exc:
        raise UserError(str(exc)) from None
    for label, ext in sorted({(p.label or "", p.path.suffix) for p in photos}):
        try:   # every key is known but for the image id (fixed length): refuse a bad one before any work
            raw_object_key(root, client_id, label, "0" * 64, ext)
        except ContractError as exc:
            raise UserError(f"label {label[:60]!r}{'...' if len(label) > 60 else ''}: {exc}") from None
    summary = UploadSummary()
    counter = RequestCounter(client)
    check_bucket(client, bucket, endpoint_url)
    start = time.perf_counter()
    done = set() if recheck else manifest.uploaded_ids(bucket, root, "raw")
    for photo in tqdm(photos, desc="uploading photos", unit="img", disable=not progress, leave=False):
        try:
            data = read_photo(photo.path)
        except ImageRejected as exc:
            summary.refused.append((photo.source, str(exc)))
            continue
        iid = image_id(data)
        if iid in done:
            summary.rows_skipped += 1
            summary.rows_on_manifest_word += 1
            continue
        try:
            key = raw_object_key(root, client_id, photo.label, iid, photo.path.suffix)
        except ContractError as exc:
            summary.refused.append((photo.source, str(exc)))
            continue
        meta = {"fruits-source": header_safe(photo.source)}
        if photo.label is not None:
            meta["fruits-label"] = header_safe(photo.label)
        try:
            etag = put_if_absent(client, bucket, key, data, Metadata=meta)
        except (ClientError, BotoCoreError, ConnectionError) as exc:
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

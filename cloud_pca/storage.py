"""Where the job's files are, and how they are read, written and listed: local paths, ``s3a://`` (and EMR's ``s3://``)
and any other Hadoop filesystem, with the session's S3A settings.

The Spark session (:mod:`cloud_pca.spark`) says where the store is (endpoint, keys, path style); this module reads
and writes through it: S3 with boto3 and pyarrow in Python (small files, listings, the driver's reads), other
schemes through Hadoop's filesystem in the JVM. The job's Python tasks open files with :func:`open_file` and the
options of :func:`storage_options`, as the JVM would.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple
from urllib.parse import urlparse

from cloud_pca.spark import hadoop_settings

_FILESYSTEMS: dict = {}          # per Python worker: one pyarrow filesystem per storage settings


def storage_options(spark) -> dict:
    """What a Python task needs to open the job's files as the JVM does: the session's S3A settings."""
    get = hadoop_settings(spark, ["fs.s3a.endpoint", "fs.s3a.path.style.access", "fs.s3a.connection.ssl.enabled",
                                  "fs.s3a.endpoint.region", "fs.s3a.access.key", "fs.s3a.secret.key",
                                  "fs.s3a.session.token"]).get   # (a lazy session's without starting it)
    return {"endpoint": get("fs.s3a.endpoint"), "path_style": get("fs.s3a.path.style.access") == "true",
            "ssl": get("fs.s3a.connection.ssl.enabled") != "false", "region": get("fs.s3a.endpoint.region"),
            "access_key": get("fs.s3a.access.key"), "secret_key": get("fs.s3a.secret.key"),
            "session_token": get("fs.s3a.session.token")}


def open_file(options: dict, uri: str):
    """A pyarrow input file for a path or URI the JVM listed (``file:/...``, ``s3a://bucket/key``, ``s3://``)."""
    from pyarrow import fs as pafs

    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a", "s3n"):
        key = ("s3", json.dumps(options, sort_keys=True))
        s3 = _FILESYSTEMS.get(key)
        if s3 is None:
            kwargs = {}
            if options.get("endpoint"):
                endpoint = options["endpoint"]
                kwargs["endpoint_override"] = endpoint.split("://", 1)[-1]
                kwargs["scheme"] = "https" if endpoint.startswith("https") or (
                    "://" not in endpoint and options.get("ssl")) else "http"
                kwargs["force_virtual_addressing"] = not options.get("path_style")
            if options.get("region"):
                kwargs["region"] = options["region"]
            if options.get("access_key") and options.get("secret_key"):
                kwargs.update(access_key=options["access_key"], secret_key=options["secret_key"],
                              session_token=options.get("session_token"))
            s3 = _FILESYSTEMS[key] = pafs.S3FileSystem(**kwargs)
        return s3.open_input_file(parsed.netloc + parsed.path)
    return pafs.LocalFileSystem().open_input_file(parsed.path if parsed.scheme == "file" else uri)


DRIVER_READ_BYTES = 128 * 2**20  # a folder the job wrote is read back by the driver up to this size (one task's worth)


def small_table(spark, folder: str, columns: list[str] | None = None, *, limit: int | None = None):
    """A Parquet folder the job wrote (projections, rejects) as one pyarrow Table read by the driver, when its files
    are no more than ``limit`` bytes (one task's worth: publishing and reporting a small run start no Spark job);
    None when it is larger (read it with Spark). Columns a file lacks are left out of its table, as Spark's reader
    would give them null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = list_files(spark, folder)
    if sum(f.size for f in files) > (DRIVER_READ_BYTES if limit is None else limit):
        return None
    options, tables = storage_options(spark), []
    for f in files:
        with open_file(options, f.path) as fh:
            pf = pq.ParquetFile(fh)
            tables.append(pf.read(columns=[c for c in columns if c in pf.schema_arrow.names] if columns else None))
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def _copy(spark, src_fs, src, dst_fs, dst) -> None:
    """Copy one file between Hadoop filesystems inside the JVM (``FileUtil.copy``: streams, any filesystem;
    S3A's own ``copyFromLocalFile`` fails on a single file in Hadoop 3.3.4: "Cannot get relative path")."""
    jvm = spark._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    if not jvm.org.apache.hadoop.fs.FileUtil.copy(src_fs, src, dst_fs, dst, False, True, conf):
        raise OSError(f"could not copy {src.toString()} to {dst.toString()}")


def _local_fs(spark):
    """The local filesystem without checksum files."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    return spark._jvm.org.apache.hadoop.fs.FileSystem.getLocal(conf).getRawFileSystem()


def read_bytes(spark, uri: str) -> bytes:
    """Read a file through Hadoop (local, s3a://, EMR's s3://). The JVM copies it to a local temporary file
    that Python reads: py4j carries only the names (its byte transfer runs at ~15 MB/s, a 7 MB state took 0.5 s).
    A missing file is :class:`FileNotFoundError` on every path."""
    import tempfile

    where = _s3_key(spark, uri)
    if where is not None:   # boto3: one GET (S3A's open and copy took 30-70 ms a file, most of a small refresh's I/O)
        s3 = _s3a_client(spark)
        try:
            return s3.get_object(Bucket=where[0], Key=where[1])["Body"].read()
        except s3.exceptions.ClientError as exc:
            if _not_found(exc):
                raise FileNotFoundError(f"No such file or directory: {uri}") from None
            raise
    local = _local_file(uri)
    folder, name = os.path.split(local) if local is not None else ("", "")
    if local is not None and not os.path.exists(os.path.join(folder, f".{name}.crc")):
        with open(local, "rb") as f:   # (a file Hadoop wrote, with its .crc beside it, is read by Hadoop: it checks it)
            return f.read()
    fs, path = _fs_path(spark, uri)
    with tempfile.TemporaryDirectory(prefix="fruits-read-") as tmp:
        local = os.path.join(tmp, "data")
        try:
            _copy(spark, fs, path, _local_fs(spark), spark._jvm.org.apache.hadoop.fs.Path(f"file://{local}"))
        except Exception as exc:   # Py4JJavaError: as the Python paths say it, whatever the filesystem
            if "java.io.FileNotFoundException" in str(exc):
                raise FileNotFoundError(f"No such file or directory: {uri}") from None
            raise
        with open(local, "rb") as f:
            return f.read()


def read_range(spark, uri: str, start: int, n: int) -> bytes | None:
    """``n`` bytes from ``start`` of a ``file:`` or S3A file (one ranged GET); None for other schemes."""
    where, local = _s3_key(spark, uri), _local_file(uri)
    if where is not None:
        s3 = _s3a_client(spark)
        try:
            return s3.get_object(Bucket=where[0], Key=where[1], Range=f"bytes={start}-{start + n - 1}")["Body"].read()
        except s3.exceptions.ClientError as exc:
            if _not_found(exc):
                raise FileNotFoundError(f"No such file or directory: {uri}") from None
            raise
    if local is not None:
        with open(local, "rb") as f:
            f.seek(start)
            return f.read(n)
    return None


def _local_file(uri: str) -> str | None:
    """The path of a ``file:`` URI (None for any other scheme, and for a path without one: Spark resolves that
    against the cluster's default filesystem)."""
    if not uri.startswith("file:"):
        return None
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.netloc in ("", "localhost") else None


def _write_local(target: str, data: bytes) -> None:
    """Write a local file directly (atomically: a temporary name, then a rename), removing a stale Hadoop ``.crc``
    beside it (Hadoop's reads would check the new bytes against it)."""
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    crc = os.path.join(folder, f".{name}.crc")
    if os.path.exists(crc):
        os.remove(crc)


def write_bytes(spark, uri: str, data: bytes) -> None:
    """Write a file (JSON, CSV, PNG, npz) through Hadoop, so local paths, s3a:// and EMR's s3:// all work; the
    bytes go through a local temporary file, not through py4j. A ``file:`` URI is written directly (a Hadoop copy
    cost ~25 ms of py4j and set-up per file: a third of a small refresh's write stage)."""
    import tempfile

    local = _local_file(uri)
    if local is not None:
        _write_local(local, data)
        return
    where = _s3_key(spark, uri)
    if where is not None:   # boto3: one PUT (S3A's create checked parents and markers: 6-8 requests a file)
        _s3a_client(spark).put_object(Bucket=where[0], Key=where[1], Body=data)
        return
    fs, path = _fs_path(spark, uri)
    with tempfile.TemporaryDirectory(prefix="fruits-write-") as tmp:
        local = os.path.join(tmp, "data")
        with open(local, "wb") as f:
            f.write(data)
        _copy(spark, _local_fs(spark), spark._jvm.org.apache.hadoop.fs.Path(f"file://{local}"), fs, path)
    if fs.getClass().getSimpleName() == "LocalFileSystem":   # a stale .crc of an earlier file would fail reads
        crc = fs.getChecksumFile(path)
        if fs.getRawFileSystem().exists(crc):
            fs.getRawFileSystem().delete(crc, False)


def write_tree(spark, uri: str, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path -> bytes) under the folder ``uri`` with one JVM copy of a local folder: a
    saved model is 11 small files, and a copy each cost ~25 ms of py4j and Hadoop set-up (a third of a small
    refresh's write stage). Where ``uri`` exists already (a copy would nest the folder in it), file by file; a
    ``file:`` URI directly."""
    import tempfile

    direct = _local_file(uri) is not None or _s3_key(spark, uri) is not None   # write_bytes writes these without Hadoop
    fs, path = (None, None) if direct else _fs_path(spark, uri)
    if direct or fs.exists(path):
        for rel, data in files.items():
            write_bytes(spark, f"{uri.rstrip('/')}/{rel}", data)
        return
    with tempfile.TemporaryDirectory(prefix="fruits-write-") as tmp:
        top = os.path.join(tmp, "tree")
        for rel, data in files.items():
            local = os.path.join(top, *rel.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with open(local, "wb") as f:
                f.write(data)
        if fs.getClass().getSimpleName() == "LocalFileSystem":   # no .crc files, as write_bytes leaves none
            fs = fs.getRawFileSystem()
        _copy(spark, _local_fs(spark), spark._jvm.org.apache.hadoop.fs.Path(f"file://{top}"), fs, path)


def write_rows(spark, uri: str, rows, *, name: str = "part-00000-driver.zstd.parquet",
               row_group_rows: int | None = None) -> dict[str, int] | None:
    """Rows as a Parquet folder Spark reads: a DataFrame written by Spark (refusing an existing folder); a pyarrow
    Table (a batch the driver read, too small to be worth a Spark job) by the driver through :func:`write_bytes`:
    one file (in row groups of ``row_group_rows``, else pyarrow's), then ``_SUCCESS``. Returns ``{file name: size}``
    of what the driver wrote (None for Spark's files)."""
    if not hasattr(rows, "num_rows"):
        rows.write.mode("errorifexists").parquet(uri)
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(rows, sink, compression="zstd", row_group_size=row_group_rows)
    data = sink.getvalue().to_pybytes()
    write_bytes(spark, f"{uri.rstrip('/')}/{name}", data)
    write_bytes(spark, f"{uri.rstrip('/')}/_SUCCESS", b"")
    return {name: len(data)}


def file_version(status) -> str:
    """What identifies one version of a listed file: its ETag where the store gives one (S3A, EMRFS), else its
    modification time. A rewritten object gets another (incremental state compares them)."""
    for getter in ("getEtag", "getETag"):
        try:
            tag = getattr(status, getter)()
        except Exception:  # not an S3 status (py4j: no such method)
            continue
        if tag:
            return f"etag:{str(tag).strip(chr(34))}"
    return f"mtime:{int(status.getModificationTime())}"


class Listed(NamedTuple):
    """A listed file: its path, size, version (:func:`file_version`) and modification time (ms since the epoch, the
    store's clock: for S3 the time the object was created, which no device can set)."""

    path: str
    size: int
    version: str
    mtime: int


def list_files(spark, uri: str, suffixes: tuple[str, ...] | None = (".parquet",)) -> list[Listed]:
    """Files under ``uri`` (recursive) whose names end with ``suffixes`` (any name when ``None``, case-insensitive),
    sorted by path.

    Names starting with ``_`` or ``.`` (markers, temporary files) are left out, as Spark does.

    ``s3a://`` (and ``s3://`` where the session maps it to S3A) and ``file:`` are listed in Python (boto3 with the
    session's S3A settings; the local filesystem), with
    the paths, sizes, versions and times Hadoop gives: walking Hadoop's iterator over py4j cost 3-6 ms a file, so
    a daily refresh grew by seconds as its inputs grew over a year. Other schemes (EMRFS's ``s3://``) go through
    Hadoop.
    """
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme == "file" or _s3_key(spark, uri) is not None:
        keep = [f for f in (_list_local(uri) if scheme == "file" else _list_s3a(spark, uri))
                if not f.path.rsplit("/", 1)[-1].startswith(("_", "."))
                and (suffixes is None or f.path.rsplit("/", 1)[-1].lower().endswith(suffixes))]
        return sorted(keep)
    return list_hadoop(spark, uri, suffixes)


def list_days(spark, uri: str, days: list[str], suffixes: tuple[str, ...] = (".parquet",)) -> list[Listed]:
    """:func:`list_files` of the ``day=<day>/`` folders of ``days`` (consecutive) under the folder ``uri``: on S3 one
    listing from the first day's folder to the last's (``StartAfter``; a page of 1,000 keys a request), elsewhere
    folder by folder."""
    where = _s3_key(spark, uri)
    if where is None:
        return sorted(f for d in days for f in list_files(spark, f"{uri.rstrip('/')}/day={d}/", suffixes))
    s3, scheme = _s3a_client(spark), uri.split("://", 1)[0]
    bucket, folder = where[0], where[1].strip("/") + "/" if where[1].strip("/") else ""
    last = f"{folder}day={days[-1]}/"
    out = []
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{folder}day=",
                                                         StartAfter=f"{folder}day={days[0]}")
    for page in pages:
        for o in page.get("Contents", []):
            key = o["Key"]
            if key > last and not key.startswith(last):
                return sorted(out)
            name = key.rsplit("/", 1)[-1]
            if not name.startswith(("_", ".")) and name.lower().endswith(suffixes):
                out.append(Listed(f"{scheme}://{bucket}/{key}", int(o["Size"]), f"etag:{o['ETag'].strip(chr(34))}",
                                  int(o["LastModified"].timestamp() * 1000)))
    return sorted(out)


def list_hadoop(spark, uri: str, suffixes: tuple[str, ...] | None = (".parquet",)) -> list[Listed]:
    """:func:`list_files` through Hadoop's filesystem (any scheme; what the Python listings must equal)."""
    fs, root = _fs_path(spark, uri)
    if not fs.exists(root):
        return []
    it = fs.listFiles(root, True)
    out = []
    while it.hasNext():
        st = it.next()
        name = st.getPath().getName()
        if name.startswith(("_", ".")) or (suffixes is not None and not name.lower().endswith(suffixes)):
            continue
        out.append(Listed(st.getPath().toString(), int(st.getLen()), file_version(st), int(st.getModificationTime())))
    return sorted(out)



def _list_local(uri: str) -> list[Listed]:
    """Every file under a ``file:`` URI (or the file itself), as Hadoop's local filesystem lists it: ``file:/path``,
    the modification time in whole milliseconds."""
    from urllib.parse import unquote, urlparse

    root = os.path.normpath(unquote(urlparse(uri).path) or "/")

    def listed(path: str, st) -> Listed:
        mtime = st.st_mtime_ns // 1_000_000
        return Listed(f"file:{path}", int(st.st_size), f"mtime:{mtime}", int(mtime))

    if os.path.isfile(root):
        return [listed(root, os.stat(root))]
    out = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                out.append(listed(path, os.stat(path)))
            except FileNotFoundError:   # removed while listed
                continue
    return out


_S3_CLIENTS: dict = {}


def _s3a_client(spark):
    """A boto3 S3 client with the session's S3A settings (endpoint, path style, keys), one per settings."""
    from botocore.config import Config

    options = storage_options(spark)
    key = json.dumps(options, sort_keys=True)
    s3 = _S3_CLIENTS.get(key)
    if s3 is None:
        kwargs = {"region_name": options.get("region") or os.environ.get("AWS_REGION") or "us-east-1",
                  "config": Config(s3={"addressing_style": "path" if options.get("path_style") else "auto"},
                                   retries={"max_attempts": 5, "mode": "standard"})}
        if options.get("endpoint"):
            endpoint = options["endpoint"]
            kwargs["endpoint_url"] = endpoint if "://" in endpoint else \
                f"{'https' if options.get('ssl') else 'http'}://{endpoint}"
        if options.get("access_key") and options.get("secret_key"):
            kwargs.update(aws_access_key_id=options["access_key"], aws_secret_access_key=options["secret_key"],
                          aws_session_token=options.get("session_token"))
        s3 = _S3_CLIENTS[key] = _boto3_session().client("s3", **kwargs)
    return s3


def _fast_timestamp(value):
    """S3's ISO 8601 times (each listed object's LastModified) parsed by ``datetime.fromisoformat``: botocore's
    default (dateutil) took 160 us each, a third of the time to list 1,460 objects. Any other form as botocore does."""
    from datetime import datetime

    from botocore.utils import parse_timestamp

    if isinstance(value, str) and len(value) >= 20 and value[10:11] == "T" and value.endswith("Z"):
        try:
            return datetime.fromisoformat(value[:-1] + "+00:00")
        except ValueError:
            pass
    return parse_timestamp(value)


def _boto3_session():
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_fast_timestamp)
    return boto3.session.Session(botocore_session=core)


def _s3_key(spark, uri: str) -> tuple[str, str] | None:
    """(bucket, key) of an ``s3a://`` URI, or of an ``s3://`` one where the session maps ``s3://`` to S3A (local mode
    and a standalone cluster: :func:`s3a_conf`; the EMR chains name their files ``s3://``); None otherwise (EMRFS's
    ``s3://`` on EMR goes through Hadoop)."""
    if not (uri.startswith("s3a://") or (uri.startswith("s3://") and _s3_is_s3a(spark))):
        return None
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def _s3_is_s3a(spark) -> bool:
    return hadoop_settings(spark, ["fs.s3.impl"])["fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"


def ready_to_list(spark, uris: list[str]) -> None:
    """What listing ``uris`` from another thread needs, made on this one: the S3 client (creating it imports botocore
    modules, and threads that import a module for the first time at once can deadlock on its import lock), and a
    lazy session's JVM where Hadoop lists (it starts on the main thread)."""
    if any(_s3_key(spark, u) is not None for u in uris):
        _s3a_client(spark)
    if any(_s3_key(spark, u) is None and _local_file(u) is None for u in uris):
        spark.sparkContext


def _not_found(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _list_s3a(spark, uri: str) -> list[Listed]:
    """Every object under an ``s3a://`` URI (or the object itself), with its ETag (as S3A gives it, unquoted)."""
    s3 = _s3a_client(spark)
    bucket, prefix = _s3_key(spark, uri)
    scheme = uri.split("://", 1)[0]   # paths as Hadoop spells them: in the URI's scheme

    def listed(o) -> Listed:
        mtime = int(o["LastModified"].timestamp() * 1000)
        return Listed(f"{scheme}://{bucket}/{o['Key']}", int(o["Size"]), f"etag:{o['ETag'].strip(chr(34))}", mtime)

    out = []
    folder = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
        out.extend(listed(o) for o in page.get("Contents", []) if not o["Key"].endswith("/"))
    if not out and folder:   # the URI names one object
        try:
            head = s3.head_object(Bucket=bucket, Key=prefix.rstrip("/"))
        except s3.exceptions.ClientError as exc:
            if _not_found(exc):
                return []
            raise
        out.append(listed({"Key": prefix.rstrip("/"), "Size": head["ContentLength"], "ETag": head["ETag"],
                           "LastModified": head["LastModified"]}))
    return out


def _fs_path(spark, uri: str):
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def path_exists(spark, uri: str) -> bool:
    """A file or a folder (``s3a://``: an object, or any object under it as a folder, as S3A says)."""
    where = _s3_key(spark, uri)
    if where is not None:
        s3 = _s3a_client(spark)
        key = where[1].rstrip("/")
        if key:
            try:
                s3.head_object(Bucket=where[0], Key=key)
                return True
            except s3.exceptions.ClientError as exc:
                if not _not_found(exc):
                    raise
        return bool(s3.list_objects_v2(Bucket=where[0], Prefix=f"{key}/" if key else "", MaxKeys=1).get("KeyCount"))
    local = _local_file(uri)
    if local is not None:
        return os.path.exists(local)
    fs, path = _fs_path(spark, uri)
    return bool(fs.exists(path))


def delete_path(spark, uri: str, *, recursive: bool = False) -> bool:
    """Delete a file (or a folder with ``recursive``); False when there was nothing to delete."""
    fs, path = _fs_path(spark, uri)
    return bool(fs.delete(path, recursive))


def list_dirs(spark, uri: str) -> list[str]:
    """Names of the folders directly under ``uri`` (none when it does not exist); ``s3a://`` (common prefixes, as
    S3A lists them) and ``file:`` in Python."""
    where, local = _s3_key(spark, uri), _local_file(uri)
    if where is not None:
        s3, folder = _s3a_client(spark), where[1].rstrip("/") + "/" if where[1].strip("/") else ""
        names = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=where[0], Prefix=folder, Delimiter="/"):
            names.update(p["Prefix"][len(folder):].rstrip("/") for p in page.get("CommonPrefixes", []))
        return sorted(n for n in names if n)
    if local is not None:
        return sorted(e.name for e in os.scandir(local) if e.is_dir()) if os.path.isdir(local) else []
    return list_dirs_hadoop(spark, uri)


def list_dirs_hadoop(spark, uri: str) -> list[str]:
    """:func:`list_dirs` through Hadoop's filesystem (any scheme; what the Python listings must equal)."""
    fs, path = _fs_path(spark, uri)
    if not fs.exists(path):
        return []
    return sorted(st.getPath().getName() for st in fs.listStatus(path) if st.isDirectory())

"""One way to get a SparkSession, for local mode, tests and EMR steps alike.

Under ``spark-submit`` (an EMR step) the session the launcher configured is used as it is.  Started
from plain Python, it runs in local mode with the S3 connector on the classpath and ``s3a://`` (and
``s3://``, mapped to S3A) pointed at ``s3_endpoint`` when one is given.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from contextlib import contextmanager
from typing import Mapping, NamedTuple


def _under_spark_submit() -> bool:
    # spark-submit starts the Python driver with a gateway already running.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def s3a_conf(endpoint: str | None = None, access_key: str | None = None, secret_key: str | None = None,
             region: str | None = None) -> dict[str, str]:
    """Hadoop settings (``spark.hadoop.*``) for S3A against AWS or an S3-compatible endpoint."""
    conf = {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.fast.upload": "true",
        "spark.hadoop.fs.s3a.connection.maximum": "64",
        "spark.hadoop.fs.s3a.attempts.maximum": "3",
        "spark.hadoop.fs.s3a.retry.limit": "3",
    }
    if endpoint:
        conf.update({
            "spark.hadoop.fs.s3a.endpoint": endpoint,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https")).lower(),
            "spark.hadoop.fs.s3a.endpoint.region": region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "spark.hadoop.fs.s3a.change.detection.mode": "none",
        })
    access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        conf.update({
            "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
            "spark.hadoop.fs.s3a.access.key": access_key,
            "spark.hadoop.fs.s3a.secret.key": secret_key,
        })
    return conf


# What every session of the job gets, in local mode, on a standalone cluster and on EMR (bootstrap/emr.py
# writes these into the cluster's spark-defaults): settings of the job, not tuning for one machine.
CLUSTER_DEFAULTS: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.session.timeZone": "UTC",
    # Images are big rows: keep Arrow batches small so a Python worker holds tens of MB, not GBs.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    # One BLAS / interpreter thread per Python worker: Spark already runs one worker per core.
    "spark.executorEnv.OMP_NUM_THREADS": "1",
    "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
    "spark.executorEnv.MKL_NUM_THREADS": "1",
    # S3A: keep directory markers (no DeleteObject on parents after each write).
    "spark.hadoop.fs.s3a.directory.marker.retention": "keep",
}

# Only for a local-mode session started from plain Python (one JVM on this machine): never on a cluster,
# where Spark's defaults apply as on EMR, so that tests on a cluster see what EMR would.
LOCAL_MODE_TUNING: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.python.worker.reuse": "true",
}


def is_local_master(master: str) -> bool:
    return master == "local" or master.startswith("local[")


def is_loopback_master(master: str) -> bool:
    """Local mode, or a standalone master on this machine (``spark://127.0.0.1:7077``)."""
    return is_local_master(master) or master.startswith(("spark://127.0.0.1:", "spark://localhost:"))


class LazySession:
    """A SparkSession that starts on first use: what a command started from plain Python gets
    (``get_spark(lazy=True)``). A daily refresh of a small batch reads and writes through Python (pyarrow, boto3)
    and starts no Spark job, so it never pays the JVM's start (4.6-5.2 s of a cold run's ~6.5 s of fixed cost
    here); a run that needs Spark starts it at its first Spark call, with the same settings.

    Any attribute of a SparkSession starts it (``spark.read``, ``spark.sparkContext``, ...); :attr:`started` and
    :func:`hadoop_settings` do not. ``on_start(fn)`` runs ``fn(session)`` once it has started (at once if it has)."""

    def __init__(self, app_name: str, settings: dict[str, str]):
        self.app_name = app_name
        self.settings = dict(settings)
        self._session = None
        self._on_start: list = []
        self._lock = threading.RLock()   # threads reading footers through Hadoop may all ask at once

    @property
    def started(self) -> bool:
        return self._session is not None

    def session(self):
        """The SparkSession, started now if it was not."""
        with self._lock:
            if self._session is None:
                session = _start_session(self.app_name, self.settings)
                for fn in self._on_start:
                    fn(session)
                self._on_start.clear()
                self._session = session
        return self._session

    def on_start(self, fn) -> None:
        if self._session is not None:
            fn(self._session)
        else:
            self._on_start.append(fn)

    def forget(self, fn) -> None:
        """No longer run ``fn`` at the start (a block that ended before it)."""
        if fn in self._on_start:
            self._on_start.remove(fn)

    def stop(self) -> None:
        global _LAZY
        if self._session is not None:
            self._session.stop()
            self._session = None
        if _LAZY is self:
            _LAZY = None

    def __getattr__(self, name):
        if name.startswith("__"):   # copy, pickle and the like: not the session's
            raise AttributeError(name)
        return getattr(self.session(), name)


_LAZY: LazySession | None = None


_SETTINGS_HELD: dict | None = None   # hadoop_settings() answers kept while a job runs (:func:`settings_held`)


def hadoop_settings(spark, keys) -> dict[str, str | None]:
    """Hadoop settings (``fs.s3a.endpoint``, ...) as the session has them, or, for a lazy session not started, as it
    will have them (without starting it)."""
    if not_started(spark):
        return {k: spark.settings.get(f"spark.hadoop.{k}") for k in keys}
    held = _SETTINGS_HELD
    if held is not None and all((id(spark), k) in held for k in keys):
        return {k: held[(id(spark), k)] for k in keys}
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    values = {k: conf.get(k) for k in keys}
    out = {k: str(v) if v is not None else None for k, v in values.items()}
    if held is not None:
        held.update({(id(spark), k): v for k, v in out.items()})
    return out


@contextmanager
def settings_held():
    """Within it, :func:`hadoop_settings` asks the JVM once per setting: a job does not change them while it runs,
    and each answer is a py4j round trip (a daily refresh asked 46 times for the same 7: 0.09 s)."""
    global _SETTINGS_HELD
    outer = _SETTINGS_HELD
    _SETTINGS_HELD = {} if outer is None else outer
    try:
        yield
    finally:
        _SETTINGS_HELD = outer


def not_started(spark) -> bool:
    """A lazy session that has not started: no JVM to ask."""
    return isinstance(spark, LazySession) and not spark.started


def get_spark(app_name: str = "fruits", *, master: str | None = None, s3_endpoint: str | None = None,
              conf: Mapping[str, str] | None = None, lazy: bool = False):
    """The active SparkSession, or a new one configured for this project.

    Under ``spark-submit`` (an EMR step) the launcher's configuration is used as it is. Otherwise
    ``master`` (default ``FRUITS_SPARK_MASTER`` or ``local[2]``): local mode gets :data:`LOCAL_MODE_TUNING`;
    a ``spark://`` master gets Spark's defaults, as EMR does. On this machine (local mode or a loopback
    master) the driver binds to 127.0.0.1 only. With ``lazy`` (the command line, from plain Python) a
    :class:`LazySession`: the JVM starts when a Spark call needs it.

    >>> spark = get_spark(master="local[2]")   # doctest: +SKIP
    """
    global _LAZY
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is None and _LAZY is not None and _LAZY.started:
        if _LAZY.session().sparkContext._jsc is not None:   # else stopped since: a new one
            active = _LAZY.session()
    if active is not None:
        if s3_endpoint:  # a session started elsewhere (tests, notebooks): set S3A at run time
            hconf = active.sparkContext._jsc.hadoopConfiguration()
            for key, value in s3a_conf(s3_endpoint).items():
                hconf.set(key[len("spark.hadoop."):], value)
        return active
    # Executors' Python must be this interpreter (the venv), not whatever "python3" is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    settings: dict[str, str] = dict(CLUSTER_DEFAULTS)
    if not _under_spark_submit():
        from cloud_pca.connector import connector_jars

        master = master or os.environ.get("FRUITS_SPARK_MASTER", "local[2]")
        settings.update({
            "spark.master": master,
            "spark.jars": ",".join(str(p) for p in connector_jars()),
            "spark.ui.showConsoleProgress": "false",
        })
        if is_loopback_master(master):
            # Bind to loopback: without it Spark picks the machine's first non-loopback address.
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            settings.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                             "spark.ui.enabled": "false"})
        if is_local_master(master):
            settings.update(LOCAL_MODE_TUNING)
            settings["spark.driver.memory"] = os.environ.get("FRUITS_DRIVER_MEMORY", "4g")
        settings.update(s3a_conf(s3_endpoint))
    settings.update(conf or {})
    if not _under_spark_submit():
        from cloud_pca.classarchive import java_options

        cds = java_options()   # the driver's classes mapped from an archive: ~3 s less of a cold start
        if cds:
            settings["spark.driver.extraJavaOptions"] = f"{cds} {settings.get('spark.driver.extraJavaOptions', '')}".strip()
    if lazy and not _under_spark_submit():   # (one not started yet is replaced: it holds nothing)
        _LAZY = LazySession(app_name, settings)
        return _LAZY
    return _start_session(app_name, settings)


def _start_session(app_name: str, settings: Mapping[str, str]):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


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

    from cloud_pca.scan import storage_options

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


class DriverTraffic:
    """Bytes of task results the driver received for the jobs run inside :func:`driver_traffic`."""

    def __init__(self, sc, tag: str):
        self.sc, self.tag = sc, tag
        self.totals: dict = {"bytes": 0, "jobs": 0, "stages": 0, "largest_stage_bytes": 0}

    def read(self) -> dict:
        """The totals so far (also while the block still runs; zeros while no session has started)."""
        if self.sc is not None:
            self.totals = _result_bytes(self.sc, self.tag)
        return self.totals

    def __getitem__(self, key: str):
        return self.totals[key]


@contextmanager
def driver_traffic(spark, label: str = "fruits"):
    """Measure what the jobs started inside the block sent to the driver: the sum of Spark's own
    ``resultSize`` task metric (serialized task results, as checked against ``spark.driver.maxResultSize``)
    over every stage of those jobs, read from the application's status store.

    >>> with driver_traffic(spark, "fit") as traffic:   # doctest: +SKIP
    ...     model = fit_pca(df, k=8)
    >>> traffic["bytes"], traffic["jobs"]              # doctest: +SKIP
    """
    tag = f"{label}-{uuid.uuid4().hex[:10]}"
    if not_started(spark):   # no job yet: tag the jobs once (if ever) the session starts
        traffic = DriverTraffic(None, tag)

        def started(session):
            traffic.sc = session.sparkContext
            traffic.sc.addJobTag(tag)

        spark.on_start(started)
        try:
            yield traffic
        finally:
            spark.forget(started)
            if traffic.sc is not None:
                traffic.sc.removeJobTag(tag)
                traffic.read()
        return
    sc = spark.sparkContext
    traffic = DriverTraffic(sc, tag)
    sc.addJobTag(traffic.tag)
    try:
        yield traffic
    finally:
        sc.removeJobTag(traffic.tag)
        traffic.read()


def _result_bytes(sc, tag: str) -> dict:
    jsc = sc._jsc.sc()
    jsc.listenerBus().waitUntilEmpty()          # the status store is filled by a listener, asynchronously
    tracker, store = jsc.statusTracker(), jsc.statusStore()
    jobs = list(tracker.getJobIdsForTag(tag))
    total = stages = largest = 0
    seen = set()
    for job in jobs:
        info = tracker.getJobInfo(job)
        if info.isEmpty():
            continue
        for stage in info.get().stageIds():
            if stage in seen:
                continue
            seen.add(stage)
            try:
                size = int(store.lastStageAttempt(stage).resultSize())
            except Exception:  # a skipped stage (its shuffle output was reused) never ran: nothing sent
                continue
            stages += 1
            total += size
            largest = max(largest, size)
    return {"bytes": total, "jobs": len(jobs), "stages": stages, "largest_stage_bytes": largest}


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

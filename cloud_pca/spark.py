"""One way to get a SparkSession, for local mode, tests and EMR steps alike.

Under ``spark-submit`` (an EMR step) the session the launcher configured is used as it is.  Started
from plain Python, it runs in local mode with the S3 connector on the classpath and ``s3a://`` (and
``s3://``, mapped to S3A) pointed at ``s3_endpoint`` when one is given.
"""
from __future__ import annotations

import os
import sys
import threading
import uuid
from contextlib import contextmanager
from typing import Mapping


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



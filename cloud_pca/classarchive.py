"""A class-data-sharing (AppCDS) archive of the Spark driver JVM's classes, for sessions started from plain Python.

A cold process that needs Spark spends most of its fixed cost loading and verifying the classes of Spark's jars:
measured here (``./run bench incremental`` prints it), a session took 3.3-4.4 s to start and its first job
3.1-3.5 s; with the archive, 2.3-2.5 s and 1.5-1.8 s. The archive is the JVM's own format (``-XX:ArchiveClassesAtExit``,
JDK 13+): one file per Java build, pyspark version and connector jars (they are in its name), written once by
``./run setup`` into ``.cache/jvm`` and then mapped read-only by every driver JVM this machine starts. A missing
or unusable archive costs nothing but the time: the JVM starts without it (``-Xshare:auto``).

Only the driver started from Python uses it (local mode, a standalone cluster's driver): under ``spark-submit`` (EMR)
the launcher starts the JVM before any of this code runs.

    python -m cloud_pca.classarchive        # build it if missing, print its path
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"   # no warnings for classes the JVM does not archive (signed jars)


def _java() -> Path | None:
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else (Path(shutil.which("java")) if shutil.which("java") else None)
    return java.resolve() if java is not None and java.exists() else None


def archive_path() -> Path | None:
    """Where the archive of this Java, pyspark and connector is (whether or not it exists); None without Java."""
    import pyspark

    from cloud_pca.connector import connector_jars, jars_dir

    java = _java()
    if java is None:
        return None
    st = java.stat()
    jars = [p.name for p in connector_jars(fetch=False)]
    key = hashlib.sha256("\n".join([str(java), str(st.st_size), str(int(st.st_mtime)), pyspark.__version__,
                                    *jars]).encode()).hexdigest()[:16]
    return jars_dir().parent / "jvm" / f"spark-driver-{key}.jsa"


def java_options() -> str:
    """The driver's JVM options that map the archive, or "" when there is none (yet)."""
    try:
        path = archive_path()
    except Exception:  # no pyspark, no connector: no archive
        return ""
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return ""
    return f"-XX:SharedArchiveFile={path} -Xshare:auto {QUIET}"


# What the archive is built from: a session doing what the job's runs do (DataFrames, Parquet, a Python task).
_WORKLOAD = r"""
import sys, tempfile
from cloud_pca.spark import get_spark
spark = get_spark("fruits-class-archive", master="local[1]",
                  conf={"spark.driver.extraJavaOptions": sys.argv[1]})
with tempfile.TemporaryDirectory() as tmp:
    df = spark.range(20000).selectExpr("id", "cast(id % 7 as string) as label", "array(cast(id as float)) as v")
    df.write.parquet(f"{tmp}/p")
    back = spark.read.parquet(f"file://{tmp}/p")
    back.groupBy("label").count().collect()
    back.mapInArrow(lambda batches: batches, back.schema).count()
    spark.createDataFrame([("1", 1)], "label string, n int").join(back, "label").count()
spark.stop()
from pyspark import SparkContext
proc = SparkContext._gateway.proc if SparkContext._gateway is not None else None
if proc is not None:   # the JVM writes the archive as it exits: when this process's end closes its stdin
    proc.stdin.close()
    proc.wait(timeout=300)
"""


def build(*, quiet: bool = False) -> Path | None:
    """Write the archive if it is missing (a session in a fresh process, its classes dumped as its JVM exits)."""
    path = archive_path()
    if path is None:
        if not quiet:
            print("no Java found: no class archive", file=sys.stderr)
        return None
    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("spark-driver-*.jsa"):   # another Java, pyspark or connector: never used again
        old.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".spark-driver-", suffix=".jsa", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    if not quiet:
        print(f"writing the Spark driver's class archive (once, ~30 s): {path}", file=sys.stderr)
    done = subprocess.run([sys.executable, "-c", _WORKLOAD, f"-XX:ArchiveClassesAtExit={tmp} {QUIET}"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if not quiet:
            print(f"note: the class archive was not written (Spark sessions start without it): "
                  f"{(done.stderr or '').strip().splitlines()[-1:] or done.returncode}", file=sys.stderr)
        return None
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    try:
        got = build(quiet="--quiet" in sys.argv)
    except Exception as exc:  # a timeout, no Java: sessions start without it; setup goes on
        print(f"note: no class archive for the Spark driver ({str(exc).splitlines()[0][:200]})", file=sys.stderr)
        got = None
    if got is not None and "--quiet" not in sys.argv:
        print(got)

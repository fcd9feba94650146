"""Reading the vectors the job fits: list the files, check each file's Parquet footer against the contract,
read files of one physical schema together, and conform every row on the executors.

What a file and a row may hold is :mod:`contract.vectors`' one definition, the same the edge client applies
before it uploads: the footer's Arrow schema goes through :func:`contract.conform_schema` (on the driver,
footers only, read in parallel) and every row through :func:`contract.conform_table` (in ``mapInArrow``, on
the executors), which applies the lossless casts and gives each refused row its reason. A file the contract
refuses is reported with its path and reason (or stops the job, without ``--skip-bad-files``); a refused
row becomes a reject. Spark reads each group of files with the exact types its Parquet columns have
(``spark.read.schema``), so an int64 ``width`` or a ``timestamp[ns]`` is read, then cast, never a crash.
"""
from __future__ import annotations

import importlib
import json
import logging
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from contract.card import FEATURE_DIM
from contract.errors import ContractError, FruitsError, one_line
from contract.layout import device_key_problem, device_of, in_device_area, is_anonymous
from contract.vectors import (META_MODEL_SHA256, META_PROJECTION_ID, PROJECTION_COLUMN, VECTOR_COLUMNS,
                              conform_schema, conform_table, vector_schema)
from cloud_pca.storage import list_days, list_dirs, list_files
log = logging.getLogger(__name__)
FOOTER_TAIL = 64 * 1024          # one read of a file's last 64 KB holds the footer of a contract file
FOOTER_THREADS = 16              # footers read in parallel on the driver (S3 latency, not CPU, is the cost)


class InputError(FruitsError, ValueError):
    """Input the job refuses (no files, a bad file, mixed kinds of vectors); says what and where."""


@dataclass
class InputFile:
    path: str
    size: int
    reason: str | None = None      # why the contract refuses the file; None for a good file
    projected: bool = False
    read_ddl: str = ""             # the Spark schema its Parquet columns are read with
    nanos: bool = False            # vectorized_at is a timestamp[ns] (read as int64 nanoseconds)
    projection_id: str | None = None   # projected files: the projection named in the file's metadata
    version: str | None = None     # the listed version (ETag or modification time): see spark.file_version
    mtime: int = 0                 # when the store says it was written (ms since the epoch): no device can set it
    owner: str | None = None       # the device whose client=<id>/ folder holds it (device areas only)
    anonymous: bool = False        # that device is an anonymous Cognito identity (contract.layout.is_anonymous)
    device_area: bool = False      # listed under an area devices write: a bad file is set aside, never fatal
    rows: int | None = None        # rows, from the footer
    model: str | None = None       # the model fingerprint its writer put in its metadata, if any


@dataclass
class Inputs:
    """Every contract row of the good files with its ``file`` and ``reason`` (null for a good row)."""

    df: object
    files: list[InputFile]
    projected: bool = False
    dim: int = FEATURE_DIM
    bad: list[tuple[str, str]] = field(default_factory=list)

    @property
    def good(self) -> list[InputFile]:
        return [f for f in self.files if f.reason is None]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.good)


# ------------------------------------------------------------------------------------------- footers
def _read_range(spark, path: str, start: int, n: int) -> bytes:
    """``n`` bytes of a file from ``start``: ``file:`` and ``s3a://`` in Python (a local read, one ranged GET: no
    JVM round trips, and no JVM at all for a refresh that starts no Spark job), others through Hadoop's file
    system (EMR's s3://)."""
    from cloud_pca.storage import read_range

    data = read_range(spark, path, start, n)
    if data is not None:
        return data
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    stream = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).open(hpath)
    try:
        stream.seek(start)
        return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream, n))
    finally:
        stream.close()


def read_footer(spark, path: str, size: int):
    """The file's Parquet metadata (pyarrow ``FileMetaData``) from its tail, one read for a contract file;
    raises :class:`ContractError` with the reason a reader would give for an unreadable file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if size < 12:
        raise ContractError(f"not a readable Parquet file ({size} bytes)")
    tail = _read_range(spark, path, size - min(size, FOOTER_TAIL), min(size, FOOTER_TAIL))
    if tail[-4:] != b"PAR1":
        raise ContractError("not a readable Parquet file (no Parquet magic bytes at its end: corrupt or not Parquet)")
    meta_len = struct.unpack("<I", tail[-8:-4])[0]
    if meta_len + 12 > size:
        raise ContractError(f"not a readable Parquet file (footer length {meta_len} is beyond the file)")
    if meta_len + 8 > len(tail):
        tail = _read_range(spark, path, size - meta_len - 8, meta_len + 8)
    try:
        return pq.ParquetFile(pa.BufferReader(b"PAR1" + tail[-(meta_len + 8):])).metadata
    except Exception as exc:  # pyarrow: ArrowInvalid / OSError for a corrupt footer
        raise ContractError(f"not a readable Parquet file ({one_line(exc)[:200]})") from None


# --------------------------------------------------------------------- Parquet column -> Spark type
def _spark_type(column) -> tuple[str, bool]:
    """The Spark SQL type Spark's Parquet reader gives a leaf column (its own inference rules), and whether
    it is a nanosecond timestamp (read as bigint with ``spark.sql.legacy.parquet.nanosAsLong``)."""
    physical = column.physical_type
    logical = json.loads(column.logical_type.to_json())
    kind = logical.get("Type", "None")
    if physical == "BYTE_ARRAY":
        return ("string" if kind in ("String", "Enum", "Json") else "binary"), False
    if physical == "FLOAT":
        return "float", False
    if physical == "DOUBLE":
        return "double", False
    if physical == "BOOLEAN":
        return "boolean", False
    if physical == "INT96":
        return "timestamp", False
    if physical == "INT32":
        if kind == "Int":
            bits, signed = logical["bitWidth"], logical["isSigned"]
            return {(8, True): "tinyint", (16, True): "smallint", (32, True): "int", (8, False): "smallint",
                    (16, False): "int", (32, False): "bigint"}[(bits, signed)], False
        return ("date" if kind == "Date" else "int"), False
    if physical == "INT64":
        if kind == "Timestamp":
            if logical.get("timeUnit") == "nanoseconds":
                return "bigint", True
            return ("timestamp" if logical.get("isAdjustedToUTC") else "timestamp_ntz"), False
        if kind == "Int" and not logical.get("isSigned", True):
            return "decimal(20,0)", False
        return "bigint", False
    raise ContractError(f"Parquet type {physical} ({kind}) is not one Spark reads here")


def read_schema_ddl(metadata) -> tuple[str, bool]:
    """The ``spark.read.schema`` DDL for the contract's columns of a file, from its Parquet schema."""
    schema = metadata.schema
    leaves = {schema.column(i).path: schema.column(i) for i in range(len(schema))}
    wanted = list(VECTOR_COLUMNS) + ([PROJECTION_COLUMN] if PROJECTION_COLUMN in
                                     {p.split(".")[0] for p in leaves} else [])
    parts, nanos = [], False
    for name in wanted:
        if name in leaves:
            typ, is_nanos = _spark_type(leaves[name])
        else:  # a list: features.list.element (or .item, .array: writers differ)
            nested = [p for p in leaves if p.split(".")[0] == name]
            if len(nested) != 1:
                raise ContractError(f"column {name} is not a simple list")
            typ, is_nanos = f"array<{_spark_type(leaves[nested[0]])[0]}>", False
        nanos = nanos or (name == "vectorized_at" and is_nanos)
        parts.append(f"`{name}` {typ}")
    return ", ".join(parts), nanos


def java_reason(exc: Exception) -> str:
    """The Java exception's class and message from a Py4JJavaError (else the first line of the error)."""
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            return f"{java.getClass().getSimpleName()}: {str(java.getMessage()).splitlines()[0][:200]}"
        except Exception:  # the JVM is gone
            pass
    return one_line(exc)[:200]


def check_files(spark, files: list[tuple], threads: int = FOOTER_THREADS) -> list[InputFile]:
    """Each file's footer against the contract, ``threads`` at a time (a round trip each on S3). ``files``:
    (path, size, version, mtime, the input it was listed under) as :func:`list_inputs` gives them. A file of a device
    area knows its device (the folder it lies in, never what its rows say) and whether that device is anonymous; a
    key of a device area that is not of the layout's shape is a bad file, never opened."""
    # What the threads import is imported here first: threads importing modules for the first time at the same
    # moment can deadlock on Python's per-module import locks (arrow_schema, device_key_problem, read_footer).
    for name in ("base64", "urllib.parse", "pyarrow.parquet"):
        importlib.import_module(name)

    def one(item) -> InputFile:
        path, size, version, mtime, under = item
        owner = device_of(path, under)
        f = InputFile(path, size, version=version, mtime=mtime, owner=owner, anonymous=is_anonymous(owner),
                      device_area=in_device_area(under))
        # Defence in depth: a device area holds only keys of the layout's shape (the policies say so, but a
        # listed key is turned into a Hadoop path, which collapses '//' and resolves '..').
        problem = device_key_problem(path, under)
        if problem:
            f.reason = problem
            return f
        try:
            meta = read_footer(spark, path, size)
            f.rows = int(meta.num_rows)
            schema = arrow_schema(meta)
            conform_schema(schema, origin="file")
            f.read_ddl, f.nanos = read_schema_ddl(meta)
            f.projected = PROJECTION_COLUMN in schema.names
            f.projection_id = (meta.metadata or {}).get(META_PROJECTION_ID, b"").decode() or None
            f.model = (meta.metadata or {}).get(META_MODEL_SHA256, b"").decode() or None
        except ContractError as exc:
            f.reason = str(exc).replace("file: ", "", 1)
        except Exception as exc:  # Py4JJavaError: listed but not there (FileNotFound), access denied, ...
            f.reason = f"cannot be opened ({java_reason(exc)})"
        return f

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, files))


def arrow_schema(meta):
    """The Arrow schema a reader of the file sees: the one its writer stored (large, fixed-size and dictionary
    types), else the one Parquet's own types give."""
    import base64

    import pyarrow as pa

    raw = (meta.metadata or {}).get(b"ARROW:schema")
    if raw:
        try:
            return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(raw)))
        except Exception:  # a foreign or damaged ARROW:schema: Parquet's own types are enough
            log.debug("unreadable ARROW:schema in a footer; using the Parquet schema")
    return meta.schema.to_arrow_schema()


# ----------------------------------------------------------------------------------- reading the rows
def output_schema(projected: bool):
    """The Spark schema of the conformed rows: the contract's (derived from its Arrow schema) + file, reason."""
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import StringType, StructField

    schema = from_arrow_schema(vector_schema(projected))
    return schema.add(StructField("file", StringType())).add(StructField("reason", StringType()))


def _conformer(dim: int | None, nanos: bool, owners: dict | None = None):
    """A ``mapInArrow`` function: Spark-read batches -> the contract's types + per-row reasons. ``owners``: the
    device folder of each file (by its unquoted path), whose rows must name that device."""

    def conform(batches):
        import pyarrow as pa

        for batch in batches:
            table = pa.Table.from_batches([batch])
            files = table.column("file")
            who = [owners.get(_plain(f)) for f in files.to_pylist()] if owners else None
            out, reasons = conform_table(table.drop(["file"]), origin="row", dim=dim, nanos_as_int=nanos, owner=who)
            out = out.append_column("file", files).append_column("reason", reasons)
            yield from out.to_batches()

    return conform


def read_rows(spark, files: list[InputFile], *, projected: bool, dim: int):
    """One DataFrame of every row of ``files`` (all good), conformed on the executors."""
    from pyspark.sql import functions as F

    groups: dict[tuple[str, bool], list[str]] = {}
    for f in files:
        groups.setdefault((f.read_ddl, f.nanos), []).append(f.path)
    if any(nanos for _, nanos in groups):
        spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    schema = output_schema(projected)
    owners = {_plain(f.path): f.owner for f in files if f.owner}
    frames = []
    for (ddl, nanos), paths in sorted(groups.items()):
        raw = spark.read.schema(ddl).parquet(*paths).withColumn("file", F.input_file_name())
        frames.append(raw.mapInArrow(_conformer(dim, nanos, owners), schema))
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other)
    return df


def _plain(path: str) -> str:
    """A file's bucket and path, whichever way it is spelled (``file:/x`` or ``file:///x``; a Cognito id's ':'
    percent-encoded by ``input_file_name()`` or not)."""
    from urllib.parse import unquote, urlparse

    u = urlparse(path)
    return u.netloc + unquote(u.path)


def projected_dim(spark, files: list[InputFile]) -> int:
    """k of projected vectors: the length of the first non-empty features row."""
    from pyspark.sql import functions as F

    first = spark.read.schema(files[0].read_ddl).parquet(*[f.path for f in files]) \
        .select(F.size("features").alias("n")).filter("n > 0").first()
    return int(first["n"]) if first else FEATURE_DIM


def list_inputs(spark, inputs: list[str], days: list[str] | None = None) -> list[tuple[str, int, str, int, str]]:
    """(path, size, version, mtime, the input it was listed under) of every Parquet file under the inputs
    (recursive), as the driver's file system lists them. ``days``: of an input above the ``day=`` folders of a
    device area, only the files filed under those days (:func:`day_folders`); any other input whole."""
    listed = []
    for uri in inputs:
        try:
            folders = day_folders(spark, uri) if days else None
            if folders is None:
                listed.extend((*item, uri) for item in list_files(spark, uri))
            for folder in folders or []:
                listed.extend((*item, uri) for item in list_days(spark, folder, days))
        except Exception as exc:  # Py4JJavaError: no such bucket, access denied
            raise InputError(f"cannot list {uri}: {one_line(exc)[:300]}") from None
    return listed


def day_folders(spark, uri: str) -> list[str] | None:
    """The folders holding the ``day=`` folders under ``uri`` when it lies above them in an area devices file by day
    (``.../vectors/``, ``.../vectors/model=<sha>/``, ``.../projected/...``): the folders between are listed (one
    request per model or projection). None for any other input (listed whole)."""
    from contract.layout import day_segment, device_area_at

    found = device_area_at(uri)
    if found is None:
        return None
    area, parts, at = found
    index = day_segment(area.name)
    rel = parts[at:]
    if index is None or len(rel) > index:
        return None
    shape = area.globs[0].split("/")
    folders = [uri.rstrip("/")]
    for i in range(len(rel), index):
        start = shape[i].split("{", 1)[0]             # "model=", "projection="
        folders = [f"{f}/{name}" for f in folders for name in list_dirs(spark, f) if name.startswith(start)]
    return [f"{f}/" for f in folders]


def refuse_bad(bad: list[InputFile], *, skip_bad_files: bool) -> None:
    """A bad file of an operator's area stops the run (unless ``skip_bad_files``), with its reason. One of a device
    area never does: anyone with the app can write there, and one device's bad object must stop only that device;
    it is set aside and listed (summary ``quarantined``, the report)."""
    strict = [f for f in bad if not f.device_area]
    if strict and not skip_bad_files:
        more = f" (and {len(strict) - 1} more)" if len(strict) > 1 else ""
        raise InputError(f"{strict[0].path}: {strict[0].reason}{more}; fix or remove it, or pass --skip-bad-files")


def good_files(spark, files: list[InputFile], *, skip_bad_files: bool, where: str) -> tuple[Inputs, list]:
    """The good ``files`` (footers already checked), without reading rows: (Inputs for the summary, with no
    rows yet; the good files). Refuses (with the first file and its reason) a bad file unless
    ``skip_bad_files``, and projected vectors mixed with raw 1280-d ones."""
    refuse_bad([f for f in files if f.reason], skip_bad_files=skip_bad_files)
    bad = [(f.path, f.reason) for f in files if f.reason]
    good = [f for f in files if f.reason is None]
    if not good:
        raise InputError(f"none of the {len(files)} file(s) under {where} follows the contract; "
                         f"first: {bad[0][0]}: {bad[0][1]}")
    projected = [f for f in good if f.projected]
    if projected and len(projected) < len(good):
        raw = next(f for f in good if not f.projected)
        raise InputError(f"refusing to mix projected vectors ({projected[0].path}, ...) with raw "
                         f"{FEATURE_DIM}-d vectors ({raw.path}, ...) in one fit: give one kind of --input")
    ids = sorted({f.projection_id for f in projected if f.projection_id})
    if len(ids) > 1:
        raise InputError(f"refusing to mix vectors of different projections ({', '.join(ids)}) in one fit")
    dim = projected_dim(spark, good) if projected else FEATURE_DIM
    log.info("%d file(s), %d good, %d refused", len(files), len(good), len(bad))
    return Inputs(None, files, bool(projected), dim, bad), good


def open_files(spark, files: list[InputFile], *, skip_bad_files: bool, where: str) -> Inputs:
    """The rows of ``files``: :func:`good_files`, then read."""
    checked, good = good_files(spark, files, skip_bad_files=skip_bad_files, where=where)
    checked.df = read_rows(spark, good, projected=checked.projected, dim=checked.dim)
    return checked


def read_inputs(spark, inputs: list[str], *, skip_bad_files: bool) -> Inputs:
    """Every contract row under ``inputs`` (see :func:`open_files`); refuses an input without files."""
    listed = list_inputs(spark, inputs)
    if not listed:
        raise InputError(f"no Parquet files under {', '.join(inputs)} (empty input prefix?)")
    return open_files(spark, check_files(spark, listed), skip_bad_files=skip_bad_files, where=", ".join(inputs))

"""Keep the PCA fresh at the cost of the new data only.

The Gram solver's statistics (n, sum x, sum x x^T, column min and max: :class:`cloud_pca.pca.GramSums`) add
up, and uploaded objects are immutable and named by their content. So a refresh reads only the objects not
counted yet, leaves out image ids already counted (scanning only the counted ids, one column), adds the
new statistics to the kept ones and solves the 1280x1280 eigenproblem again.

State, one per model fingerprint, under ``OUTPUT/state/model=<sha256>/`` (``pca/state/...`` in the layout)::

    gen=<g>/moments.npz    the total statistics after generation g
    gen=<g>/objects.json   the objects seen that the next daily listing can meet: filed under the last LATE_DAYS
                           days or later, or in an input not filed by day (path, size, version: ETag or
                           modification time, how Spark reads it; its device, whether anonymous, when the store
                           received it, its rows; and for an object that added nothing, why: quarantined or held
                           back)
    gen=<g>/objects-old.json  the objects that left objects.json in generation g (an archive, written once; read by
                           a run that lists everything or re-projects every row; ARCHIVE_MERGE of them merged)
    gen=<g>/history.json   one record per refresh so far: rows added and in total, the first components'
                           explained variance, the largest principal angle of the top-10 subspace since the last
                           refresh (the report draws them)
    gen=<g>/components.npy the top-10 components of generation g's model (the next refresh's angle)
    gen=<g>/ids/           Parquet: the rows generation g added: image id, SimHash signature, whether anonymous,
                           when the store received their object, its path and the row (what the trust model needs
                           to rank a later copy of the same photo against them, and to find near-copies)
    current.json           the generation in force, the ids folders in force (merged by size tiers, :func:`merge_plan`:
                           a refresh reads a number of them that grows with the log of the history) and their files'
                           sizes, the counted rows a later, better-ranked copy replaced, and the sha256 and size of
                           each file the generation wrote (moments, objects, history, components, archive) with its
                           row count; written last, so a run that fails leaves the previous state in force
    gen=<g>/sealed.json    written after current.json: the generation came into force (its number, and the sha256 of
                           the current.json that named it). A current.json naming an older generation than a sealed
                           one was rolled back or replaced, and is refused

Each generation has a name of its own (``g00007-3fa2c1``): a failed run's folder is never reused (it is
left behind, unreferenced; nothing is deleted, which the cluster's role may not do).

New objects are found by listing: the device areas by day (``day=`` folders, :func:`listing_days`), from the day
of the state's last listing minus LATE_DAYS to today plus AHEAD_DAYS, so that a daily refresh lists a few days of
uploads, not every object ever uploaded (the one part of a refresh that grew with its history). An object filed
under a day before that window (a device's clock days behind) waits for the next ``--full``, which lists
everything (so does a first run, or one after a gap of more than MAX_WINDOW_DAYS); one filed under a later day
waits for its day.

Objects are trusted by name only while they are what was counted: a run compares the counted objects it listed
with the listing (size, and ETag or modification time) and refuses, naming the object, when one is gone or was
rewritten (a lifecycle rule, ``featurize --overwrite``): its moments are still in the state, and only a
``--full`` run can take them out. Devices can neither rewrite nor delete (the bucket and IAM policies); counted
objects filed under days before the listing's window are checked by the next ``--full``. Every state file is checked when it is loaded: a damaged one is one error
naming the file, never a traceback; a file of another generation put in place of one of this generation's (its sha256
is not the one recorded), or a rolled-back ``current.json``, is one error too: never a model silently fitted on an
older total.
"""
from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from contract.errors import FruitsError
from contract.layout import LayoutError, check_day, check_sha256, day_of, days_between, shift_day
from cloud_pca.inputs import InputError, InputFile, check_files, list_inputs, refuse_bad
from cloud_pca.pca import GramSums
from cloud_pca.storage import list_dirs, read_bytes, write_bytes, write_rows
STATE = "state"
POINTER = "current.json"
MAX_PARTS = 24                   # ids folders in force at most (size tiers keep it near 3 x log4 of the history)
COUNTED_DDL = "image_id string, sig bigint, anonymous boolean, mtime bigint, path string, row int, key bigint"
KEY_HEX = 15                     # an image id's first 15 hex digits, as a long: what a refresh reads of each counted row
IDS_ROW_GROUP = 65536            # rows per row group of an ids file (~3 MB of them): what a hit makes a refresh read
IDS_THREADS = 8                  # ids files read at once by a small refresh
MERGE_FAN_IN = 4                 # ids folders of one size tier (within a factor of 4) merged into one once there are 4


def id_key(image_id: str) -> int | None:
    """The ``key`` column of an image id (its first KEY_HEX hex digits; None when they are not hex)."""
    try:
        return int(image_id[:KEY_HEX], 16) if len(image_id) >= KEY_HEX else None
    except (TypeError, ValueError):
        return None


def _counted_schema(*, key: bool):
    """COUNTED_DDL as a pyarrow schema (without the ``key`` column where the reader does not need it)."""
    import pyarrow as pa

    return pa.schema([("image_id", pa.string()), ("sig", pa.int64()), ("anonymous", pa.bool_()),
                      ("mtime", pa.int64()), ("path", pa.string()), ("row", pa.int32())]
                     + ([("key", pa.int64())] if key else []))


def _conform(t, schema):
    """A counted ids table in ``schema``: its columns cast, the ones an older part lacks as nulls."""
    import pyarrow as pa

    return pa.table({n: (t.column(n).cast(schema.field(n).type) if n in t.column_names
                         else pa.nulls(t.num_rows, schema.field(n).type)) for n in schema.names})


STATE_READS = {"objects": 0}      # state files this process read (pointer, moments, objects, ids files): the bench's


def _read(n: int = 1) -> None:
    STATE_READS["objects"] += n


class StateError(FruitsError, ValueError):
    """An incremental state that cannot be used (several models, a damaged file); says which and why."""


@dataclass
class State:
    uri: str                                   # OUTPUT/state/model=<sha256>
    model_sha256: str
    generation: str | None = None              # None: nothing counted yet
    number: int = 0
    sums: GramSums | None = None
    objects: list[dict] = field(default_factory=list)
    id_parts: list[str] = field(default_factory=list)
    dropped: list[list] = field(default_factory=list)   # [path, row] of counted rows replaced by a later copy
    id_sizes: dict = field(default_factory=dict)         # ids folder (relative) -> {file name: size} at commit
    listed_day: str | None = None                         # the day its last run listed the inputs (UTC)
    # ``objects`` holds the objects filed under ``recent_from`` or later (and those of inputs not filed by day): what
    # a daily refresh's listing can meet. The older ones are in the archive files (loaded when a run needs them all).
    recent_from: str | None = None
    archive: list[str] = field(default_factory=list)     # archive files (relative), oldest first
    archived: list[dict] | None = None                   # their objects, once loaded (:meth:`load_archive`)
    total: int = 0                                       # objects counted in all
    files: dict = field(default_factory=dict)            # state file (relative) -> {sha256, bytes}: current.json's record
    sig_key: str | None = None                           # the signatures' planes' secret (None: a state from before)

    @property
    def counted_paths(self) -> set[str]:
        """The objects counted that a listing may meet: the recent ones (:meth:`covers`), the archived once loaded."""
        return {o["path"] for o in (self.archived or []) + self.objects}

    @property
    def all_objects(self) -> list[dict]:
        """Every object counted (the archive loaded first where there is one: :meth:`load_archive`)."""
        if self.archive and self.archived is None:
            raise RuntimeError("the state's archive is not loaded")   # a bug, not a user error
        return (self.archived or []) + self.objects

    def load_archive(self, spark) -> None:
        """Read the archive files: the objects filed under days before ``recent_from``."""
        if self.archived is not None:
            return
        out = []
        for rel in self.archive:
            where = f"{self.uri}/{rel}"
            got = _read_if_there(spark, where)
            if got is None:
                raise StateError(f"{where}: missing; the incremental state is damaged: rebuild it with --full")
            check_recorded(got, where, self.files.get(rel))
            out += _objects_list(got, where)
        self.archived = out

    def covers(self, days: list[str] | None, listed: list[tuple]) -> bool:
        """Whether ``objects`` holds every counted object the listing (of ``days``; None: everything) can meet: no
        listed path is filed under a day before ``recent_from`` (an input below the day folders, listed whole, can
        hold some)."""
        if not self.archive:
            return True
        if days is None or self.recent_from is None or days[0] < self.recent_from:
            return False
        return not any((day_of(item[0]) or self.recent_from) < self.recent_from for item in listed)

    @property
    def counted(self) -> "Counted":
        return Counted(self.model_sha256, list(self.id_parts), [tuple(d) for d in self.dropped], self.objects,
                       {f"{self.uri}/{p}": v for p, v in self.id_sizes.items()}, self.sig_key)


@dataclass
class Counted:
    """The rows a state counted, as the trust model needs them (:func:`cloud_pca.trust.decide`): read only where a new
    row may meet one (the same image id, or the same signature half among anonymous rows)."""

    model_sha256: str
    parts: list[str]
    dropped: list[tuple]
    objects: list[dict]
    files: dict = field(default_factory=dict)   # part URI -> {file name: size} recorded at commit
    sig_key: str | None = None                  # the key its rows' signatures were made with (None: the public seed)

    def part_files(self, spark) -> list[tuple[str, int]]:
        """(path, size) of the ids folders' files: as recorded at commit (no listing: a refresh checks each size as it
        opens the file, :func:`_open_counted`), or listed and their footers read for a folder from before the
        record."""
        out = []
        for part in self.parts:
            recorded = self.files.get(part)
            if recorded:
                out.extend((f"{part}/{name}", size) for name, size in sorted(recorded.items()))
            else:
                out.extend((f.path, f.size) for f in check_part(spark, part, None))
        return out

    def frame(self, spark):
        """Every counted row (a DataFrame of COUNTED_DDL; columns a part from before them lacks are null)."""
        from pyspark.sql import functions as F

        _read(sum(max(1, len(self.files.get(p, ()))) for p in self.parts))   # files recorded at commit, else 1
        for part in self.parts:   # whole, before Spark reads them (a truncated file would fail deep in a task)
            check_part(spark, part, self.files.get(part))
        df = spark.read.schema(COUNTED_DDL).parquet(*self.parts)
        df = df.withColumn("key", F.coalesce(F.col("key"), F.when(   # parts from before the key column
            F.col("image_id").rlike(f"^[0-9a-fA-F]{{{KEY_HEX}}}"), F.conv(F.substring("image_id", 1, KEY_HEX), 16,
                                                                           10).cast("long"))))
        if self.dropped:
            gone = spark.createDataFrame([(p, int(r)) for p, r in self.dropped], "path string, row int")
            df = df.join(F.broadcast(gone), ["path", "row"], "left_anti")
        return df

    def table(self, spark):
        """Every counted row, read by the driver with pyarrow (small parts: no Spark job), as :meth:`frame` gives
        them: a pyarrow Table of COUNTED_DDL."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from cloud_pca.storage import storage_options

        schema = _counted_schema(key=True)
        options, tables = storage_options(spark), []
        for path, size in self.part_files(spark):
            _read()
            with _open_counted(options, path, size) as fh:
                t = pq.read_table(fh)
            if "key" not in t.column_names:   # a part from before the key column
                t = t.append_column("key", pa.array([id_key(i) for i in t.column("image_id").to_pylist()], pa.int64()))
            tables.append(_conform(t, schema))
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        if self.dropped and len(table):
            gone = set(self.dropped)
            keep = [(p, int(r)) not in gone for p, r in zip(table.column("path").to_pylist(),
                                                             table.column("row").to_pylist())]
            table = table.filter(pa.array(keep))
        return table.combine_chunks() if len(table) else table

    def rows_for(self, spark, ids: set, lo: list, hi: list, *, local_bytes: int = 256 * 2**20):
        """The counted rows whose image id is in ``ids`` or, anonymous, whose signature halves are in ``lo``/``hi``:
        a pyarrow Table (image_id, sig, anonymous, mtime, path, row, legacy). Read by the driver with pyarrow when the
        parts are small (the daily refresh), else filtered in Spark."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from cloud_pca.trust import bands

        files = self.part_files(spark)
        _read(len(files))
        schema = _counted_schema(key=False)
        if sum(size for _, size in files) <= local_bytes:
            from cloud_pca.storage import storage_options
            import pyarrow.parquet as pq

            keys = pa.array(sorted({k for k in map(id_key, ids) if k is not None}), pa.int64())
            lo_set, hi_set = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
            import pyarrow.fs  # noqa: F401  (imported here, not first in the threads below)

            options = storage_options(spark)
            near = bool(len(lo_set) or len(hi_set))

            def wanted(item):
                path, size = item
                with _open_counted(options, path, size) as fh:
                    pf = pq.ParquetFile(fh, pre_buffer=True)   # (the key column's chunks fetched at once)
                    if "key" not in pf.schema_arrow.names:
                        return _conform(pf.read(), schema)
                    # Only the key column (8 of ~130 bytes a row), and the signature and tier columns where the batch
                    # has anonymous rows; whole rows only of the row groups where one may meet the batch (a counted
                    # id again, a near-copy's band).
                    few = pf.read(columns=["key", "sig", "anonymous"] if near else ["key"])
                    hit = pc.fill_null(pc.is_in(few.column("key"), value_set=keys), True).to_numpy(zero_copy_only=False)
                    if near:
                        a, b = bands(pc.fill_null(few.column("sig"), 0).to_numpy(zero_copy_only=False))
                        anon = pc.fill_null(few.column("anonymous"), False).to_numpy(zero_copy_only=False)
                        hit = hit | (anon & (np.isin(a, lo_set) | np.isin(b, hi_set)))
                    if not hit.any():
                        return None
                    # Only the row groups holding a hit (the file is sorted by key: a key's rows are together).
                    ends = np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
                    groups = np.unique(np.searchsorted(ends, np.flatnonzero(hit), side="right"))
                    return _conform(pf.read_row_groups(groups.tolist()), schema)

            # The files a few at a time: each is a few round trips (open, footer, key column) that S3 answers at once.
            with ThreadPoolExecutor(max_workers=max(1, min(IDS_THREADS, len(files)))) as pool:
                tables = [t for t in pool.map(wanted, files) if t is not None]
            table = pa.concat_tables(tables) if tables else schema.empty_table()
        else:
            from pyspark.sql import functions as F

            lo_band, hi_band = F.col("sig").bitwiseAND(F.lit(0xFFFFFFFF)), F.shiftrightunsigned("sig", 32)
            wanted = F.col("image_id").isin(list(ids)) | (F.col("anonymous") & (lo_band.isin(lo) | hi_band.isin(hi)))
            table = pa.Table.from_pylist([r.asDict() for r in self.frame(spark).filter(wanted).collect()], schema=schema)
        keep = pc.is_in(table.column("image_id"), value_set=pa.array(sorted(ids), pa.string()))
        sig = table.column("sig").to_numpy(zero_copy_only=False)
        legacy = np.asarray(pc.is_null(table.column("sig")).to_numpy(zero_copy_only=False), dtype=bool)
        anonymous = np.asarray(pc.fill_null(table.column("anonymous"), False).to_numpy(zero_copy_only=False), dtype=bool)
        if len(table):
            a, b = bands(np.nan_to_num(sig.astype(np.float64)).astype(np.int64) if legacy.any() else sig)
            near = anonymous & (np.isin(a, np.asarray(lo, np.int64)) | np.isin(b, np.asarray(hi, np.int64)))
            keep = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool) | (near & ~legacy)
            if self.dropped:
                gone = set(self.dropped)
                keep &= np.array([(p, int(r)) not in gone for p, r in zip(table.column("path").to_pylist(),
                                                                           table.column("row").to_pylist())])
            table = table.filter(pa.array(keep))
        table = table.append_column("legacy", pc.is_null(table.column("sig")))
        return table.set_column(table.schema.get_field_index("sig"), "sig", pc.fill_null(table.column("sig"), 0)) \
            .set_column(table.schema.get_field_index("anonymous"), "anonymous",
                        pc.fill_null(table.column("anonymous"), False)) \
            .set_column(table.schema.get_field_index("mtime"), "mtime", pc.fill_null(table.column("mtime"), 0))


@dataclass
class Batch:
    """What an incremental run reads: the state and the objects not counted yet."""

    state: State
    new: list[InputFile]
    listed: int
    list_s: float = 0.0          # seconds the listing of the inputs took (it grows with the objects under them)
    days: list[str] | None = None    # the day folders listed (None: every object)

    @property
    def good(self) -> list[InputFile]:
        return [f for f in self.new if f.reason is None]

    @property
    def bytes_read(self) -> int:
        return sum(f.size for f in self.good)


def state_root(output: str) -> str:
    return f"{output.rstrip('/')}/{STATE}"


SET_ASIDE = "set-aside.json"


def set_aside_uri(output: str) -> str:
    """The identities set aside for their influence (:mod:`cloud_pca.influence`), for every model of the output:
    ``OUTPUT/state/set-aside.json``. The job adds to it; the operator restores one (``fruits-cloud contributions
    --restore``)."""
    return f"{state_root(output)}/{SET_ASIDE}"


def read_set_aside(spark, output: str) -> dict[str, dict]:
    """{device: the record of when and why it was set aside}; {} when none ever was. A damaged file is one error."""
    return read_registry(spark, output, SET_ASIDE)


def read_registry(spark, output: str, name: str) -> dict[str, dict]:
    """An operator's registry in ``OUTPUT/state/`` (:data:`SET_ASIDE`: identities set aside; ``accepted-labels.json``:
    labels accepted): its entries, {} when there is none; a damaged file is one error naming it."""
    uri = f"{state_root(output)}/{name}"
    try:
        data = read_bytes(spark, uri)
    except FileNotFoundError:
        return {}
    try:
        got = json.loads(data)
        if not isinstance(got, dict) or not isinstance(got.get("entries"), dict):
            raise ValueError("no 'entries' object")
        return got["entries"]
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"{uri}: damaged ({exc}); restore it from the bucket's versions, or remove it (what it "
                         f"lists is then forgotten)") from None


def write_registry(spark, output: str, name: str, entries: dict[str, dict]) -> None:
    write_bytes(spark, f"{state_root(output)}/{name}", json.dumps({"entries": entries}, indent=1,
                                                                   sort_keys=True).encode())


def write_set_aside(spark, output: str, devices: dict[str, dict]) -> None:
    write_registry(spark, output, SET_ASIDE, devices)


def record_set_aside(spark, output: str, found: list[dict], *, run_id: str) -> None:
    """Add the identities a run set aside (``influence.set_aside`` records) to the registry."""
    if not found:
        return
    devices = read_set_aside(spark, output)
    for r in found:
        devices.setdefault(r["device"], {"run": run_id, "rows": r["rows"], "component": r["component"],
                                         "share_of_component": r["share_of_component"],
                                         "angle_without_deg": r["angle_without_deg"]})
    write_set_aside(spark, output, devices)


def load_state(spark, output: str, model_sha256: str | None) -> State | None:
    """The state of ``model_sha256`` (or of the only model that has one); None when there is none yet."""
    root = state_root(output)
    if model_sha256 is None:
        models = [d[len("model="):] for d in list_dirs(spark, root) if d.startswith("model=")]
        if not models:
            return None
        if len(models) > 1:
            raise StateError(f"{root} holds the state of {len(models)} models ({', '.join(m[:12] + '...' for m in models)}): "
                             f"select one with --model-sha256")
        model_sha256 = models[0]
    uri = f"{root}/model={check_sha256(model_sha256)}"

    def damaged(where: str, what: str) -> StateError:
        return StateError(f"{where}: {what}; the incremental state is damaged: rebuild it with --full")

    def file(rel: str) -> bytes:
        got = _read_if_there(spark, f"{uri}/{rel}")   # one request (an existence check first was a second)
        if got is None:
            raise damaged(f"{uri}/{rel}", "missing")
        return got

    first = _read_if_there(spark, f"{uri}/{POINTER}")
    if first is None:
        return State(uri, model_sha256)
    try:
        pointer = json.loads(first)
    except ValueError as exc:
        raise damaged(f"{uri}/{POINTER}", f"not JSON ({exc})") from None
    gen, number, ids, dropped = (pointer.get("generation"), pointer.get("number"), pointer.get("ids", []),
                                 pointer.get("dropped", [])) if isinstance(pointer, dict) else (None, None, None, None)
    if not isinstance(gen, str) or not isinstance(number, int) or not isinstance(ids, list) \
            or not all(isinstance(p, str) for p in ids) or not isinstance(dropped, list) \
            or not all(isinstance(d, list) and len(d) == 2 for d in dropped):
        raise damaged(f"{uri}/{POINTER}", "needs a generation (text), a number, a list of ids folders and of dropped "
                                          "rows")
    recorded = pointer.get("files") if isinstance(pointer.get("files"), dict) else {}
    check_not_rolled_back(spark, uri, number, gen)

    def checked(rel: str) -> bytes:
        data = file(rel)
        check_recorded(data, f"{uri}/{rel}", recorded.get(rel))
        return data

    try:
        sums = GramSums.from_bytes(checked(f"gen={gen}/moments.npz"))
    except StateError:
        raise
    except Exception as exc:  # not an .npz, wrong arrays
        raise damaged(f"{uri}/gen={gen}/moments.npz", f"unreadable ({str(exc).strip().splitlines()[0][:200]})") from None
    if isinstance(pointer.get("rows"), int) and sums.n != pointer["rows"]:
        raise damaged(f"{uri}/gen={gen}/moments.npz", f"holds {sums.n} rows, current.json says {pointer['rows']}")
    objects = _objects_list(checked(f"gen={gen}/objects.json"), f"{uri}/gen={gen}/objects.json")
    archive, recent_from = pointer.get("archive", []), pointer.get("recent_from")
    if not isinstance(archive, list) or not all(isinstance(p, str) for p in archive) \
            or (archive and not isinstance(recent_from, str)):
        raise damaged(f"{uri}/{POINTER}", "its archive must be a list of files, with the day the recent objects start")
    sizes = pointer.get("id_sizes") if isinstance(pointer.get("id_sizes"), dict) else {}
    try:
        listed_day = check_day(pointer["listed_day"]) if "listed_day" in pointer else None
    except LayoutError:
        listed_day = None            # a damaged day: this run lists everything (as for a state from before the days)
    total = pointer.get("objects") if isinstance(pointer.get("objects"), int) else len(objects)
    # The ids folders are checked as they are read (Counted.part_files, check_part): no listing here.
    return State(uri, model_sha256, gen, number, sums, objects, [f"{uri}/{p}" for p in ids], dropped, sizes,
                 listed_day, recent_from, archive, None, total, recorded,
                 pointer.get("sig_key") if isinstance(pointer.get("sig_key"), str) else None)


def file_record(data: bytes, **extra) -> dict:
    """What ``current.json`` records of a file its generation wrote: sha256 and size (and a row count where given)."""
    import hashlib

    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), **extra}


def check_recorded(data: bytes, where: str, record: dict | None) -> None:
    """Refuse a state file whose bytes are not the ones its generation recorded (a file of another generation, or
    rewritten); a state from before the records (no record) is taken as it is."""
    import hashlib

    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return
    if len(data) != record.get("bytes") or hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise StateError(f"{where}: not the file its generation wrote (sha256 {hashlib.sha256(data).hexdigest()[:12]}…, "
                         f"{len(data)} bytes; current.json recorded {record['sha256'][:12]}…, {record.get('bytes')} "
                         f"bytes): a file of another generation or rewritten. Put the right file back, or rebuild the "
                         f"state with --full")


def highest_number(spark, uri: str) -> int:
    """The highest generation number under the state ``uri`` (0 when there is none)."""
    numbers = [0]
    for d in list_dirs(spark, uri):
        try:
            numbers.append(int(d[len("gen=g"):len("gen=g") + 5]) if d.startswith("gen=g") else 0)
        except ValueError:
            continue
    return max(numbers)


def check_not_rolled_back(spark, uri: str, number: int, generation: str) -> None:
    """Refuse a ``current.json`` that names an older generation than one sealed after it (``gen=<g>/sealed.json``): a
    rolled-back or replaced pointer. One listing of the state's folder, and a read of each later generation's seal
    (a failed run's folder has none)."""
    later = []
    for d in list_dirs(spark, uri):
        if not d.startswith("gen=g") or d == f"gen={generation}":
            continue
        try:
            n = int(d[len("gen=g"):len("gen=g") + 5])
        except ValueError:
            continue
        if n > number:
            later.append((n, d))
    for n, d in sorted(later, reverse=True):
        seal = _read_if_there(spark, f"{uri}/{d}/sealed.json")
        if seal is not None:
            raise StateError(f"{uri}/{POINTER}: names generation {generation} (number {number}), but {d} (number {n}) "
                             f"came into force after it ({uri}/{d}/sealed.json): current.json was rolled back or "
                             f"replaced. Put back the current.json that named {d[len('gen='):]} (its sha256 is in the "
                             f"seal), or rebuild the state with --full")


def _objects_list(data: bytes, where: str) -> list[dict]:
    """A state's list of objects (``objects.json``, an archive file), checked."""
    def damaged(what: str) -> StateError:
        return StateError(f"{where}: {what}; the incremental state is damaged: rebuild it with --full")

    try:
        objects = json.loads(data)
    except ValueError as exc:
        raise damaged(f"not JSON ({exc})") from None
    if not isinstance(objects, list) or not all(isinstance(o, dict) and isinstance(o.get("path"), str)
                                                and isinstance(o.get("size"), int) for o in objects):
        raise damaged("must be a list of objects with a path and a size")
    return objects


def _read_if_there(spark, uri: str) -> bytes | None:
    """A state file's bytes (counted in STATE_READS), or None when there is no such file."""
    try:
        data = read_bytes(spark, uri)
    except FileNotFoundError:
        return None
    _read()
    return data


def id_sizes(spark, uri: str, parts: list[str]) -> dict:
    """``{part: {file name: size}}`` of the ids folders ``parts`` (relative to the state ``uri``), as listed now."""
    from cloud_pca.storage import list_files

    return {p: {f.path.rsplit("/", 1)[-1]: f.size for f in list_files(spark, f"{uri}/{p}")} for p in parts}


def _damaged(path: str, what: str) -> StateError:
    return StateError(f"{path}: {what}; the incremental state is damaged: rebuild it with --full")


def _open_counted(options: dict, path: str, size: int):
    """An ids file opened for reading, refused (:class:`StateError`, naming it) when it is missing or is not the
    size recorded when it was written (truncated or rewritten): the check costs no request of its own."""
    from cloud_pca.storage import open_file

    try:
        fh = open_file(options, path)
    except (FileNotFoundError, OSError) as exc:
        raise _damaged(path, "missing" if isinstance(exc, FileNotFoundError) or "not found" in str(exc).lower()
                       or "no such" in str(exc).lower() else f"cannot be read ({str(exc).splitlines()[0][:200]})") \
            from None
    now = fh.size()
    if now != size:
        fh.close()
        raise _damaged(path, f"{now} bytes, {size} when it was written (truncated or rewritten)")
    return fh


def check_part(spark, part: str, recorded: dict | None):
    """An ids folder is there and whole: the files ``recorded`` at commit with the same sizes (listed), or, for a
    folder without a record (a state from before them), every file's footer read. Returns its files as listed."""
    from cloud_pca.inputs import java_reason, read_footer
    from cloud_pca.storage import list_files

    try:
        files = list_files(spark, part)
    except Exception as exc:
        raise StateError(f"{part}: cannot be listed ({java_reason(exc)}); rebuild the state with --full") from None
    if recorded:
        now = {f.path.rsplit("/", 1)[-1]: f.size for f in files}
        for name, size in recorded.items():
            if now.get(name) != size:
                raise _damaged(f"{part}/{name}", "missing" if name not in now else
                               f"{now[name]} bytes, {size} when it was written (truncated or rewritten)")
        return files
    if not files:
        raise _damaged(part, "missing (the image ids a generation counted)")
    for path, size, *_ in files:
        _read()
        try:
            read_footer(spark, path, size)
        except Exception as exc:
            raise _damaged(path, str(exc) if isinstance(exc, FruitsError) else java_reason(exc)) from None
    return files


def check_counted(state: State, listed: list[tuple], days: list[str] | None = None) -> None:
    """Refuse when an object the state counted is gone from the listing or is not the version counted. Objects
    that added nothing (quarantined, held back) may go: an operator cleans them up. ``days``: the listing held
    only the device areas' objects filed under these days; the others counted are not checked (devices can neither
    rewrite nor delete an object; an operator who does runs ``--full``)."""
    now = {item[0]: item for item in listed}
    gone, changed = [], []
    window = None if days is None else set(days)
    for o in (state.archived or []) + state.objects:
        if o.get("reason"):
            continue
        if window is not None and o.get("device_area") and day_of(o["path"]) not in window:
            continue
        item = now.get(o["path"])
        if item is None:
            gone.append(o["path"])
        elif item[1] != o["size"] or (o.get("version") and len(item) > 2 and item[2] != o["version"]):
            changed.append(o["path"])
    if gone or changed:
        what = []
        if gone:
            what.append(f"{len(gone)} counted object(s) are gone (first: {gone[0]})")
        if changed:
            what.append(f"{len(changed)} counted object(s) were rewritten since they were counted (first: {changed[0]})")
        raise StateError("; ".join(what) + f". The state {state.uri} ({state.generation}) still holds their moments: "
                         f"rebuild it from what is there now with --full (or put the objects back)")


LATE_DAYS = 2          # a refresh lists the days from its last listing's day minus these (a clock behind, midnight)
AHEAD_DAYS = 1         # to today plus these (a clock ahead; an object filed later waits for its day)
MAX_WINDOW_DAYS = 31   # more days than this since the last listing: every object is listed
ARCHIVE_MERGE = 32     # archive files of single refreshes merged into one when there are this many


def listing_days(today: str, listed_day: str | None) -> list[str] | None:
    """The ``day=`` folders a refresh lists: from the last listing's day (``listed_day``, else today) minus
    LATE_DAYS to today plus AHEAD_DAYS; None (list everything) for a first run or a long gap.

    >>> listing_days("2026-12-02", "2026-12-01")
    ['2026-11-29', '2026-11-30', '2026-12-01', '2026-12-02', '2026-12-03']
    >>> listing_days("2026-12-02", "2026-09-01") is None
    True
    """
    first = shift_day(min(listed_day or today, today), -LATE_DAYS)
    days = days_between(first, shift_day(today, AHEAD_DAYS))
    return days if len(days) <= MAX_WINDOW_DAYS + LATE_DAYS + AHEAD_DAYS else None


def timed_listing(spark, inputs: list[str], days: list[str] | None = None) -> tuple[list[tuple], float]:
    """:func:`list_inputs` (of ``days`` only, where the inputs file by day) and the seconds it took."""
    import time

    t = time.perf_counter()
    listed = list_inputs(spark, inputs, days)
    return listed, time.perf_counter() - t


def plan_batch(spark, inputs: list[str], state: State | None, *, skip_bad_files: bool, today: str,
               listing: tuple[list[tuple], float, list[str]] | None = None
               ) -> tuple[list[InputFile], int, float, list[str] | None]:
    """The objects under ``inputs`` not counted yet, their footers checked (the counted ones are not opened); the
    number of objects listed, the seconds the listing took and the days it covered (None: everything).

    Objects of the device areas are listed by the day they are filed under (:func:`listing_days`): the days since
    the state's last listing, not every object ever uploaded. ``listing``: (listed, seconds, days) already listed
    (the job lists the last days while it reads the state); the days missing are listed here."""
    days = listing_days(today, state.listed_day) if state is not None and state.listed_day else None
    if listing is not None and days is not None and set(listing[2]) <= set(days):
        listed, list_s = listing[0], listing[1]
        missing = [d for d in days if d not in listing[2]]
        if missing:
            more, more_s = timed_listing(spark, inputs, missing)
            listed, list_s = listed + more, list_s + more_s
    else:
        listed, list_s = timed_listing(spark, inputs, days)
    if state is not None and not state.covers(days, listed):
        state.load_archive(spark)       # a listing that may meet archived objects needs them all
    if state is not None and (state.objects or state.archived):
        check_counted(state, listed, days)
    counted = state.counted_paths if state else set()
    new = [item for item in listed if item[0] not in counted]
    files = check_files(spark, new) if new else []
    try:
        refuse_bad([f for f in files if f.reason], skip_bad_files=skip_bad_files)
    except InputError as exc:
        raise StateError(str(exc)) from None
    return files, len(listed), list_s, days


def counted_files(spark, state: State) -> list[InputFile]:
    """The objects the state counted rows of, as InputFiles (their footers were checked when they were counted)."""
    state.load_archive(spark)
    return [InputFile(**{k: v for k, v in o.items() if k in InputFile.__dataclass_fields__})
            for o in state.all_objects if not o.get("reason")]


HISTORY_COMPONENTS = 10          # the top components whose movement each refresh records


def history(spark, state: State, model, *, rows_added: int, run_id: str) -> tuple[list[dict], np.ndarray]:
    """The refreshes so far and this one's record (when, rows added and in total, the first components' explained
    variance, and the largest principal angle between this model's top-10 subspace and the previous refresh's:
    what tells an operator the model drifts), and this model's top components (kept for the next refresh)."""
    import io

    previous, before = [], None
    if state.generation:
        base = f"{state.uri}/gen={state.generation}"
        try:
            loaded = _read_if_there(spark, f"{base}/history.json")
            if loaded is not None:
                check_recorded(loaded, f"{base}/history.json", state.files.get(f"gen={state.generation}/history.json"))
                loaded = json.loads(loaded)
                previous = [h for h in loaded if isinstance(h, dict)] if isinstance(loaded, list) else []
            components = _read_if_there(spark, f"{base}/components.npy")
            if components is not None:
                check_recorded(components, f"{base}/components.npy",
                               state.files.get(f"gen={state.generation}/components.npy"))
                before = np.load(io.BytesIO(components), allow_pickle=False)
        except ValueError:   # a damaged history is started afresh; it steers nothing
            previous, before = [], None
    top = np.asarray(model.components_[:HISTORY_COMPONENTS], np.float64)
    angle = None
    if before is not None and before.shape == top.shape:
        from cloud_pca.pca import largest_angle

        angle = round(largest_angle(before, top), 4)
    ratio = np.asarray(model.explained_variance_ratio_, np.float64)
    record = {"run_id": run_id, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "rows_added": int(rows_added), "rows_total": int(model.n_samples_), "k": int(model.n_components_),
              "explained_first": [round(float(r), 6) for r in ratio[:5]],
              "cumulative_k": round(float(ratio.sum()), 6), "angle_top10_deg": angle}
    return previous + [record], top


def next_generation(state: State) -> str:
    """The name of the generation after ``state``'s: its number and a random part (never reused)."""
    return f"g{state.number + 1:05d}-{uuid.uuid4().hex[:6]}"


def counted_rows(spark, fitted, files: list):
    """The rows a generation adds, as the state keeps them (COUNTED_DDL), from the run's fitted thin rows (image_id,
    file index, row, sig, owner): a DataFrame or a pyarrow Table, as ``fitted`` is."""
    from contract.layout import is_anonymous

    meta = [(i, f.path, int(f.mtime), bool(f.anonymous)) for i, f in enumerate(files)]
    if hasattr(fitted, "num_rows"):
        import pyarrow as pa

        idx = fitted.column("file").to_numpy().astype(np.int64)
        owners = fitted.column("owner").to_pylist()
        return pa.table({
            "image_id": fitted.column("image_id"), "sig": fitted.column("sig"),
            "anonymous": pa.array([meta[i][3] or is_anonymous(o) for i, o in zip(idx, owners)], pa.bool_()),
            "mtime": pa.array([meta[i][2] for i in idx], pa.int64()),
            "path": pa.array([meta[i][1] for i in idx], pa.string()), "row": fitted.column("row"),
            "key": pa.array([id_key(i) for i in fitted.column("image_id").to_pylist()], pa.int64())})
    from pyspark.sql import functions as F

    from contract.layout import _COGNITO_ID_RE

    m = spark.createDataFrame(meta, "file int, path string, mtime long, file_anonymous boolean")
    return (fitted.join(F.broadcast(m), "file").select(
        "image_id", "sig", (F.col("file_anonymous") | F.coalesce(F.col("owner").rlike(_COGNITO_ID_RE.pattern),
                                                                 F.lit(False))).alias("anonymous"),
        "mtime", "path", F.col("row").cast("int").alias("row"),
        F.when(F.col("image_id").rlike(f"^[0-9a-fA-F]{{{KEY_HEX}}}"),
               F.conv(F.substring("image_id", 1, KEY_HEX), 16, 10).cast("long")).alias("key")))


def write_ids(spark, uri: str, rows) -> dict[str, int] | None:
    """Counted rows (:func:`counted_rows`) as an ids folder, sorted by ``key``; the driver's file in row groups of
    IDS_ROW_GROUP rows. A refresh reads the key column and, where a new row may meet a counted one, only the row
    groups holding it (:meth:`Counted.rows_for`): ids a device chose to share a prefix (key 0 for "000...") then
    cost one row group, not every file whole."""
    if hasattr(rows, "num_rows"):
        return write_rows(spark, uri, rows.sort_by("key"), row_group_rows=IDS_ROW_GROUP)
    return write_rows(spark, uri, rows.sortWithinPartitions("key"))


def merge_plan(parts: list[str], sizes: dict[str, dict]) -> list[str]:
    """The ids folders to merge into one now (oldest first), or none: size-tiered, so that a refresh reads a number of
    folders that grows with the log of the history and each counted row is rewritten a few times in a year, never
    all of them every few runs. Tier = log base MERGE_FAN_IN of a folder's bytes; the smallest tier holding
    MERGE_FAN_IN folders is merged; more than MAX_PARTS folders in all: the smallest MERGE_FAN_IN are merged."""
    import math

    def tier(p: str) -> int:
        return int(math.log(max(sum(sizes.get(p, {}).values()), 1), MERGE_FAN_IN))

    tiers: dict[int, list[str]] = {}
    for p in parts:
        tiers.setdefault(tier(p), []).append(p)
    for t in sorted(tiers):
        if len(tiers[t]) >= MERGE_FAN_IN:
            return tiers[t]
    if len(parts) > MAX_PARTS:
        smallest = set(sorted(parts, key=lambda p: sum(sizes.get(p, {}).values()))[:MERGE_FAN_IN])
        return [p for p in parts if p in smallest]
    return []


def commit(spark, state: State, gen: str, sums: GramSums, new_files: list[InputFile], fitted, *, run_id: str,
           scanned: list | None = None, dropped: list | None = None, held: list | None = None,
           refreshes: tuple[list[dict], np.ndarray] | None = None, listed_day: str | None = None,
           sig_key: str | None = None) -> dict:
    """Write generation ``gen`` (the rows it counted, moments and objects), then the pointer: the new total is in
    force. ``fitted``: the run's fitted thin rows (``scanned``: the scan's files their indices name);
    ``dropped``: counted rows a better-ranked copy replaced; ``held``: objects held back (recorded, never re-read).
    ids folders are merged by size tiers (:func:`merge_plan`; the dropped rows left out)."""
    number = int(gen[1:6])
    base = f"{state.uri}/gen={gen}"
    parts = [p[len(state.uri) + 1:] for p in state.id_parts]
    all_dropped = [list(d) for d in state.dropped] + [[p, int(r)] for p, r in (dropped or [])]
    sizes = {p: state.id_sizes[p] for p in parts if p in state.id_sizes}
    if fitted is not None:   # a DataFrame or a pyarrow Table; the driver's file's size is known, Spark's are listed
        written = write_ids(spark, f"{base}/ids", counted_rows(spark, fitted, scanned or []))
        parts.append(f"gen={gen}/ids")
        if written:
            sizes[f"gen={gen}/ids"] = written
    sizes.update(id_sizes(spark, state.uri, [p for p in parts if p not in sizes]))
    group = merge_plan(parts, sizes)
    if group:
        counted = Counted(state.model_sha256, [f"{state.uri}/{p}" for p in group], [tuple(d) for d in all_dropped],
                          [], {f"{state.uri}/{p}": sizes.get(p, {}) for p in group})
        small = sum(sum(sizes.get(p, {}).values()) for p in group) <= 256 * 2**20
        merged = write_ids(spark, f"{base}/ids-merged", counted.table(spark) if small else counted.frame(spark))
        at = parts.index(group[0])
        parts = [p for p in parts[:at] if p not in group] + [f"gen={gen}/ids-merged"] + \
            [p for p in parts[at:] if p not in group]
        if len(parts) == 1:   # everything merged: no dropped row is left anywhere
            all_dropped = []
        sizes.update({f"gen={gen}/ids-merged": merged} if merged else id_sizes(spark, state.uri, [f"gen={gen}/ids-merged"]))
    held_paths = {h["file"]: h["reason"] for h in held or []}
    objects = (state.archived or []) + state.objects + \
        [{**asdict(f), "reason": f.reason or held_paths.get(f.path)} for f in new_files]
    total = state.total + len(new_files)
    # Objects filed under days the next daily listing will not reach leave objects.json for an archive file, written
    # once (a refresh reads and writes the recent ones only: objects.json grew with every object ever counted).
    archive = [] if state.archived is not None else list(state.archive)
    recent_from = shift_day(listed_day, -LATE_DAYS) if listed_day else None
    def old(o: dict) -> bool:   # a device area's object filed before the next daily listing's first day
        return bool(recent_from and o.get("device_area") and (day_of(o["path"]) or recent_from) < recent_from)

    files = {rel: rec for rel, rec in state.files.items() if rel in archive}   # the archive kept: as recorded

    def put(rel: str, data: bytes, **extra) -> None:
        write_bytes(spark, f"{state.uri}/{rel}", data)
        files[rel] = file_record(data, **extra)

    aged = [o for o in objects if old(o)]
    if aged:
        objects = [o for o in objects if not old(o)]
        put(f"gen={gen}/objects-old.json", json.dumps(aged).encode(), rows=len(aged))
        archive.append(f"gen={gen}/objects-old.json")
    small = [p for p in archive if p.endswith("/objects-old.json")]
    if len(small) >= ARCHIVE_MERGE:   # a year of days is a dozen files, never all of them rewritten
        merged = []
        for rel in small:
            data = read_bytes(spark, f"{state.uri}/{rel}")
            check_recorded(data, f"{state.uri}/{rel}", files.get(rel))
            merged += _objects_list(data, f"{state.uri}/{rel}")
        put(f"gen={gen}/objects-old-merged.json", json.dumps(merged).encode(), rows=len(merged))
        archive = [p for p in archive if p not in small] + [f"gen={gen}/objects-old-merged.json"]
        files = {rel: rec for rel, rec in files.items() if rel not in small}
    if refreshes is not None:
        import io

        buf = io.BytesIO()
        np.save(buf, refreshes[1], allow_pickle=False)
        put(f"gen={gen}/history.json", json.dumps(refreshes[0]).encode(), rows=len(refreshes[0]))
        put(f"gen={gen}/components.npy", buf.getvalue())
    put(f"gen={gen}/moments.npz", sums.to_bytes(), rows=int(sums.n))
    put(f"gen={gen}/objects.json", json.dumps(objects).encode(), rows=len(objects))
    sizes = {p: sizes[p] for p in parts}
    pointer = {"generation": gen, "number": number, "previous": state.generation, "model_sha256": state.model_sha256,
               "rows": sums.n, "objects": total, "ids": parts, "id_sizes": sizes, "dropped": all_dropped,
               "run_id": run_id, "listed_day": listed_day, "recent_from": recent_from, "archive": archive,
               "files": files, "sig_key": sig_key, "committed_at": datetime.now(timezone.utc).isoformat()}
    body = json.dumps(pointer, indent=1).encode()
    write_bytes(spark, f"{state.uri}/{POINTER}", body)   # last: the new total is in force
    # Then the seal: a later current.json naming an older generation than this one is a rollback (load_state).
    write_bytes(spark, f"{base}/sealed.json", json.dumps({"generation": gen, "number": number,
                                                          "current_json_sha256": file_record(body)["sha256"]}).encode())
    return pointer

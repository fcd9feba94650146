"""The job's passes over the vectors, read by Python tasks with pyarrow: two passes over the features, not six.

Spark's own Parquet reader turns each ``list<float>`` row into JVM values, then into Arrow again for Python
(``mapInArrow``), and the job used to cache every row to count, deduplicate, fit and project it: five passes over
5 KB per row. Here the Spark tasks are handed *files*, not rows, and each reads its files with pyarrow (the
same reader the edge uses), a batch of rows at a time:

- **pass 1** (:func:`scan`): every row conformed with the contract's one definition
  (:func:`contract.vectors.conform_table`), and in the same pass the Gram statistics of the valid rows
  (:class:`cloud_pca.pca.GramSums`, numpy per chunk, per model) and, for the driver's counts and the duplicate
  check, the thin columns of every row (image id, time, source, file, row, model, client, reason: ~150 bytes,
  never the features). The partial statistics are added on the executors (:func:`cloud_pca.pca.tree_sum`).
- only when rows must be left out (duplicates, or ids an earlier incremental run counted) a second Gram pass
  skips them (:func:`gram`), so the common case stays at one;
- **pass 2** (:func:`project`): read again, keep the rows fitted, project them with numpy and hand Spark only
  the k values per row to write.

A batch no larger than one task's worth (an incremental run's new objects, ``--driver-batch-mb``) is read by
the driver itself with the same functions (:func:`local_scan`, :class:`LocalScan`): one task's work without the
Spark jobs around it, which are most of a small run's time.

Files reach pyarrow through the same storage the job was given: local paths, or S3 (``s3://``, ``s3a://``) with
the S3A settings of the session (endpoint, path style, keys when set; otherwise the default credential chain,
as on EMR).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from contract.card import FEATURE_DIM
from cloud_pca.pca import GramSums, tree_sum
from cloud_pca.storage import open_file, storage_options

log = logging.getLogger(__name__)
BATCH_ROWS = 8192                # rows per pyarrow batch in a task (bounded memory: ~42 MB of features)
TASK_BYTES = 128 * 2**20         # input bytes per task, as Spark's maxPartitionBytes
NOT_SELECTED = "model fingerprint {} not selected (--model-sha256)"
THIN_DDL = ("kind string, file int, row int, image_id string, vectorized_at timestamp, source string, "
            "model_sha256 string, client_id string, reason string, sums binary, sig bigint, screen double, "
            "owner string")


def task_groups(files: list, cores: int, task_bytes: int = TASK_BYTES) -> list[list[int]]:
    """Files (indices into ``files``) grouped into tasks of about ``task_bytes``, and at least one task per core
    while there are files to share (in listing order: a group reads neighbouring files)."""
    total = sum(f.size for f in files)
    per = max(1, min(task_bytes, -(-total // max(1, min(cores, len(files))))))
    groups, current, held = [], [], 0
    for i, f in enumerate(files):
        if current and held + f.size > per:
            groups.append(current)
            current, held = [], 0
        current.append(i)
        held += f.size
    if current:
        groups.append(current)
    return groups


def _batches(options: dict, path: str, columns=None):
    """The file's rows, BATCH_ROWS at a time (pyarrow RecordBatches)."""
    import pyarrow.parquet as pq

    with open_file(options, path) as f:
        pf = pq.ParquetFile(f)
        yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False)


def _conformed(batch, path: str, dim: int | None, select: str | None, owner: str | None = None):
    """The batch in the contract's types and each row's reason (None: fitted), the model selection applied; with
    ``owner`` (the device folder the file lies in), a row naming another device is refused."""
    import pyarrow as pa

    from contract.vectors import conform_table

    table, reasons = conform_table(pa.Table.from_batches([batch]), origin="row", dim=dim, owner=owner)
    reasons = reasons.to_numpy(zero_copy_only=False).astype(object)
    if select is not None:
        shas = np.asarray(table.column("model_sha256").to_numpy(zero_copy_only=False), dtype=object)
        other = (reasons == None) & (shas != select)   # noqa: E711 - elementwise
        if other.any():
            reasons[other] = [NOT_SELECTED.format(s) for s in shas[other]]
    return table, reasons


def rid(file_index: int, rows: np.ndarray) -> np.ndarray:
    """A row's id across the inputs: the file's index in the high 32 bits, the row in the low ones."""
    return (np.int64(file_index) << np.int64(32)) | rows.astype(np.int64)


# ----------------------------------------------------------------------------------------- pass 1
@dataclass
class Scan:
    """What pass 1 found: the thin rows (cached), the files it could not read, and the per-model partials."""

    mixed: object                     # DataFrame of THIN_DDL: kind 'row', 'sums' (one per task and model) or 'bad'
    files: list                       # the InputFiles scanned, in the order of their indices
    groups: list[list[int]]
    options: dict
    dim: int
    select: str | None
    cached: list = field(default_factory=list)

    @property
    def thin(self):
        from pyspark.sql import functions as F

        return self.mixed.filter(F.col("kind") == "row").drop("kind", "sums")

    def bad_files(self) -> list[tuple[str, str]]:
        from pyspark.sql import functions as F

        rows = self.mixed.filter(F.col("kind") == "bad").select("file", "reason").collect()
        return [(self.files[r["file"]].path, r["reason"]) for r in rows]

    def sums(self, model: str) -> GramSums | None:
        """The Gram statistics of model ``model``'s fitted rows, added on the executors."""
        from pyspark.sql import functions as F

        parts = (self.mixed.filter((F.col("kind") == "sums") & (F.col("model_sha256") == model)).select("sums")
                 .rdd.map(lambda r: GramSums.from_bytes(bytes(r["sums"]))))
        return tree_sum(parts)

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()


def _over_groups(spark, groups: list[list[int]], work, ddl: str):
    """``work(indices)`` (Arrow batches of ``ddl``) run over each task group in a Spark task of its own: one row
    per group, each in a partition of its own (``spark.range`` splits evenly)."""
    def run(batches):
        for ids in batches:
            for gid in ids.column(0).to_pylist():
                yield from work(groups[gid])

    return spark.range(0, len(groups), numPartitions=max(1, len(groups))).mapInArrow(run, ddl)


def _scan_files(options, indices, paths, dim, select, gram, schema, owners=None, trust=None):
    """Pass 1 over some files (a task's, or the driver's): their thin rows, a 'bad' row per file that cannot be
    read, and one 'sums' row per model (Arrow batches of THIN_DDL). ``owners``: each file's device folder (rows must
    name it); ``trust``: (the model card's feature center for signatures, the published projection's (mean, inverse
    scale, components, limit) for residuals), either None."""
    import pyarrow as pa

    sums: dict[str, GramSums] = {}
    for idx in indices:
        # A file's rows and statistics count only once the whole file was read: one that fails half-way (the
        # footer check let it through) is a bad file, none of its rows is counted.
        mine: dict[str, GramSums] = {}
        try:
            out = list(_scan_file(options, idx, paths[idx], dim, select, gram, mine, schema,
                                  owners[idx] if owners else None, trust))
        except Exception as exc:
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            yield pa.RecordBatch.from_pylist([{"kind": "bad", "file": idx, "reason": f"cannot be read ({text})"}],
                                             schema=schema)
            continue
        yield from out
        for model, part in mine.items():
            sums[model] = part if model not in sums else sums[model] + part
    for model, total in sums.items():
        yield pa.RecordBatch.from_pylist([{"kind": "sums", "model_sha256": model, "sums": total.to_bytes()}],
                                         schema=schema)


def scan(spark, files: list, *, dim: int | None, select: str | None = None, gram: bool = True, trust=None) -> Scan:
    """Pass 1 over ``files`` (InputFiles whose footers passed) in Spark tasks: thin rows, and Gram partials when
    ``gram``; ``trust``: (feature center, :class:`cloud_pca.trust.Screen`, signature key) for each row's signature and
    residual."""
    options = storage_options(spark)
    groups = task_groups(files, spark.sparkContext.defaultParallelism)
    paths, owners = [f.path for f in files], [f.owner for f in files]
    schema = _thin_schema()
    params = _trust_params(trust)

    mixed = _over_groups(spark, groups, lambda indices: _scan_files(options, indices, paths, dim, select, gram, schema,
                                                                    owners, params), THIN_DDL).cache()
    return Scan(mixed, files, groups, options, dim or FEATURE_DIM, select, [mixed])


@dataclass
class LocalScan:
    """Pass 1 of a batch small enough for one task, run by the driver itself (:func:`local_scan`): the same
    reading and checks as :class:`Scan`, without a Spark job; ``mixed`` is a pyarrow Table of THIN_DDL."""

    mixed: object
    files: list
    options: dict
    dim: int
    select: str | None

    @property
    def groups(self) -> list[list[int]]:
        return [list(range(len(self.files)))]

    @property
    def thin(self):
        import pyarrow.compute as pc

        return self.mixed.filter(pc.equal(self.mixed.column("kind"), "row")).drop(["kind", "sums"])

    def bad_files(self) -> list[tuple[str, str]]:
        import pyarrow.compute as pc

        bad = self.mixed.filter(pc.equal(self.mixed.column("kind"), "bad"))
        return [(self.files[i].path, r) for i, r in zip(bad.column("file").to_pylist(), bad.column("reason").to_pylist())]

    def sums(self, model: str) -> GramSums | None:
        import pyarrow.compute as pc

        rows = self.mixed.filter(pc.and_(pc.equal(self.mixed.column("kind"), "sums"),
                                         pc.equal(self.mixed.column("model_sha256"), model)))
        parts = [GramSums.from_bytes(b) for b in rows.column("sums").to_pylist()]
        return sum(parts[1:], parts[0]) if parts else None

    def release(self) -> None:
        pass


def _trust_params(trust):
    """(feature center, the screen's (center, limit), the signature key) for the tasks, from (center, Screen, key)."""
    if trust is None:
        return None
    center, screen, key = trust if len(trust) == 3 else (*trust, None)
    return center, (screen.params() if screen is not None else None), key


def local_scan(spark, files: list, *, dim: int | None, select: str | None = None, trust=None) -> LocalScan:
    """Pass 1 over ``files`` in the driver (:func:`_scan_files`, as one task would run it)."""
    import pyarrow as pa

    options, schema = storage_options(spark), _thin_schema()
    batches = list(_scan_files(options, range(len(files)), [f.path for f in files], dim, select, True, schema,
                               [f.owner for f in files], _trust_params(trust)))
    return LocalScan(pa.Table.from_batches(batches, schema=schema), files, options, dim or FEATURE_DIM, select)


def _thin_schema():
    import pyarrow as pa

    return pa.schema([("kind", pa.string()), ("file", pa.int32()), ("row", pa.int32()), ("image_id", pa.string()),
                      ("vectorized_at", pa.timestamp("us", tz="UTC")), ("source", pa.string()),
                      ("model_sha256", pa.string()), ("client_id", pa.string()), ("reason", pa.string()),
                      ("sums", pa.binary()), ("sig", pa.int64()), ("screen", pa.float64()), ("owner", pa.string())])


def _source_owner(sources: np.ndarray) -> np.ndarray:
    """The uploader of featurized photos: the ``client=<id>`` folder their raw key starts with (``source``)."""
    out = np.full(len(sources), None, dtype=object)
    for i, src in enumerate(sources):
        if isinstance(src, str) and src.startswith("client="):
            out[i] = src[len("client="):].split("/", 1)[0]
    return out


def _scan_file(options, idx, path, dim, select, gram, sums, schema, owner=None, trust=None):
    """One file of pass 1: its thin rows (yielded per batch: with each valid row's SimHash signature and residual off
    the published projection) and its fitted rows' statistics (into ``sums``)."""
    import pyarrow as pa

    from cloud_pca.trust import signatures
    from contract.vectors import features_matrix

    start = 0
    for batch in _batches(options, path):
        table, reasons = _conformed(batch, path, dim, select, owner)
        n = table.num_rows
        rows = np.arange(start, start + n, dtype=np.int32)
        start += n
        ok = np.flatnonzero(reasons == None)   # noqa: E711 - elementwise
        sig, resid = np.zeros(n, np.int64), np.full(n, np.nan)
        center, screen, key = trust if trust is not None else (None, None, None)
        if len(ok):
            feats = table.column("features")
            x = features_matrix(feats.take(ok) if len(ok) < n else feats)
            sig[ok] = signatures(x, center, key)
            if screen is not None and x.shape[1] == len(screen[0]):   # distance from the card's center
                resid[ok] = np.linalg.norm(x.astype(np.float64) - screen[0], axis=1)
        owners = (np.full(n, owner, dtype=object) if owner is not None
                  else _source_owner(table.column("source").to_numpy(zero_copy_only=False)))
        yield pa.RecordBatch.from_arrays([
            pa.array(["row"] * n, pa.string()), pa.array(np.full(n, idx, np.int32)), pa.array(rows),
            table.column("image_id").combine_chunks(), table.column("vectorized_at").combine_chunks(),
            table.column("source").combine_chunks(), table.column("model_sha256").combine_chunks(),
            table.column("client_id").combine_chunks(), pa.array(reasons.tolist(), pa.string()),
            pa.nulls(n, pa.binary()), pa.array(sig), pa.array(resid), pa.array(owners.tolist(), pa.string())],
            schema=schema)
        if gram:
            _add_sums(table, reasons, sums, features_matrix)


def _add_sums(table, reasons, sums: dict, features_matrix, keep: np.ndarray | None = None) -> None:
    """Add the fitted rows of ``table`` (reason None, and ``keep`` where given) to ``sums`` per model."""
    ok = reasons == None   # noqa: E711 - elementwise
    if keep is not None:
        ok &= keep
    if not ok.any():
        return
    shas = np.asarray(table.column("model_sha256").to_numpy(zero_copy_only=False), dtype=object)
    for model in set(shas[ok]):
        take = np.flatnonzero(ok & (shas == model))
        feats = table.column("features")
        x = features_matrix(feats.take(take) if len(take) < table.num_rows else feats)
        part = GramSums.of(x)
        sums[model] = part if model not in sums else sums[model] + part


# ------------------------------------------------------------------- a Gram pass that leaves rows out
def _gram_files(options, indices, paths, dim, select, left_out: np.ndarray, owners=None) -> dict:
    """The Gram statistics per model of the fitted rows of some files but those whose row id is in ``left_out``."""
    from contract.vectors import features_matrix

    sums: dict[str, GramSums] = {}
    for idx in indices:
        start = 0
        for batch in _batches(options, paths[idx]):
            table, reasons = _conformed(batch, paths[idx], dim, select, owners[idx] if owners else None)
            keep = ~np.isin(rid(idx, np.arange(start, start + table.num_rows)), left_out)
            start += table.num_rows
            _add_sums(table, reasons, sums, features_matrix, keep)
    return sums


def gram(spark, found, model: str, excluded: np.ndarray) -> GramSums | None:
    """The Gram statistics of ``model``'s fitted rows but those whose row id is in ``excluded`` (sorted): in Spark
    tasks for a :class:`Scan`, in the driver for a :class:`LocalScan`."""
    import pyarrow as pa

    options, groups, paths, dim, select = found.options, found.groups, [f.path for f in found.files], found.dim, found.select
    owners = [f.owner for f in found.files]
    excluded = np.asarray(excluded, dtype=np.int64)
    if isinstance(found, LocalScan):
        return _gram_files(options, groups[0], paths, dim, select, excluded, owners).get(model)
    skip = spark.sparkContext.broadcast(excluded)

    def model_sums(indices):
        sums = _gram_files(options, indices, paths, dim, select, skip.value, owners)
        if model in sums:
            yield pa.RecordBatch.from_pydict({"sums": [sums[model].to_bytes()]})

    parts = _over_groups(spark, groups, model_sums, "sums binary").rdd.map(
        lambda r: GramSums.from_bytes(bytes(r["sums"])))
    total = tree_sum(parts)
    skip.unpersist()
    return total


# ----------------------------------------------------------------------------------------- pass 2
PROJECTED_DDL = ("image_id string, label string, client_id string, source string, pca array<float>, "
                 "pca_model string, residual double")


def _projected_schema():
    import pyarrow as pa

    return pa.schema([("image_id", pa.string()), ("label", pa.string()), ("client_id", pa.string()),
                      ("source", pa.string()), ("pca", pa.list_(pa.float32())), ("pca_model", pa.string()),
                      ("residual", pa.float64())])


def _fitted(options, indices, paths, dim, select, model_sha256, left_out, owners=None):
    """(file index, table) of the fitted rows of ``model_sha256`` in some files, but ``left_out`` ones: what both
    passes after the fit read (the projection, the identities' energies)."""
    for idx in indices:
        start = 0
        for batch in _batches(options, paths[idx]):
            table, reasons = _conformed(batch, paths[idx], dim, select, owners[idx] if owners else None)
            shas = np.asarray(table.column("model_sha256").to_numpy(zero_copy_only=False), dtype=object)
            keep = (reasons == None) & (shas == model_sha256)   # noqa: E711
            keep &= ~np.isin(rid(idx, np.arange(start, start + table.num_rows)), left_out)
            start += table.num_rows
            take = np.flatnonzero(keep)
            if len(take):
                yield idx, table.take(take)


def _project_files(options, indices, paths, dim, select, model_sha256, params, left_out, label_col, owners=None):
    """Pass 2 over some files: their fitted rows of ``model_sha256`` but ``left_out`` ones, projected with
    ``params`` (mean, inverse scale, components transposed, model id), as Arrow batches of PROJECTED_DDL."""
    import pyarrow as pa

    from contract.vectors import features_array, features_matrix

    mean, inv, comps_t, model_id = params
    schema = _projected_schema()
    for _, t in _fitted(options, indices, paths, dim, select, model_sha256, left_out, owners):
        z = (features_matrix(t.column("features")) - mean) * inv
        y = z @ comps_t
        residual = np.clip((z * z).sum(axis=1) - (y * y).sum(axis=1), 0.0, None)
        label = (t.column(label_col).combine_chunks().cast(pa.string()) if label_col in t.column_names
                 else pa.nulls(t.num_rows, pa.string()))
        yield pa.RecordBatch.from_arrays([
            t.column("image_id").combine_chunks(), label, t.column("client_id").combine_chunks(),
            t.column("source").combine_chunks(), features_array(y),
            pa.array([model_id] * t.num_rows, pa.string()), pa.array(residual, pa.float64())], schema=schema)


def project(spark, found, model_sha256: str, pca, excluded: np.ndarray, *, label_col: str = "label"):
    """Pass 2: the fitted rows of ``model_sha256`` (but ``excluded``) projected by ``pca`` (a FruitsPCAModel), ready to
    write: for a :class:`Scan` a DataFrame of PROJECTED_DDL (and the broadcast to release after the write), for a
    :class:`LocalScan` a pyarrow Table read in the driver (and None)."""
    import pyarrow as pa

    from contract.vectors import safe_inverse

    options, groups, paths, dim, select = found.options, found.groups, [f.path for f in found.files], found.dim, found.select
    owners = [f.owner for f in found.files]
    params = (pca.mean_, safe_inverse(pca.scale_), pca.components_.T, pca.model_id_)
    excluded = np.asarray(excluded, dtype=np.int64)
    if isinstance(found, LocalScan):
        batches = _project_files(options, groups[0], paths, dim, select, model_sha256, params, excluded, label_col,
                                 owners)
        return pa.Table.from_batches(list(batches), schema=_projected_schema()), None
    skip = spark.sparkContext.broadcast(excluded)

    def projected(indices):
        return _project_files(options, indices, paths, dim, select, model_sha256, params, skip.value, label_col,
                              owners)

    return _over_groups(spark, groups, projected, PROJECTED_DDL), skip


# ------------------------------------------------------------------- the anonymous rows' energy (influence)
def _energy_files(options, indices, paths, dim, select, model_sha256, params, left_out, owners, anonymous, m):
    """{owner: [rows, energy (m x m)]} of the anonymous fitted rows of some files (but ``left_out`` ones), projected with
    ``params``: what :mod:`cloud_pca.influence` weighs."""
    from cloud_pca.influence import add_energies, energies
    from contract.layout import is_anonymous
    from contract.vectors import features_matrix

    mean, inv, comps_t = params
    out: dict = {}
    for idx, t in _fitted(options, indices, paths, dim, select, model_sha256, left_out, owners):
        who = (np.full(t.num_rows, owners[idx], dtype=object) if owners and owners[idx] is not None
               else _source_owner(t.column("source").to_numpy(zero_copy_only=False)))
        anon = np.array([bool(anonymous[idx]) or is_anonymous(o) for o in who], bool)
        if anon.any():
            y = ((features_matrix(t.column("features")) - mean) * inv) @ comps_t
            add_energies(out, energies(list(who), anon, y, m))
    return out


def owner_energies(spark, found, model_sha256: str, pca, excluded: np.ndarray, m: int) -> dict:
    """Per anonymous owner, its fitted rows (but ``excluded``) and their energy along ``pca``'s first ``m``
    components: a pass over the anonymous devices' files only (in Spark tasks for a :class:`Scan`, in the driver for
    a :class:`LocalScan`); the driver receives m + 1 numbers per identity."""
    import pyarrow as pa

    from cloud_pca.influence import add_energies
    from contract.vectors import safe_inverse

    from contract.layout import is_anonymous

    paths, dim, select = [f.path for f in found.files], found.dim, found.select
    owners = [f.owner for f in found.files]
    anonymous = [bool(f.anonymous) or (f.owner is not None and is_anonymous(f.owner)) for f in found.files]
    # files of keyed devices hold no anonymous row (featurized photos name their uploader per row: read those too)
    wanted = [i for i, f in enumerate(found.files) if anonymous[i] or f.owner is None]
    if not wanted:
        return {}
    params = (pca.mean_, safe_inverse(pca.scale_), pca.components_[:m].T)
    excluded = np.asarray(excluded, dtype=np.int64)
    if isinstance(found, LocalScan):
        return _energy_files(found.options, wanted, paths, dim, select, model_sha256, params, excluded, owners,
                             anonymous, m)
    options = found.options
    skip = spark.sparkContext.broadcast(excluded)

    def per_task(indices):
        got = _energy_files(options, indices, paths, dim, select, model_sha256, params, skip.value, owners, anonymous,
                            m)
        if got:
            yield pa.RecordBatch.from_pydict({"owner": list(got), "rows": [v[0] for v in got.values()],
                                              "energy": [v[1].ravel().tolist() for v in got.values()]})

    groups = [g for g in (sorted(set(grp) & set(wanted)) for grp in found.groups) if g]
    try:
        out: dict = {}
        for r in _over_groups(spark, groups, per_task, "owner string, rows long, energy array<double>").collect():
            add_energies(out, {r["owner"]: [int(r["rows"]), np.array(r["energy"], np.float64).reshape(m, m)]})
        return out
    finally:
        skip.unpersist()

"""The PCA job: read every vectors file under the inputs, validate, deduplicate, fit, project, write.

Three stages, each a function: :func:`read_stage` (files checked against the contract, rows conformed,
model fingerprints checked, duplicates found), :func:`fit_stage` (StandardScaler + PCA), and
:func:`write_outputs`. Output, under ``OUTPUT/run=<run_id>/``::

    projections/            Parquet: image_id, label, client_id, source, pca (k floats), pca_model (the model's id),
                            residual (|z|^2 - |y|^2: how far off the k-d subspace: rows the components describe badly)
    model/                  the fitted model: a Spark ML PipelineModel (StandardScalerModel + PCAModel), with
                            fruits-pca.npz (FruitsPCAModel.load) inside
    explained_variance.json / .csv   per component and cumulative, with the chosen k and why
    rejects/                Parquet: the rows refused, with file and reason
    plots/scree.png, plots/pca_2d.png, plots/pca_3d.png
    summary.json            rows in = projected + rejected + duplicates (each counted on its own), timings,
                            the bytes of task results the driver received
    _SUCCESS.json           written last: run id, model id, k and rows; a run without it is not complete

A run folder that exists is refused unless ``overwrite``; overwriting removes the old marker first, so a
run killed half-way never looks complete.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from contract.card import FEATURE_DIM
from contract.errors import FruitsError, one_line
from contract.layout import check_day, check_run_id, check_sha256, upload_day
from cloud_pca.inputs import InputError, Inputs, read_inputs
from cloud_pca.pca import FruitsPCAModel, GramSums, check_request, fit_pca, gram_sums
from cloud_pca.spark import driver_traffic, settings_held
from cloud_pca.storage import delete_path, list_files, path_exists, read_bytes, ready_to_list, write_bytes, write_rows

log = logging.getLogger(__name__)
BROADCAST_LOSERS = 2_000_000    # duplicate rows dropped with a broadcast anti-join (8 bytes each) up to this many
PLOT_SAMPLE = 5000
MARKER = "_SUCCESS.json"


class JobError(FruitsError, ValueError):
    """Input the job refuses (no files, a bad file, mixed models); the message names what and where."""


@dataclass
class JobConfig:
    inputs: list[str]
    output: str
    k: int | None = None
    variance: float | None = None
    solver: str = "gram"
    label_col: str = "label"
    model_sha256: str | None = None
    skip_bad_files: bool = False
    run_id: str | None = None
    plots: bool = True
    images: list[str] = field(default_factory=list)   # raw photos to featurize in this run (fallback)
    model_path: str | None = None  # the .tflite for --images (local, s3://, s3a://)
    batch_rows: int = 32           # photos per Arrow batch when featurizing
    overwrite: bool = False
    incremental: bool = False      # read only the objects not counted yet (cloud_pca.incremental)
    full: bool = False             # fit everything and start the incremental state afresh
    reproject: bool = False        # with incremental: project every row, not only the new ones
    driver_batch_bytes: int = 128 * 2**20   # incremental: a batch up to this size is read by the driver (0: never)
    screen: bool = True            # quarantine anonymous vectors no photo gives (the card's radius; cloud_pca.trust)
    stall_s: float = 20 * 60       # fail when no progress for this long (cloud_pca.watchdog; 0: never)
    as_of: str | None = None       # the UTC day the run takes for today (the day folders it lists); None: the clock

    def check(self) -> None:
        """Everything that can be checked before any data is read."""
        check_request(k=self.k, variance=self.variance, solver=self.solver)
        if self.run_id is not None:
            check_run_id(self.run_id)
        if self.model_sha256 is not None:
            check_sha256(self.model_sha256)
        if not self.inputs and not self.images:
            raise JobError("nothing to fit: give --input (vectors) and/or --images (raw photos)")
        if self.images and not self.model_path:
            raise JobError("--images needs --model (the .tflite the devices use)")
        if self.incremental and self.full:
            raise JobError("give --incremental or --full, not both")
        if (self.incremental or self.full) and (self.solver != "gram" or self.images):
            raise JobError("--incremental and --full keep the gram solver's statistics, of vector files: use "
                           "--solver gram, and featurize photos first (fruits-cloud featurize) to give them as --input")
        if self.reproject and not self.incremental:
            raise JobError("--reproject goes with --incremental (a full run projects every row anyway)")
        if self.driver_batch_bytes < 0:
            raise JobError("--driver-batch-mb must be 0 or more")
        if self.as_of is not None:
            check_day(self.as_of)

    @property
    def today(self) -> str:
        """The UTC day the run takes for today (fixed by :func:`run` when it starts)."""
        return self.as_of or upload_day()


@dataclass
class JobResult:
    run_uri: str
    summary: dict
    explained: dict
    model: FruitsPCAModel | None = None
    timings: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """What the read stage hands to the fit: the unique valid rows, the rejects and the counts."""

    unique: object
    rejects: object
    counts: dict
    model_counts: dict
    inputs: Inputs | None = None
    featurized: object = None
    cached: list = field(default_factory=list)

    def release(self) -> None:
        for df in self.cached or []:
            df.unpersist()
        if self.featurized is not None:
            self.featurized.unpersist()


@dataclass
class Scanned:
    """The read stage of files read by Python tasks (:mod:`cloud_pca.scan`): counts, the rows fitted (as the
    rows left out of them: ``excluded``), their Gram statistics from the same pass, rejects, and the ids of the
    rows fitted (``unique``, what the incremental state records)."""

    found: object                 # cloud_pca.scan.Scan (Spark tasks) or LocalScan (the driver)
    counts: dict
    model_counts: dict
    model_sha256: str | None
    excluded: np.ndarray
    unique: object                # every row fitted (image_id, file, row, sig, owner): a DataFrame (Scan), a Table
    rejects: object               # the same
    inputs: Inputs
    sums: GramSums | None = None
    passes: int = 1               # passes over the features so far
    featurized: object = None
    decision: object = None       # cloud_pca.trust.Decision: what the trust model set aside, conflicts, replacements
    screen: object = None         # the card's plausibility screen anonymous rows went through
    contributions: dict | None = None
    sig_key: str | None = None    # the key of the signatures' planes (the state keeps it)
    trust_s: float = 0.0          # seconds of the trust stage (candidates, counted rows met, decisions)

    @property
    def partitions(self) -> int:
        return len(self.found.groups)

    @property
    def in_driver(self) -> bool:
        from cloud_pca.scan import LocalScan

        return isinstance(self.found, LocalScan)

    def projected(self, spark, cfg: JobConfig, model: FruitsPCAModel):
        """The fitted rows projected (pass 2): a DataFrame to write, or a pyarrow Table when read in the driver."""
        from cloud_pca.scan import project

        self.passes += 1
        df, self._broadcast = project(spark, self.found, self.model_sha256, model, self.excluded,
                                      label_col=cfg.label_col)
        return df

    def release(self) -> None:
        self.found.release()
        if getattr(self, "_broadcast", None) is not None:
            self._broadcast.unpersist()


def feature_passes(data, shown) -> dict:
    """How many times the run read the features (what tests/test_pca_passes.py pins)."""
    if not isinstance(data, Scanned):
        return {"features": None, "path": "Spark rows"}
    n = data.passes + (shown.passes if shown is not data and isinstance(shown, Scanned) else 0)
    return {"features": n, "path": "files read by the driver (a small batch)" if data.in_driver and shown is data
            else "files read in Python tasks"}


def fast_path(cfg: JobConfig) -> bool:
    """Vector files and the gram solver: the job reads the files in Python tasks (two passes over the features).
    Spark ML's solver and photos featurized in the run take Spark DataFrames of rows: the row path."""
    return cfg.solver == "gram" and not cfg.images


def check_inputs(spark, files: list, *, skip_bad_files: bool, where: str) -> tuple[Inputs, list, int]:
    """The good files of ``files`` (footers checked), refusing what :func:`cloud_pca.inputs.open_files` refuses,
    without reading rows: (Inputs for the summary, good files, the vectors' length)."""
    from cloud_pca.inputs import good_files

    try:
        inputs, good = good_files(spark, files, skip_bad_files=skip_bad_files, where=where)
    except InputError as exc:
        raise JobError(str(exc)) from None
    return inputs, good, inputs.dim


def refuse_unread(cfg: JobConfig, found, inputs: Inputs) -> list:
    """Files pass 1 could not read: listed with the bad files; one of an operator's area is an error unless
    ``--skip-bad-files`` (one of a device area is set aside: :func:`cloud_pca.inputs.refuse_bad`)."""
    from cloud_pca.inputs import refuse_bad

    unread = found.bad_files()
    by_path = {f.path: f for f in found.files}
    for path, reason in unread:
        by_path[path].reason = reason
    try:
        refuse_bad([by_path[p] for p, _ in unread], skip_bad_files=cfg.skip_bad_files)
    except InputError as exc:
        raise JobError(str(exc)) from None
    inputs.bad = inputs.bad + unread
    return unread


def with_sums(spark, data: Scanned) -> Scanned:
    """The Gram statistics of the rows fitted: pass 1's own, or a second pass when rows are left out."""
    from cloud_pca.scan import gram as gram_pass

    if data.model_sha256 is not None and data.counts["projected"]:
        if len(data.excluded):
            data.sums, data.passes = gram_pass(spark, data.found, data.model_sha256, data.excluded), 2
        else:
            data.sums = data.found.sums(data.model_sha256)
    return data


def load_card(spark, root: str | None, model_sha256: str | None) -> dict | None:
    """The model card for ``model_sha256``: from the dataset's ``ROOT/models/`` (where ``emr launch`` uploads the cards),
    else the committed cards of this checkout; None when no card names it."""
    cards = []
    if root:
        try:
            cards = [read_bytes(spark, f.path) for f in list_files(spark, f"{root.rstrip('/')}/models",
                                                                   suffixes=(".json",))]
        except Exception:  # no models/ folder there
            cards = []
    try:
        import models

        cards += [p.with_suffix(".json").read_bytes() for p in models.committed()]
    except (ImportError, AttributeError, OSError):
        pass
    for data in cards:
        try:
            card = json.loads(data)
        except ValueError:
            continue
        if isinstance(card, dict) and card.get("sha256") == model_sha256:
            return card
    return None


def trust_context(spark, cfg: JobConfig, files: list, model_sha256: str | None = None, *, counted=None,
                  sig_key: str | None = None):
    """What the trust model needs before pass 1 (:mod:`cloud_pca.trust`), for the run's model (``--model-sha256``, the
    state's, or the one the files' footers name), under the dataset root the output lies in (``ROOT/pca``): the model
    card's feature center (signatures), the card's plausibility screen for anonymous rows (None for a card without
    a radius, or with ``screen`` off), and the key of the signatures' planes."""
    from cloud_pca.trust import load_center, load_screen

    model = model_sha256 or cfg.model_sha256
    if model is None:
        named = {f.model for f in files if getattr(f, "model", None)}
        model = next(iter(named)) if len(named) == 1 else (first_model(spark, files) if not named else None)
    out = cfg.output.rstrip("/")
    root = out[: -len("/pca")] if out.endswith("/pca") else None
    card = load_card(spark, root, model)
    # The signature planes' key: the state's (a state from before keys has none: the public seed, as its counted
    # rows' signatures were made), the one given (a re-projection), else a fresh one (a first or --full run: its state
    # keeps it).
    from cloud_pca.trust import new_key

    key = counted.sig_key if counted is not None else (sig_key or new_key())
    return load_center(card, model), (load_screen(card) if cfg.screen else None), key


def first_model(spark, files: list) -> str | None:
    """The model fingerprint the first rows of the files name (files written without the fingerprint in their
    metadata: a foreign writer's); None when none can be read."""
    import pyarrow.parquet as pq

    from cloud_pca.storage import open_file, storage_options

    options = storage_options(spark)
    for f in files[:5]:
        try:
            with open_file(options, f.path) as fh:
                pf = pq.ParquetFile(fh)
                for batch in pf.iter_batches(batch_size=64, columns=["model_sha256"]):
                    named = [v for v in batch.column(0).to_pylist() if v]
                    if named:
                        return named[0]
        except Exception:  # unreadable: pass 1 will say so
            continue
    return None


def _rid(file_col, row_col):
    from pyspark.sql import functions as F

    return F.shiftleft(F.col(file_col).cast("long"), 32).bitwiseOR(F.col(row_col).cast("long"))


def _decision_rows(rows) -> "object":
    """Thin rows (a pyarrow Table) as :func:`cloud_pca.trust.decide` takes them."""
    import pyarrow as pa

    rid = (rows.column("file").to_numpy().astype(np.int64) << 32) | rows.column("row").to_numpy().astype(np.int64)
    return pa.table({"rid": pa.array(rid), "image_id": rows.column("image_id"), "file": rows.column("file"),
                     "row": rows.column("row"), "sig": rows.column("sig"), "screen": rows.column("screen"),
                     "owner": rows.column("owner")})


def feature_reader(found):
    """``read([(path, row)])`` -> {(path, row): vector}: the exact vectors of a few rows (where two copies' signatures
    leave their agreement in doubt), read in the driver with the scan's own storage settings."""
    def read(where: list[tuple[str, int]]) -> dict:
        import pyarrow.parquet as pq

        from cloud_pca.storage import open_file
        from contract.vectors import features_matrix

        out, by_path = {}, {}
        for path, row in where:
            by_path.setdefault(path, []).append(row)
        for path, rows in by_path.items():
            try:
                with open_file(found.options, path) as f:
                    table = pq.read_table(f, columns=["features"])
            except Exception:  # gone or unreadable: the signatures decide
                continue
            x = features_matrix(table.column("features").take(rows))
            out.update({(path, r): x[i] for i, r in enumerate(rows)})
        return out

    return read


def trust_stage(spark, cfg: JobConfig, found, valid_rows, *, counted=None, screen=None):
    """The trust model's decisions (:func:`cloud_pca.trust.decide`) on the run's valid rows: ``valid_rows`` the
    candidates (a pyarrow Table of thin rows), ``counted`` the rows counted before (incremental) of the same ids or
    signature halves."""
    from cloud_pca.trust import decide

    return decide(_decision_rows(valid_rows), found.files, counted=counted, screen=screen,
                  read_features=feature_reader(found))


def contributions(found, thin_counts: list[dict], decision, held: list[dict], quarantined: list, screen) -> dict:
    """What each device sent and what became of it (summary ``contributions``; the report's section and ``fruits-cloud
    contributions`` show it): per device rows in, refused (by pass 1's reasons and the trust model's), fitted."""
    from contract.layout import is_anonymous

    devices: dict[str, dict] = {}
    for r in thin_counts:
        d = devices.setdefault(r["owner"] or "(operator files)", {"device": r["owner"] or "(operator files)",
                                                                   "anonymous": is_anonymous(r["owner"]),
                                                                   "rows": 0, "refused": 0, "set_aside": 0})
        d["rows"] += int(r["rows"])
        d["refused"] += int(r["refused"])
    for owner, n in decision.by_owner.items():
        d = devices.setdefault(owner or "(operator files)", {"device": owner or "(operator files)",
                                                             "anonymous": is_anonymous(owner), "rows": 0,
                                                             "refused": 0, "set_aside": 0})
        d["set_aside"] += n
    ranked = sorted(devices.values(), key=lambda d: (-(d["refused"] + d["set_aside"]), -d["rows"], d["device"]))
    return {
        "screened_against": f"model card {screen.card}" if screen is not None else None,
        "screen_limit": screen.limit if screen is not None else None,
        "devices": len(devices), "anonymous_devices": sum(d["anonymous"] for d in devices.values()),
        "rows_from_anonymous": sum(d["rows"] for d in devices.values() if d["anonymous"]),
        "screened": decision.screened, "near_copies": decision.near_copies, "conflicts": len(decision.conflicts),
        "replaced_counted": len(decision.replaced), "held_back_objects": held[:200], "held_back": len(held),
        "quarantined_objects": [{"file": p, "reason": r} for p, r in quarantined][:200],
        "quarantined": len(quarantined), "conflict_list": decision.conflicts[:200],
        "by_device": ranked[:200]}


def scan_stage(spark, cfg: JobConfig, files: list, *, where: str, counted=None, gram: bool = True,
               held: list | None = None, sig_key: str | None = None) -> Scanned:
    """Pass 1 (:func:`cloud_pca.scan.scan`) and what the driver makes of it: counts, the model, the trust model's
    decisions on the candidate rows (duplicates and conflicts, screened and near-copy rows; :mod:`cloud_pca.trust`),
    the rows left out, and the Gram statistics of the rows fitted (a second pass only when rows are left out).
    ``counted``: the incremental state's counted rows (:class:`cloud_pca.incremental.Counted`)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from cloud_pca.scan import _thin_schema, scan
    from cloud_pca.trust import NEAR_COPY_KEEP

    inputs, good, dim = check_inputs(spark, files, skip_bad_files=cfg.skip_bad_files, where=where)
    center, screen, key = trust_context(spark, cfg, good, counted.model_sha256 if counted is not None else None,
                                        counted=counted, sig_key=sig_key)
    found = scan(spark, good, dim=dim, select=cfg.model_sha256, gram=gram, trust=(center, screen, key))
    try:
        unread = refuse_unread(cfg, found, inputs)
        thin = found.thin
        if unread:
            gone = [i for i, f in enumerate(found.files) if f.path in {p for p, _ in unread}]
            thin = thin.filter(~F.col("file").isin(gone))
        per_model = thin.groupBy("model_sha256", F.col("reason").isNull().alias("ok")).agg(
            F.count(F.lit(1)).alias("count")).collect()
        rows_in = sum(r["count"] for r in per_model)
        if rows_in == 0 and counted is None:
            raise JobError(f"the input holds no rows ({len(files)} file(s))")
        model_counts = {r["model_sha256"]: r["count"] for r in per_model if r["ok"] and r["model_sha256"]}
        pick_model(model_counts, cfg.model_sha256)
        chosen = cfg.model_sha256 or next(iter(model_counts), None)
        valid = thin.filter(F.col("reason").isNull()).withColumn("_rid", _rid("file", "row"))
        t_trust = time.perf_counter()
        # Candidates for the trust model, found in Spark; only they reach the driver: copies of one image id (here
        # or counted before), anonymous rows in a dense cluster of signature halves, rows off the published model.
        anon_files = [i for i, f in enumerate(found.files) if f.anonymous]
        from contract.layout import _COGNITO_ID_RE

        anon = F.col("file").isin(anon_files) | F.col("owner").rlike(_COGNITO_ID_RE.pattern)
        lo, hi = F.col("sig").bitwiseAND(F.lit(0xFFFFFFFF)), F.shiftrightunsigned("sig", 32)
        dup_ids = valid.groupBy("image_id").count().filter("count > 1").select("image_id")
        banded = valid.filter(anon).select(F.lit("lo").alias("b"), lo.alias("v")).unionByName(
            valid.filter(anon).select(F.lit("hi").alias("b"), hi.alias("v")))
        if counted is not None and counted.parts:
            cdf = counted.frame(spark)
            dup_ids = dup_ids.unionByName(cdf.join(valid.select("image_id"), "image_id", "left_semi")
                                          .select("image_id")).distinct()
            clo, chi = F.col("sig").bitwiseAND(F.lit(0xFFFFFFFF)), F.shiftrightunsigned("sig", 32)
            canon = cdf.filter(F.col("anonymous"))
            banded = banded.unionByName(canon.select(F.lit("lo").alias("b"), clo.alias("v"))).unionByName(
                canon.select(F.lit("hi").alias("b"), chi.alias("v")))
        dense = banded.groupBy("b", "v").count().filter(F.col("count") > NEAR_COPY_KEEP).select("b", "v").collect()
        dense_lo = [r["v"] for r in dense if r["b"] == "lo"]
        dense_hi = [r["v"] for r in dense if r["b"] == "hi"]
        wanted = F.lit(False)
        if screen is not None:
            wanted = wanted | (anon & (F.col("screen") > F.lit(screen.limit)))
        if dense_lo or dense_hi:
            wanted = wanted | (anon & (lo.isin(dense_lo) | hi.isin(dense_hi)))
        ids = [r["image_id"] for r in dup_ids.collect()]
        if ids:
            wanted = wanted | is_in(spark, "image_id", ids)
        cols = ["file", "row", "image_id", "sig", "screen", "owner"]
        thin_schema = _thin_schema()
        candidates = pa.Table.from_pylist([r.asDict() for r in valid.filter(wanted).select(*cols).collect()],
                                          schema=pa.schema([(c, thin_schema.field(c).type) for c in cols]))
        counted_rows = None
        if counted is not None and counted.parts:
            counted_rows = counted.rows_for(spark, set(candidates.column("image_id").to_pylist()), dense_lo, dense_hi)
        decision = trust_stage(spark, cfg, found, candidates, counted=counted_rows, screen=screen)
        trust_s = time.perf_counter() - t_trust
        left = sorted(set(decision.refused) | decision.duplicates | decision.already)
        excluded = np.asarray(left, dtype=np.int64)
        if len(excluded):
            valid = valid.join(F.broadcast(spark.createDataFrame([(int(r),) for r in excluded], "_rid long")),
                               "_rid", "left_anti")
        paths = spark.createDataFrame([(i, f.path) for i, f in enumerate(found.files)], "file int, path string")
        rejects = (thin.filter(F.col("reason").isNotNull()).join(F.broadcast(paths), "file")
                   .select("image_id", "source", "client_id", F.col("path").alias("file"), "reason"))
        if decision.refused:
            why = spark.createDataFrame([(int(r), t) for r, t in decision.refused.items()], "_rid long, why string")
            refused = (thin.withColumn("_rid", _rid("file", "row")).join(F.broadcast(why), "_rid")
                       .join(F.broadcast(paths), "file")
                       .select("image_id", "source", "client_id", F.col("path").alias("file"),
                               F.col("why").alias("reason")))
            rejects = rejects.unionByName(refused)
        per_owner = thin.groupBy("owner").agg(F.count(F.lit(1)).alias("rows"),
                                              F.sum(F.col("reason").isNotNull().cast("int")).alias("refused")).collect()
        decision.by_owner = _refused_by_owner(decision, candidates, found)
        # Each count on its own (the thin rows are cached: cheap), so that "reconciles" is a real check.
        counts = {"rows_in": int(rows_in), "projected": int(valid.count()),
                  "rejected": int(thin.filter(F.col("reason").isNotNull()).count()) + len(decision.refused),
                  "duplicates": len(decision.duplicates) + len(decision.already)}
        if counted is not None:
            counts["already_counted"] = len(decision.already)
        data = Scanned(found, counts, model_counts, chosen, excluded,
                       valid.select("image_id", "file", "row", "sig", "owner"), rejects, inputs)
        data.decision, data.screen, data.sig_key, data.trust_s = decision, screen, key, trust_s
        data.contributions = contributions(found, [r.asDict() for r in per_owner], decision, held or [],
                                           inputs.bad, screen)
        return with_sums(spark, data) if gram else data
    except BaseException:
        found.release()
        raise


def _refused_by_owner(decision, candidates, found) -> dict:
    """Rows the trust model set aside, per device (the row's owner, or its file's)."""
    rid = ((candidates.column("file").to_numpy().astype(np.int64) << 32)
           | candidates.column("row").to_numpy().astype(np.int64))
    owner = candidates.column("owner").to_pylist()
    out: dict = {}
    set_aside = set(decision.refused)
    for r, o in zip(rid.tolist(), owner):
        if r in set_aside:
            out[o] = out.get(o, 0) + 1
    return out


def is_in(spark, column: str, values: list[str]):
    """``F.col(column).isin(values)`` for thousands of strings: the values reach the JVM as one string (one py4j
    call, not one per value) and Spark's optimizer makes the set a hash set (InSet)."""
    from pyspark.sql import Column

    jvm = spark._jvm
    if any("\n" in v for v in values):
        raise ValueError("is_in: a value holds a newline")
    listed = (jvm.java.util.regex.Pattern.compile("\n").splitAsStream("\n".join(values))
              .collect(jvm.java.util.stream.Collectors.toList()))
    return Column(jvm.org.apache.spark.sql.functions.col(column).isInCollection(listed))


def local_scan_stage(spark, cfg: JobConfig, files: list, *, where: str, counted=None,
                     held: list | None = None, sig_key: str | None = None) -> Scanned:
    """:func:`scan_stage` for a batch one Spark task would read (the daily refresh): pass 1 in the driver
    (:func:`cloud_pca.scan.local_scan`, the same reading and checks), its counts and the trust model's decisions in
    pyarrow and numpy, the rows counted before read from the state with pyarrow: no Spark job at all."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from cloud_pca.scan import local_scan
    from cloud_pca.trust import bands

    inputs, good, dim = check_inputs(spark, files, skip_bad_files=cfg.skip_bad_files, where=where)
    center, screen, key = trust_context(spark, cfg, good, counted.model_sha256 if counted is not None else None,
                                        counted=counted, sig_key=sig_key)
    found = local_scan(spark, good, dim=dim, select=cfg.model_sha256, trust=(center, screen, key))
    unread = refuse_unread(cfg, found, inputs)
    thin = found.thin
    if unread:
        gone = pa.array([i for i, f in enumerate(found.files) if f.path in {p for p, _ in unread}], pa.int32())
        thin = thin.filter(pc.invert(pc.is_in(thin.column("file"), value_set=gone)))
    if thin.num_rows == 0 and counted is None:
        raise JobError(f"the input holds no rows ({len(files)} file(s))")
    refused_rows = pc.is_valid(thin.column("reason"))
    valid = thin.filter(pc.invert(refused_rows))
    per_model = pc.value_counts(valid.column("model_sha256"))
    model_counts = {m: int(n) for m, n in zip(per_model.field("values").to_pylist(),
                                              per_model.field("counts").to_pylist()) if m}
    pick_model(model_counts, cfg.model_sha256)
    chosen = cfg.model_sha256 or next(iter(model_counts), None)
    t_trust = time.perf_counter()
    counted_rows = None
    if counted is not None and counted.parts and valid.num_rows:
        # Near-copies are looked for among anonymous rows only (trust.decide): the signature halves of this batch's
        # anonymous rows, none for a batch of keyed devices (then only the counted rows' key column is read).
        from contract.layout import is_anonymous

        anon = np.array([bool(found.files[i].anonymous) or is_anonymous(o) for i, o in
                         zip(valid.column("file").to_pylist(), valid.column("owner").to_pylist())], dtype=bool)
        lo, hi = bands(valid.column("sig").to_numpy()[anon])
        counted_rows = counted.rows_for(spark, set(valid.column("image_id").to_pylist()), lo.tolist(), hi.tolist())
    decision = trust_stage(spark, cfg, found, valid, counted=counted_rows, screen=screen)
    trust_s = time.perf_counter() - t_trust
    rids = ((valid.column("file").to_numpy().astype(np.int64) << 32)
            | valid.column("row").to_numpy().astype(np.int64))
    left = set(decision.refused) | decision.duplicates | decision.already
    keep = ~np.isin(rids, np.fromiter(left, np.int64, len(left))) if left else np.ones(len(rids), dtype=bool)
    excluded = np.unique(rids[~keep])
    fitted = valid.filter(pa.array(keep))
    paths = pa.array([f.path for f in found.files], pa.string())
    rejected = thin.filter(refused_rows)
    rejects = pa.table({"image_id": rejected.column("image_id"), "source": rejected.column("source"),
                        "client_id": rejected.column("client_id"), "file": pc.take(paths, rejected.column("file")),
                        "reason": rejected.column("reason")})
    if decision.refused:
        set_aside = np.isin(rids, np.fromiter(decision.refused, np.int64, len(decision.refused)))
        aside = valid.filter(pa.array(set_aside))
        aside_rids = rids[set_aside]
        rejects = pa.concat_tables([rejects, pa.table({
            "image_id": aside.column("image_id"), "source": aside.column("source"),
            "client_id": aside.column("client_id"), "file": pc.take(paths, aside.column("file")),
            "reason": pa.array([decision.refused[int(r)] for r in aside_rids], pa.string())})])
    decision.by_owner = _refused_by_owner(decision, valid, found)
    owners = thin.column("owner").to_pylist()
    bad = refused_rows.to_numpy(zero_copy_only=False)
    per_owner: dict = {}
    for o, b in zip(owners, bad):
        d = per_owner.setdefault(o, {"owner": o, "rows": 0, "refused": 0})
        d["rows"] += 1
        d["refused"] += int(b)
    counts = {"rows_in": thin.num_rows, "projected": fitted.num_rows,
              "rejected": int(refused_rows.to_numpy(zero_copy_only=False).sum()) + len(decision.refused),
              "duplicates": len(decision.duplicates) + len(decision.already)}
    if counted is not None:
        counts["already_counted"] = len(decision.already)
    data = Scanned(found, counts, model_counts, chosen, excluded,
                   fitted.select(["image_id", "file", "row", "sig", "owner"]), rejects, inputs)
    data.decision, data.screen, data.sig_key, data.trust_s = decision, screen, key, trust_s
    data.contributions = contributions(found, list(per_owner.values()), decision, held or [], inputs.bad, screen)
    return with_sums(spark, data)


# ------------------------------------------------------------------------------------------ read stage
def select_model(df, model_sha256: str | None):
    """A refusal reason for rows of another fingerprint than the one selected (``--model-sha256``)."""
    from pyspark.sql import functions as F

    if not model_sha256:
        return df
    other = F.col("reason").isNull() & (F.col("model_sha256") != F.lit(model_sha256))
    return df.withColumn("reason", F.when(other, F.concat(F.lit("model fingerprint "), F.col("model_sha256"),
                                                          F.lit(" not selected (--model-sha256)")))
                         .otherwise(F.col("reason")))


def pick_model(model_counts: dict[str, int], model_sha256: str | None) -> None:
    """Refuse a mix of fingerprints unless one is selected (they cannot share one PCA)."""
    if model_sha256 is None and len(model_counts) > 1:
        listing = ", ".join(f"{sha[:12]}...: {n} rows" for sha, n in sorted(model_counts.items(), key=lambda kv: -kv[1]))
        raise JobError(f"vectors from {len(model_counts)} different models ({listing}); they cannot share one PCA. "
                       f"Select one with --model-sha256")
    if model_sha256 is not None and model_counts and model_sha256 not in model_counts:
        raise JobError(f"no vectors of model {model_sha256[:12]}... (found: "
                       f"{', '.join(s[:12] + '...' for s in model_counts)})")


def losers(valid, files: list | None = None):
    """``_rid`` of every duplicate to drop on the row path: for each image_id all rows but the first in the trust
    model's order (:mod:`cloud_pca.trust`): a trusted device's copy first, then the one the store received first
    (the file's modification time), then by file and row; never by what a device says (``vectorized_at``). Only
    thin columns are shuffled, never the features."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from cloud_pca.inputs import _plain
    from cloud_pca.trust import ANONYMOUS, TRUSTED

    thin = valid.select("_rid", "image_id", "file")
    if files and dict(valid.dtypes).get("file") == "string":
        spark = valid.sparkSession
        meta = spark.createDataFrame([(_plain(f.path), ANONYMOUS if f.anonymous else TRUSTED, int(f.mtime))
                                      for f in files], "_key string, _tier int, _mtime long")
        key = F.concat(F.coalesce(F.expr("parse_url(file, 'HOST')"), F.lit("")),
                       F.expr("url_decode(parse_url(file, 'PATH'))"))
        thin = thin.withColumn("_key", key).join(F.broadcast(meta), "_key", "left").drop("_key")
    else:
        thin = thin.withColumn("_tier", F.lit(TRUSTED)).withColumn("_mtime", F.lit(0).cast("long"))
    w = Window.partitionBy("image_id").orderBy(F.col("_tier").asc_nulls_last(), F.col("_mtime").asc_nulls_last(),
                                               F.col("file"), F.col("_rid"))
    return thin.withColumn("_n", F.row_number().over(w)).filter(F.col("_n") > 1).select("_rid")


def deduplicate(valid, spark=None, files: list | None = None):
    """One row per image_id (see :func:`losers`); returns (unique rows, number of duplicates dropped)."""
    from pyspark.sql import functions as F

    if "_rid" not in valid.columns:
        valid = valid.withColumn("_rid", F.monotonically_increasing_id())
    drop = losers(valid, files)
    n = drop.count()
    if n == 0:
        return valid, 0
    if n <= BROADCAST_LOSERS:  # the usual case: a few duplicates, sent to every task (no shuffle of features)
        return valid.join(F.broadcast(drop), "_rid", "left_anti"), n
    spark = spark or valid.sparkSession
    return valid.join(drop, "_rid", "left_anti").coalesce(target_partitions(spark, n)), n


def target_partitions(spark, rows: int, row_bytes: int = FEATURE_DIM * 4 + 256) -> int:
    """Partitions for ``rows`` contract rows: one per ``spark.sql.files.maxPartitionBytes`` (128 MB) of
    vectors, at least one per core (a shuffle would otherwise leave ``spark.sql.shuffle.partitions``)."""
    per = int(spark._jsparkSession.sessionState().conf().filesMaxPartitionBytes())
    return max(spark.sparkContext.defaultParallelism, -(-rows * row_bytes // max(per, 1)))


def read_stage(spark, cfg: JobConfig, say) -> Prepared:
    """Inputs (and featurized photos) -> unique valid rows, rejects, and counts that each come from their
    own count."""
    inputs, feat = None, None
    if cfg.inputs and fast_path(cfg):
        from cloud_pca.inputs import check_files, list_inputs

        say("reading and validating input files (with the Gram statistics, in one pass)")
        try:
            listed = list_inputs(spark, cfg.inputs)
        except InputError as exc:
            raise JobError(str(exc)) from None
        if not listed:
            raise JobError(f"no Parquet files under {', '.join(cfg.inputs)} (empty input prefix?)")
        from cloud_pca.incremental import read_set_aside
        from cloud_pca.trust import hold_back

        aside = read_set_aside(spark, cfg.output) if cfg.full else None
        files, held = hold_back(check_files(spark, listed), set_aside=aside)
        data = scan_stage(spark, cfg, files, where=", ".join(cfg.inputs), held=held)
        data.held = held
        return data
    if cfg.inputs:
        say("reading and validating input files")
        try:
            inputs = read_inputs(spark, cfg.inputs, skip_bad_files=cfg.skip_bad_files)
        except InputError as exc:
            raise JobError(str(exc)) from None
        if cfg.images and inputs.projected:
            raise JobError("refusing to mix projected --input vectors with raw photos (--images), which become "
                           f"raw {FEATURE_DIM}-d vectors")
    if cfg.images:
        from cloud_pca.featurize import featurize

        say(f"featurizing raw photos under {', '.join(cfg.images)}")
        feat = featurize(spark, cfg.images, model_path=cfg.model_path, batch_rows=cfg.batch_rows)
    return prepare_rows(spark, cfg, inputs, feat)


def prepare_rows(spark, cfg: JobConfig, inputs: Inputs | None, feat=None, counted=None) -> Prepared:
    """The rows of ``inputs`` and ``feat`` -> unique valid rows, rejects and counts, each from its own count.
    ``counted``: a DataFrame of image ids already counted (the incremental state): those rows are dropped and
    counted as ``already_counted``."""
    from pyspark.sql import functions as F

    frames, photo_rejects = [], 0
    if inputs is not None:
        frames.append(inputs.df)
    if feat is not None:
        photo_rejects = feat.counts["rejected"]
        frames.append(feat.vectors.withColumn("file", F.lit("featurized from " + ", ".join(cfg.images)))
                      .withColumn("reason", F.lit(None).cast("string")))
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other, allowMissingColumns=True)
    df = select_model(df, cfg.model_sha256).withColumn("_rid", F.monotonically_increasing_id()).cache()
    try:
        per_model = df.groupBy("model_sha256", F.col("reason").isNull().alias("ok")).agg(
            F.count(F.lit(1)).alias("count"), F.countDistinct("image_id").alias("ids")).collect()
        rows_in = sum(r["count"] for r in per_model) + photo_rejects
        if rows_in == 0 and counted is None:
            raise JobError(f"the input holds no rows ({len(inputs.files) if inputs else 0} file(s))")
        model_counts = {r["model_sha256"]: r["count"] for r in per_model if r["ok"] and r["model_sha256"]}
        pick_model(model_counts, cfg.model_sha256)
        valid = df.filter(F.col("reason").isNull())
        if sum(r["ids"] for r in per_model if r["ok"]) == sum(r["count"] for r in per_model if r["ok"]):
            unique, n_duplicates = valid, 0      # every valid id once: no window to run
        else:
            unique, n_duplicates = deduplicate(valid, spark, inputs.files if inputs is not None else None)
        unique = unique.drop("reason")
        n_counted = 0
        if counted is not None:
            # Ids of this batch that an earlier run counted: found by scanning only the counted ids (one
            # column) against this batch's ids, sent to every task; then left out of the batch.
            seen = counted.join(F.broadcast(unique.select("image_id")), "image_id", "left_semi").distinct()
            n_counted = seen.count()
            if n_counted:
                unique = unique.join(F.broadcast(seen), "image_id", "left_anti")
        n_unique = unique.count()
        rejects = df.filter(F.col("reason").isNotNull()).select("image_id", "source", "client_id", "file", "reason")
        if feat is not None:  # photos that could not be decoded
            rejects = rejects.unionByName(feat.rejects)
        n_rejected = rejects.count()
    except BaseException:
        df.unpersist()
        if feat is not None:
            feat.unpersist()
        raise
    counts = {"rows_in": int(rows_in), "projected": int(n_unique), "rejected": int(n_rejected),
              "duplicates": int(n_duplicates) + int(n_counted)}
    if counted is not None:
        counts["already_counted"] = int(n_counted)
    return Prepared(unique, rejects, counts, model_counts, inputs, feat, [df])


# ------------------------------------------------------------------------------------------- fit stage
def fit_stage(spark, cfg: JobConfig, data: Prepared, say, before: GramSums | None = None):
    """StandardScaler + PCA on the unique rows (plus the moments ``before`` of rows counted earlier); returns
    the model, the driver traffic of the fit and, for the gram solver, the statistics it was solved from."""
    say(f"fitting StandardScaler + PCA ({cfg.solver} solver) on {data.counts['projected']} vectors"
        + (f" + {before.n} counted before" if before is not None else ""))
    sums = None
    with driver_traffic(spark, "fruits-pca-fit") as traffic:
        if cfg.solver == "gram":
            if isinstance(data, Scanned):
                sums = data.sums                  # from the read stage's own pass
            elif data.counts["projected"]:
                sums = gram_sums(data.unique.select("features"))
            sums = before + sums if before is not None and sums is not None else (sums or before)
            replaced = getattr(getattr(data, "decision", None), "replaced", None)
            if replaced and sums is not None:   # counted rows a better-ranked copy replaces: out of the total
                from cloud_pca.pca import GramSums

                vectors = feature_reader(data.found)(replaced)
                if len(vectors) != len(replaced):
                    raise JobError(f"{len(replaced) - len(vectors)} counted row(s) a later copy replaces cannot be read "
                                   f"again (first: {replaced[0][0]}): rebuild the state with --full")
                sums = sums - GramSums.of(np.stack(list(vectors.values())))
            if sums is None:
                raise JobError("no rows to fit: the inputs hold no valid vector")
            model = FruitsPCAModel.from_moments(sums.moments(), k=cfg.k, variance=cfg.variance)
        else:
            model = fit_pca(data.unique.select("features"), k=cfg.k, variance=cfg.variance, solver=cfg.solver)
    log.info("fit: the driver received %d bytes of task results in %d jobs", traffic["bytes"], traffic["jobs"])
    return model, traffic.totals, sums


def influence_stage(spark, cfg: JobConfig, data, model: FruitsPCAModel, sums, say):
    """The anonymous identities whose rows pull a component of ``model`` out of all proportion to their number, set
    aside (:mod:`cloud_pca.influence`): their rows leave the batch's fitted rows, statistics and projections (rejects
    with the reason), and the model is fitted without them. Returns (model, statistics) and records what it found as
    ``data.influence``. Runs where the rows were read as files (the gram solver's path)."""
    from cloud_pca import influence
    from cloud_pca.pca import GramSums
    from cloud_pca.scan import owner_energies

    if not isinstance(data, Scanned) or sums is None or data.model_sha256 is None or not data.counts["projected"]:
        return model, sums
    say("weighing the anonymous identities' influence on the components")
    m = min(influence.COMPONENTS, model.n_components_)
    per = owner_energies(spark, data.found, data.model_sha256, model, data.excluded, m)
    paths = [f.path for f in data.found.files]
    cache: dict = {}

    def rows_of(owners: set) -> list[tuple[int, int, str]]:
        """(file index, row, owner) of the fitted rows of ``owners``."""
        if data.in_driver:
            t = data.unique
            return [(f, r, o) for f, r, o in zip(t.column("file").to_pylist(), t.column("row").to_pylist(),
                                                 t.column("owner").to_pylist()) if o in owners]
        from pyspark.sql import functions as F

        return [(r["file"], r["row"], r["owner"]) for r in data.unique.filter(F.col("owner").isin(sorted(owners)))
                .select("file", "row", "owner").collect()]

    def group_rows(owners: set) -> tuple[list, np.ndarray]:
        key = tuple(sorted(owners))
        if key not in cache:
            got = rows_of(owners)
            where = [(paths[f], r) for f, r, _ in got]
            vectors = feature_reader(data.found)(where)
            if len(vectors) != len(where):
                raise JobError(f"{len(where) - len(vectors)} row(s) of the identities weighed cannot be read again "
                               f"(first: {where[0][0]})")
            cache[key] = ([o for _, _, o in got], np.stack([vectors[w] for w in where]))
        return cache[key]

    found, without = influence.screen(model, sums, per, group_rows)
    data.influence = found.record
    if not found.owners:
        return model, sums
    who, x = group_rows(found.weighed)
    mine = np.isin(np.asarray(who, dtype=object), sorted(found.owners))
    set_aside_rows(spark, data, [(f, r) for f, r, o in rows_of(found.owners)], influence.REASON)
    if data.contributions is not None:
        data.contributions["influence_set_aside"] = found.record["set_aside"]
    data.sums = data.sums - GramSums.of(x[mine])
    say(f"set aside {len(found.owners)} anonymous identities pulling a component out of proportion to their rows "
        f"({sum(r['rows'] for r in found.record['set_aside'])} rows)")
    return FruitsPCAModel.from_moments(without.moments(), k=cfg.k, variance=cfg.variance, solver=cfg.solver), without


def set_aside_rows(spark, data, where: list[tuple[int, int]], reason: str) -> None:
    """Rows (file index, row) of a scanned batch left out after the trust stage: out of the fitted rows (``unique``,
    ``excluded``), into the rejects with ``reason``, counted per device in the contributions."""
    import pyarrow as pa

    rids = np.array(sorted((f << 32) | r for f, r in where), np.int64)
    data.excluded = np.union1d(data.excluded, rids)
    paths = [f.path for f in data.found.files]
    if data.in_driver:
        import pyarrow.compute as pc

        t = data.unique
        rid = (t.column("file").to_numpy().astype(np.int64) << 32) | t.column("row").to_numpy().astype(np.int64)
        gone = np.isin(rid, rids)
        data.unique = t.filter(pa.array(~gone))
        thin = data.found.thin
        trid = (thin.column("file").to_numpy().astype(np.int64) << 32) | thin.column("row").to_numpy().astype(np.int64)
        aside = thin.filter(pa.array(np.isin(trid, rids) & pc.is_null(thin.column("reason")).to_numpy(
            zero_copy_only=False)))
        owners = aside.column("owner").to_pylist()
        data.rejects = pa.concat_tables([data.rejects, pa.table({
            "image_id": aside.column("image_id"), "source": aside.column("source"),
            "client_id": aside.column("client_id"),
            "file": pa.array([paths[i] for i in aside.column("file").to_pylist()], pa.string()),
            "reason": pa.array([reason] * aside.num_rows, pa.string())})])
    else:
        from pyspark.sql import functions as F

        drop = F.broadcast(spark.createDataFrame([(int(r),) for r in rids], "_rid long"))
        data.unique = (data.unique.withColumn("_rid", _rid("file", "row")).join(drop, "_rid", "left_anti")
                       .drop("_rid"))
        files = F.broadcast(spark.createDataFrame(list(enumerate(paths)), "file int, path string"))
        aside = (data.found.thin.filter(F.col("reason").isNull()).withColumn("_rid", _rid("file", "row"))
                 .join(drop, "_rid").join(files, "file"))
        owners = [r["owner"] for r in aside.select("owner").collect()]
        data.rejects = data.rejects.unionByName(aside.select("image_id", "source", "client_id",
                                                             F.col("path").alias("file"), F.lit(reason).alias("reason")))
    data.counts["projected"] -= len(rids)
    data.counts["rejected"] += len(rids)
    c = data.contributions or {}
    c["influence"] = c.get("influence", 0) + len(rids)
    for d in c.get("by_device", []):
        d["set_aside"] += owners.count(d["device"])


# ---------------------------------------------------------------------------------------- write stage
def prepare_output(spark, run_uri: str, *, overwrite: bool) -> None:
    """Refuse an existing run folder unless ``overwrite``; then remove its marker first, then the rest."""
    if not path_exists(spark, run_uri):
        return
    if not overwrite:
        raise JobError(f"{run_uri} already exists: pass --overwrite to replace that run, or choose another --run-id")
    delete_path(spark, f"{run_uri}/{MARKER}")     # first: a run killed from here on never looks complete
    delete_path(spark, run_uri, recursive=True)


def explained_variance(model: FruitsPCAModel, solver: str) -> dict:
    cum = np.cumsum(model.spectrum_)
    return {"k": model.n_components_, "why": model.choice_, "solver": solver, "n_rows": model.n_samples_,
            "model_id": model.model_id_,
            "explained_variance_ratio": [float(v) for v in model.spectrum_],
            "cumulative": [float(v) for v in cum]}


def write_outputs(spark, cfg: JobConfig, run_uri: str, data: Prepared, model: FruitsPCAModel, say) -> dict:
    """Projections, model, rejects, explained variance and plots; returns the explained-variance record.

    One thread, in order. The outputs used to be written by three threads at once (model, scree plot, scatter
    plots), each importing a package for the first time (pyspark.ml, matplotlib, pandas): Python's per-module
    import locks deadlocked them now and then, and the run hung with no Spark job (seen in a fresh clone's tests
    and possible on EMR). The model is now written without Spark jobs (:func:`cloud_pca.pca.pipeline_files`), so
    what the threads overlapped is a few file writes and the plots (``bench incremental`` measured the write
    stage before and after)."""
    from pyspark.sql import functions as F

    say("projecting and writing")
    in_driver = isinstance(data, Scanned) and data.in_driver
    explained = explained_variance(model, cfg.solver)
    if isinstance(data, Scanned):
        projected = data.projected(spark, cfg, model)   # a second read of the files (Python tasks or the driver)
    else:
        unique = data.unique
        label = F.col(cfg.label_col) if cfg.label_col in unique.columns else F.lit(None).cast("string")
        source = F.col("source") if "source" in unique.columns else F.lit(None).cast("string")
        projected = model.project(unique.select("image_id", label.alias("label"), "client_id",
                                                source.alias("source"), "features"),
                                  model_col="pca_model", residual_col="residual")
    write_rows(spark, f"{run_uri}/projections", projected)
    model.save(spark, f"{run_uri}/model")
    write_rows(spark, f"{run_uri}/rejects", data.rejects)
    write_explained(spark, run_uri, explained)
    if cfg.plots:
        from cloud_pca import plots

        say("plotting")
        if isinstance(data, Scanned) and not in_driver:
            projected = spark.read.parquet(f"{run_uri}/projections")   # the plots' sample: what was written
        sample = (projected.slice(0, PLOT_SAMPLE).to_pandas() if in_driver
                  else projected.limit(PLOT_SAMPLE).toPandas())   # the first partitions only
        for name, png in {"scree.png": plots.scree(explained), **plots.scatters(sample)}.items():
            write_bytes(spark, f"{run_uri}/plots/{name}", png)
    return explained


def write_explained(spark, run_uri: str, explained: dict, *, csv: bool = True) -> None:
    """``explained_variance.json`` (and ``.csv``): per component and cumulative, with k and why."""
    write_bytes(spark, f"{run_uri}/explained_variance.json", json.dumps(explained, indent=1).encode())
    if csv:
        text = "component,explained_variance_ratio,cumulative\n" + "".join(
            f"{i + 1},{r:.8g},{c:.8g}\n" for i, (r, c) in enumerate(zip(explained["explained_variance_ratio"],
                                                                          explained["cumulative"])))
        write_bytes(spark, f"{run_uri}/explained_variance.csv", text.encode())


def incremental_stage(spark, cfg: JobConfig, say):
    """The objects not counted yet under the inputs, their rows without ids counted before, and the state."""
    from cloud_pca import incremental

    # The inputs are listed in a thread while the state is read (S3 answers both at once). The device areas are
    # listed by day: the last few days now (what a daily refresh needs), the days since an older state's last
    # listing once it is read (listing every object ever uploaded made each refresh grow with the history).
    ready_to_list(spark, cfg.inputs)
    today = cfg.today
    recent = incremental.listing_days(today, None)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fruits-listing") as pool:
        listing = pool.submit(incremental.timed_listing, spark, cfg.inputs, recent)
        state = incremental.load_state(spark, cfg.output, cfg.model_sha256)
        say("reading the objects not counted yet" + (f" (state {state.generation}: {state.sums.n} rows, "
                                                      f"{state.total} objects)" if state and state.sums else ""))
        new, listed, list_s, days = incremental.plan_batch(spark, cfg.inputs, state, skip_bad_files=cfg.skip_bad_files,
                                                           today=today, listing=(*listing.result(), recent))
    if listed == 0:
        raise JobError(f"no Parquet files under {', '.join(cfg.inputs)} (empty input prefix?)")
    from cloud_pca.trust import hold_back

    kept, held = hold_back(new, state.objects if state else None, set_aside=incremental.read_set_aside(spark, cfg.output))
    good = [f for f in kept if f.reason is None]
    if good:
        small = sum(f.size for f in good) <= cfg.driver_batch_bytes
        data = (local_scan_stage if small else scan_stage)(
            spark, cfg, kept, where=", ".join(cfg.inputs), counted=state.counted if state else None, held=held)
        others = [m for m in data.model_counts if state is not None and m != state.model_sha256]
        if others:   # never add another model's vectors to these moments
            data.release()
            raise JobError(f"vectors of model {others[0][:12]}... while the state holds model "
                           f"{state.model_sha256[:12]}...: give --model-sha256 {state.model_sha256} to count only "
                           f"its vectors (the others become rejects), or --model-sha256 {others[0]} for a state "
                           f"of its own")
    else:
        data = Prepared(None, None, {"rows_in": 0, "projected": 0, "rejected": 0, "duplicates": 0,
                                     "already_counted": 0}, {}, None)
    if (state is None or state.sums is None) and not data.counts["projected"]:
        data.release()
        bad = [f for f in new if f.reason]
        raise JobError("no rows to fit: the inputs hold no valid vector" +
                       (f" ({len(bad)} bad file(s) skipped; first: {bad[0].path}: {bad[0].reason})" if bad else ""))
    if state is None:
        sha = next(iter(data.model_counts))
        state = incremental.State(incremental.state_root(cfg.output) + f"/model={sha}", sha)
    data.held = held
    return state, incremental.Batch(state, new, listed, round(list_s, 3), days), data


def run(spark, cfg: JobConfig, *, progress=None) -> JobResult:
    """Run the job; ``progress(stage)`` is called at each stage (for progress lines and logs). A run that makes no
    progress for ``cfg.stall_s`` seconds fails with :class:`cloud_pca.watchdog.Stalled`."""
    from cloud_pca.watchdog import Watchdog, beat

    cfg.check()
    if cfg.as_of is None:   # one day for the whole run: the days it lists and the day its state says it listed
        cfg = dataclasses.replace(cfg, as_of=upload_day())

    def say(stage: str) -> None:
        beat(stage)
        (progress or log.info)(stage)

    with Watchdog(stall_s=cfg.stall_s), settings_held():
        return _run(spark, cfg, say)


def _run(spark, cfg: JobConfig, say) -> JobResult:
    from cloud_pca import incremental

    run_id = cfg.run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    run_uri = cfg.output.rstrip("/") + f"/run={run_id}"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    reads_before = incremental.STATE_READS["objects"]
    with driver_traffic(spark, "fruits-pca-run") as traffic:
        prepare_output(spark, run_uri, overwrite=cfg.overwrite)
        state = batch = None
        if cfg.incremental:
            state, batch, data = incremental_stage(spark, cfg, say)
        else:
            data = read_stage(spark, cfg, say)
        shown = data
        try:
            timings["read_validate_s"] = time.perf_counter() - t0
            timings["trust_s"] = getattr(data, "trust_s", 0.0)   # (part of read_validate_s)
            t = time.perf_counter()
            model, fit_traffic, sums = fit_stage(spark, cfg, data, say, before=state.sums if state else None)
            timings["fit_s"] = time.perf_counter() - t
            t = time.perf_counter()
            model, sums = influence_stage(spark, cfg, data, model, sums, say)
            timings["influence_s"] = time.perf_counter() - t
            t = time.perf_counter()
            if cfg.reproject:
                say("re-projecting every counted row with the new model")
                aside = {**incremental.read_set_aside(spark, cfg.output),
                         **{r["device"]: r for r in (getattr(data, "influence", None) or {}).get("set_aside", [])}}
                files = [f for f in incremental.counted_files(spark, state) + batch.good if f.owner not in aside]
                where = f"{state.uri} (counted) and the new objects"
                # As the batch: read by the driver when all of it is one task's worth (a small dataset: the local
                # stack's refresh starts no Spark job for it), else by Spark tasks.
                key = state.sig_key if state.generation else getattr(data, "sig_key", None)
                shown = (local_scan_stage(spark, cfg, files, where=where, sig_key=key)
                         if sum(f.size for f in files) <= cfg.driver_batch_bytes else
                         scan_stage(spark, cfg, files, where=where, gram=False, sig_key=key))
            explained = write_outputs(spark, cfg, run_uri, shown, model, say) if shown.unique is not None \
                else write_model_only(spark, cfg, run_uri, model, say)
            timings["write_s"] = time.perf_counter() - t
            c = data.counts
            summary = {
                "run_id": run_id, "run_uri": run_uri, "inputs": cfg.inputs, "images": cfg.images,
                "files": batch.listed if batch else (len(data.inputs.files) if data.inputs else 0),
                "bad_files": [{"file": f.path, "reason": f.reason} for f in batch.new if f.reason] if batch else
                [{"file": f, "reason": r} for f, r in (data.inputs.bad if data.inputs else [])],
                "photos": data.featurized.counts if data.featurized else None,
                **c, "reconciles": c["rows_in"] == c["projected"] + c["rejected"] + c["duplicates"],
                # (a refresh with no new rows: the state's model, which publish and the report name)
                "model_sha256": cfg.model_sha256 or next(iter(data.model_counts), None) or (
                    state.model_sha256 if state is not None else None),
                "rows_per_model": data.model_counts, "pca_model": model.model_id_,
                "k": model.n_components_, "k_reason": model.choice_, "solver": cfg.solver,
                "cumulative_explained_variance": float(np.sum(model.explained_variance_ratio_)),
                "projections_rows": shown.counts["projected"],
                "passes": feature_passes(data, shown),
                "contributions": getattr(data, "contributions", None),
                "influence": getattr(data, "influence", None),
            }
            refreshes = None
            if cfg.incremental or cfg.full:
                before = state
                if cfg.full:   # a fresh count: the generation number goes on, nothing before it is kept
                    sha = summary["model_sha256"]
                    uri = incremental.state_root(cfg.output) + f"/model={sha}"
                    try:
                        before = incremental.load_state(spark, cfg.output, sha)
                    except incremental.StateError as exc:   # what --full is for: the history starts afresh
                        log.warning("the state a --full run replaces cannot be used (%s)", one_line(exc))
                        before = None
                    # after every generation there is (sealed or not): never below one a rolled-back pointer hid
                    state = incremental.State(uri, sha, number=max(incremental.highest_number(spark, uri),
                                                                   before.number if before else 0))
                refreshes = incremental.history(spark, before or state, model, rows_added=c["projected"],
                                                run_id=run_id)   # the history goes on, also after a full refit
                generation = incremental.next_generation(state)
                summary["incremental"] = {
                    "mode": "incremental" if cfg.incremental else "full", "state": state.uri,
                    "generation": generation, "previous_generation": state.generation,
                    "objects_counted_before": state.total,
                    "objects_read": len(batch.good) if batch else len(data.inputs.good),
                    "bytes_read": batch.bytes_read if batch else data.inputs.bytes,
                    "objects_listed": batch.listed if batch else None, "list_s": batch.list_s if batch else None,
                    "days_listed": ([batch.days[0], batch.days[-1]] if batch.days else "all") if batch else "all",
                    "rows_added": c["projected"], "already_counted": c.get("already_counted", 0),
                    "rows_total": sums.n,
                    "projections": "all rows" if (cfg.reproject or cfg.full) else "new rows only",
                    "state_objects_read": incremental.STATE_READS["objects"] - reads_before,
                    "history": refreshes[0]}
            # The incremental state is committed after the run's own files, before its marker: the new total is
            # in force from there on, and a run killed before leaves no marker naming a generation not in force.
            decision = getattr(data, "decision", None)
            found_aside = (getattr(data, "influence", None) or {}).get("set_aside", [])
            if found_aside and (cfg.incremental or cfg.full):
                incremental.record_set_aside(spark, cfg.output, found_aside, run_id=run_id)
            commit = (lambda: incremental.commit(
                spark, state, generation, sums, batch.new if batch else data.inputs.files, data.unique, run_id=run_id,
                scanned=data.found.files if isinstance(data, Scanned) else None,
                dropped=decision.replaced if decision is not None else None,
                held=getattr(data, "held", None), refreshes=refreshes, listed_day=cfg.today,
                sig_key=state.sig_key if (state.generation and not cfg.full) else getattr(data, "sig_key", None))) \
                if (cfg.incremental or cfg.full) else None
            finish_run(spark, cfg, run_uri, run_id, model, summary, timings, t0, traffic, fit_traffic, shown,
                       before_marker=commit)
        finally:
            data.release()
            if shown is not data:
                shown.release()
    return JobResult(run_uri, summary, explained, model, timings)


def write_model_only(spark, cfg: JobConfig, run_uri: str, model: FruitsPCAModel, say) -> dict:
    """An incremental run with no new rows: the same model again, explained variance, no projections."""
    say("no new rows: writing the model")
    model.save(spark, f"{run_uri}/model")
    explained = explained_variance(model, cfg.solver)
    write_explained(spark, run_uri, explained, csv=False)
    return explained


def finish_run(spark, cfg, run_uri, run_id, model, summary, timings, t0, traffic, fit_traffic, shown, *,
               before_marker=None) -> None:
    """summary.json, ``before_marker()`` (the incremental state's commit), then the marker that says the run is
    complete (with what publish checks against)."""
    timings["total_s"] = time.perf_counter() - t0
    run_traffic = traffic.read()
    summary.update({
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        # Task-result bytes the driver received (Spark's resultSize metric): the fit's and the run's.
        "driver_result_bytes": {"fit": fit_traffic["bytes"], "run": run_traffic["bytes"]},
        # The Spark jobs and stages the run started up to here (not the state's commit after summary.json).
        "spark": {"jobs": run_traffic["jobs"], "stages": run_traffic["stages"]},
        "partitions": (shown.partitions if isinstance(shown, Scanned) else
                       shown.unique.rdd.getNumPartitions() if shown.unique is not None else 0),
        "finished_at": datetime.now(timezone.utc).isoformat()})
    write_bytes(spark, f"{run_uri}/summary.json", json.dumps(summary, indent=1).encode())
    if before_marker is not None:
        before_marker()
    outputs = ["model/", "explained_variance.json", "summary.json"]
    if shown.unique is not None:
        outputs += ["projections/", "rejects/", "explained_variance.csv"] + (["plots/"] if cfg.plots else [])
    write_bytes(spark, f"{run_uri}/{MARKER}", json.dumps({
        "run_id": run_id, "complete": True, "pca_model": model.model_id_, "k": model.n_components_,
        "rows": summary["projections_rows"], "model_sha256": summary["model_sha256"],
        "projections": summary.get("incremental", {}).get("projections", "all rows"), "outputs": outputs}).encode())


def describe(exc: BaseException) -> str:
    """A Spark failure as one line for an ``Error:`` message (the Java exception's head, not py4j's wrapper)."""
    java = getattr(exc, "java_exception", None)
    return one_line(java.toString() if java is not None else exc)[:500]

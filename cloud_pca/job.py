"""The PCA job: read every vectors file under a prefix, validate, deduplicate, fit, project, write.

Output, under ``OUTPUT/run=<run_id>/``::

    projections/            Parquet: image_id, label, client_id, pca (k floats)
    model/                  Spark ML PipelineModel (StandardScalerModel + PCAModel), loadable again
    explained_variance.json / .csv   per component and cumulative, with the chosen k and why
    rejects/                Parquet: the rows refused, with file and reason
    plots/scree.png, plots/pca_2d.png, plots/pca_3d.png
    summary.json            rows in / projected / rejected / duplicates, timings
    _SUCCESS.json           written last: a run without it is not complete
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from contract import FEATURE_DIM, VECTOR_COLUMNS
from contract.vectors import PROJECTION_COLUMN
from cloud_pca.pca import fit_pca
from cloud_pca.spark import driver_traffic, list_files, write_bytes

log = logging.getLogger(__name__)


class JobError(ValueError):
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
    model_path: str | None = None  # the .tflite for --images (local, s3://, s3a://); default: the committed one
    batch_rows: int = 32           # photos per Arrow batch when featurizing


@dataclass
class JobResult:
    run_uri: str
    summary: dict
    explained: dict
    model: object = None
    timings: dict = field(default_factory=dict)


def spark_schema():
    from pyspark.sql.types import (ArrayType, FloatType, IntegerType, StringType, StructField, StructType,
                                   TimestampType)

    return StructType([
        StructField("image_id", StringType()), StructField("label", StringType()),
        StructField("source", StringType()), StructField("width", IntegerType()),
        StructField("height", IntegerType()), StructField("features", ArrayType(FloatType())),
        StructField("model_sha256", StringType()), StructField("model_name", StringType()),
        StructField("client_id", StringType()), StructField("vectorized_at", TimestampType()),
    ])


def check_files(spark, files: list[str]) -> tuple[list[str], list[tuple[str, str]], set[str]]:
    """Split files into those whose Parquet schema follows the contract and (file, reason) for the rest;
    also returns which good files hold projected vectors (a ``projection_id`` column)."""
    good, bad, projected = [], [], set()
    expected = {f.name: f.dataType for f in spark_schema().fields}
    for path in files:
        try:
            schema = spark.read.parquet(path).schema
        except Exception as exc:  # Spark's AnalysisException / Py4JJavaError for a non-Parquet file
            msg = str(exc).strip().splitlines()[0][:200]
            bad.append((path, f"not a readable Parquet file ({msg})"))
            continue
        actual = {f.name: f.dataType for f in schema.fields}
        missing = [c for c in VECTOR_COLUMNS if c not in actual]
        if missing:
            bad.append((path, f"does not match the contract: missing column(s) {', '.join(missing)}"))
            continue
        wrong = [c for c in ("image_id", "features", "model_sha256") if actual[c] != expected[c]]
        if wrong:
            bad.append((path, "does not match the contract: " + ", ".join(
                f"{c} is {actual[c].simpleString()}, expected {expected[c].simpleString()}" for c in wrong)))
            continue
        good.append(path)
        if PROJECTION_COLUMN in actual:
            projected.add(path)
    return good, bad, projected


def read_inputs(spark, inputs: list[str], *, skip_bad_files: bool) -> tuple[object, list[tuple[str, str]], int]:
    """All contract rows under ``inputs`` with their file name; returns (df, bad files, n files)."""
    from pyspark.sql import functions as F

    files = []
    for uri in inputs:
        files.extend(p for p, _ in list_files(spark, uri))
    if not files:
        raise JobError(f"no Parquet files under {', '.join(inputs)} (empty input prefix?)")
    good, bad, projected = check_files(spark, files)
    if bad and not skip_bad_files:
        path, reason = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise JobError(f"{path}: {reason}{more}; fix or remove it, or pass --skip-bad-files")
    if not good:
        raise JobError(f"none of the {len(files)} file(s) under {', '.join(inputs)} follows the contract")
    # Projected vectors (k values and a projection_id column) and raw 1280-d vectors are different spaces.
    if projected and len(projected) < len(good):
        raw = sorted(set(good) - projected)
        raise JobError(f"refusing to mix projected vectors ({sorted(projected)[0]}, ...) with raw "
                       f"{FEATURE_DIM}-d vectors ({raw[0]}, ...) in one fit: give one kind of --input")
    schema = spark_schema()
    if projected:
        from pyspark.sql.types import StringType, StructField

        schema = schema.add(StructField(PROJECTION_COLUMN, StringType()))
    df = spark.read.schema(schema).parquet(*good).withColumn("file", F.input_file_name())
    if projected:
        ids = [r[0] for r in df.select(PROJECTION_COLUMN).distinct().limit(3).collect()]
        if len(ids) > 1:
            raise JobError(f"refusing to mix vectors of different projections ({', '.join(map(str, ids))}) in one fit")
    return df, bad, len(files)


def classify(df, model_sha256: str | None, dim: int | None = None):
    """Add a ``reason`` column: null for a valid row, else why it is rejected. ``dim``: the vector length
    (default 1280; projected vectors: the length of their first row)."""
    from pyspark.sql import functions as F

    if dim is None:
        dim = FEATURE_DIM
        if PROJECTION_COLUMN in df.columns:
            first = df.select(F.size("features").alias("n")).filter("n > 0").first()
            dim = int(first["n"]) if first else FEATURE_DIM

    feats = F.col("features")
    bad_value = F.exists(feats, lambda x: F.isnan(x) | (F.abs(x) == F.lit(float("inf"))))
    reason = (F.when(F.col("image_id").isNull() | ~F.col("image_id").rlike("^[0-9a-f]{64}$"),
                     F.lit("image_id is not a sha256"))
              .when(feats.isNull(), F.lit("null features"))
              .when(F.size(feats) != dim,
                    F.concat(F.lit("features has "), F.size(feats).cast("string"),
                             F.lit(f" values, expected {dim}")))
              .when(F.exists(feats, lambda x: x.isNull()), F.lit("null value in features"))
              .when(bad_value, F.lit("NaN or infinite value in features")))
    if model_sha256:
        reason = reason.when(F.col("model_sha256") != F.lit(model_sha256),
                             F.concat(F.lit("model fingerprint "), F.col("model_sha256"),
                                      F.lit(" not selected (--model-sha256)")))
    return df.withColumn("reason", reason)


def deduplicate(df):
    """One row per image_id: the earliest vectorization of each image (then the source name)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("image_id").orderBy(F.col("vectorized_at").asc_nulls_last(), F.col("source"))
    return df.withColumn("_n", F.row_number().over(w)).filter(F.col("_n") == 1).drop("_n")


def target_partitions(spark, rows: int, row_bytes: int = FEATURE_DIM * 4 + 256) -> int:
    """Partitions for ``rows`` contract rows: one per ``spark.sql.files.maxPartitionBytes`` (128 MB) of
    vectors, at least one per core.

    The dedup shuffle leaves ``spark.sql.shuffle.partitions`` partitions (200 by default; AQE does not
    coalesce a cached plan): without this, 1,000 rows become 200 tasks and 200 output files.
    """
    per = int(spark._jsparkSession.sessionState().conf().filesMaxPartitionBytes())
    return max(spark.sparkContext.defaultParallelism, -(-rows * row_bytes // max(per, 1)))


def pick_model(df, model_sha256: str | None) -> dict[str, int]:
    """Rows per model fingerprint among valid rows; refuse a mix unless one is selected."""
    counts = {r["model_sha256"]: r["count"] for r in df.groupBy("model_sha256").count().collect()}
    if model_sha256 is None and len(counts) > 1:
        listing = ", ".join(f"{sha[:12]}...: {n} rows" for sha, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        raise JobError(f"vectors from {len(counts)} different models ({listing}); they cannot share one PCA. "
                       f"Select one with --model-sha256")
    return counts


def run(spark, cfg: JobConfig, *, progress=None) -> JobResult:
    """Run the job; ``progress(stage)`` is called at each stage (for bars and logs)."""
    with driver_traffic(spark, "fruits-pca-run") as traffic:
        return _run(spark, cfg, progress=progress, traffic=traffic)


def _run(spark, cfg: JobConfig, *, progress=None, traffic=None) -> JobResult:
    from pyspark.sql import functions as F

    say = progress or (lambda stage: log.info(stage))
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    run_id = cfg.run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    run_uri = cfg.output.rstrip("/") + f"/run={run_id}"

    say("reading and validating input files")
    frames, bad_files, n_files = [], [], 0
    if cfg.inputs:
        df, bad_files, n_files = read_inputs(spark, cfg.inputs, skip_bad_files=cfg.skip_bad_files)
        if cfg.images and PROJECTION_COLUMN in df.columns:
            raise JobError("refusing to mix projected --input vectors with raw photos (--images), which become "
                           f"raw {FEATURE_DIM}-d vectors")
        frames.append(df)
    feat = None
    if cfg.images:
        from cloud_pca.featurize import featurize

        say(f"featurizing raw photos under {', '.join(cfg.images)}")
        t = time.perf_counter()
        if not cfg.model_path:
            raise JobError("--images needs --model (the .tflite the devices use)")
        feat = featurize(spark, cfg.images, model_path=cfg.model_path,
                         batch_rows=cfg.batch_rows)
        timings["featurize_s"] = time.perf_counter() - t
        frames.append(feat.vectors.withColumn("file", F.lit("featurized from " + ", ".join(cfg.images))))
    if not frames:
        raise JobError("nothing to fit: give --input and/or --images")
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other)
    df = classify(df, cfg.model_sha256).cache()
    rows_in = df.count() + (feat.counts["rejected"] if feat else 0)
    if rows_in == 0:
        raise JobError(f"the input holds no rows ({n_files} file(s))")
    valid = df.filter(F.col("reason").isNull())
    model_counts = pick_model(valid, cfg.model_sha256)
    unique = deduplicate(valid).drop("reason").coalesce(target_partitions(spark, rows_in)).cache()
    n_unique = unique.count()
    rejects = df.filter(F.col("reason").isNotNull()).select("image_id", "source", "client_id", "file", "reason")
    if feat is not None:  # photos that could not be decoded
        rejects = rejects.unionByName(feat.rejects)
    n_rejected = rejects.count()
    n_duplicates = rows_in - n_rejected - n_unique
    timings["read_validate_s"] = time.perf_counter() - t0

    say(f"fitting StandardScaler + PCA ({cfg.solver} solver) on {n_unique} vectors")
    t = time.perf_counter()
    with driver_traffic(spark, "fruits-pca-fit") as fit_traffic:
        model = fit_pca(unique, k=cfg.k, variance=cfg.variance, solver=cfg.solver)
    timings["fit_s"] = time.perf_counter() - t
    log.info("fit: the driver received %d bytes of task results in %d jobs", fit_traffic["bytes"], fit_traffic["jobs"])

    say("projecting and writing")
    t = time.perf_counter()
    label = F.col(cfg.label_col) if cfg.label_col in unique.columns else F.lit(None).cast("string")
    projected = model.project(unique.select("image_id", label.alias("label"), "client_id", "features"))
    projected.write.mode("overwrite").parquet(f"{run_uri}/projections")
    model.save(f"{run_uri}/model")
    rejects.write.mode("overwrite").parquet(f"{run_uri}/rejects")
    timings["transform_write_s"] = time.perf_counter() - t

    cum = np.cumsum(model.explained_variance_ratio_)
    explained = {
        "k": model.k, "why": model.k_reason, "solver": cfg.solver, "n_rows": int(n_unique),
        "explained_variance_ratio": [float(v) for v in model.explained_variance_ratio_],
        "cumulative": [float(v) for v in cum],
    }
    write_bytes(spark, f"{run_uri}/explained_variance.json", json.dumps(explained, indent=1).encode())
    csv = "component,explained_variance_ratio,cumulative\n" + "".join(
        f"{i + 1},{r:.8g},{c:.8g}\n" for i, (r, c) in enumerate(zip(model.explained_variance_ratio_, cum)))
    write_bytes(spark, f"{run_uri}/explained_variance.csv", csv.encode())

    if cfg.plots:
        say("plotting")
        t = time.perf_counter()
        from cloud_pca import plots

        sample = projected.limit(5000).toPandas()
        for name, png in plots.all_plots(explained, sample).items():
            write_bytes(spark, f"{run_uri}/plots/{name}", png)
        timings["plots_s"] = time.perf_counter() - t

    timings["total_s"] = time.perf_counter() - t0
    summary = {
        "run_id": run_id, "run_uri": run_uri, "inputs": cfg.inputs, "files": n_files,
        "bad_files": [{"file": f, "reason": r} for f, r in bad_files],
        "photos": feat.counts if feat else None,
        "rows_in": int(rows_in), "projected": int(n_unique), "rejected": int(n_rejected),
        "duplicates": int(n_duplicates), "reconciles": rows_in == n_unique + n_rejected + n_duplicates,
        "model_sha256": cfg.model_sha256 or next(iter(model_counts), None), "rows_per_model": model_counts,
        "k": model.k, "k_reason": model.k_reason, "solver": cfg.solver,
        "cumulative_explained_variance": float(cum[model.k - 1]),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        # Task-result bytes the driver received (Spark's resultSize metric): the fit's and the whole run's.
        "driver_result_bytes": {"fit": fit_traffic["bytes"], "run": traffic.read()["bytes"] if traffic else None,
                                "partitions": unique.rdd.getNumPartitions()},
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    write_bytes(spark, f"{run_uri}/summary.json", json.dumps(summary, indent=1).encode())
    # Last: the marker that says the run is complete.
    write_bytes(spark, f"{run_uri}/_SUCCESS.json",
                json.dumps({"run_id": run_id, "complete": True, "outputs": [
                    "projections/", "model/", "rejects/", "explained_variance.json", "explained_variance.csv",
                    "summary.json"] + (["plots/"] if cfg.plots else [])}).encode())
    df.unpersist()
    unique.unpersist()
    if feat is not None:
        feat.unpersist()
    return JobResult(run_uri, summary, explained, model, timings)


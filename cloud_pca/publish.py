"""Publish a PCA run for the devices: the projection artifact (mean, scale, first k components, model
fingerprint) and a reference index (per-label centroids in that space) under ``ROOT/models/``, plus the pointer ``projection-latest-<model_sha256>.json`` a device reads. See
:mod:`contract.projection`.

A run is published only if its files agree: the marker, the summary, the saved model and the projections
must name the same model, k and number of rows (a run killed half-way and re-run would otherwise mix two
models' files).
"""
from __future__ import annotations

import json
from collections import Counter

from contract.errors import FruitsError, one_line
from contract.layout import index_key, latest_projection_key, projection_key
from contract.projection import THRESHOLD_MARGIN, THRESHOLD_QUANTILE, Projection, ReferenceIndex
from contract.vectors import safe_inverse
from cloud_pca.pca import FruitsPCAModel, PCAInputError
from cloud_pca.spark import read_bytes, write_bytes


class PublishError(FruitsError, ValueError):
    """A run that cannot be published (incomplete, inconsistent, unlabelled); says which file disagrees."""


def _json(spark, uri: str, what: str) -> dict:
    try:
        return json.loads(read_bytes(spark, uri))
    except Exception as exc:  # missing file (Py4JJavaError) or not JSON
        raise PublishError(f"{uri}: {what} is missing or unreadable ({one_line(exc)[:200]}); the run is not "
                           f"complete") from None


def check_run(spark, run_uri: str) -> tuple[dict, FruitsPCAModel]:
    """The run's summary and model, after checking that marker, summary, model and projections agree."""
    run_uri = run_uri.rstrip("/")
    marker = _json(spark, f"{run_uri}/_SUCCESS.json", "the completion marker _SUCCESS.json")
    summary = _json(spark, f"{run_uri}/summary.json", "summary.json")
    try:
        model = FruitsPCAModel.load(spark, f"{run_uri}/model")
    except PCAInputError as exc:
        raise PublishError(str(exc)) from None
    expected = {"run_id": summary.get("run_id"), "pca_model": summary.get("pca_model"), "k": summary.get("k"),
                "rows": summary.get("projections_rows", summary.get("projected")),
                "model_sha256": summary.get("model_sha256")}
    for key, value in expected.items():
        if marker.get(key) != value:
            raise PublishError(f"{run_uri}: _SUCCESS.json says {key}={marker.get(key)!r} but summary.json says "
                               f"{value!r}: the folder mixes two runs; re-run it with --overwrite")
    if model.model_id_ != marker["pca_model"] or model.n_components_ != marker["k"]:
        raise PublishError(f"{run_uri}/model is model {model.model_id_} with k={model.n_components_}, the run's "
                           f"marker names {marker['pca_model']} with k={marker['k']}: re-run it with --overwrite")
    small = _small_projections(spark, run_uri)
    if small is not None:
        found = dict(Counter(small.column("pca_model").to_pylist())) if small.num_rows else {}
    else:
        proj = spark.read.parquet(f"{run_uri}/projections")
        found = {r["pca_model"]: r["count"] for r in proj.groupBy("pca_model").count().collect()}
    if set(found) != {marker["pca_model"]} or found[marker["pca_model"]] != marker["rows"]:
        raise PublishError(f"{run_uri}/projections holds {found} rows per model, the marker names "
                           f"{marker['rows']} rows of {marker['pca_model']}: re-run it with --overwrite")
    if not summary.get("model_sha256"):
        raise PublishError(f"{run_uri}/summary.json names no model fingerprint")
    if marker.get("projections") == "new rows only":
        raise PublishError(f"{run_uri} is an incremental run whose projections hold only its new rows; the index "
                           f"needs every row: run it with --reproject (or a --full run) to publish")
    return summary, model


def _small_projections(spark, run_uri: str):
    """The run's projections as a pyarrow Table when they are one task's worth (read by the driver: a small run is
    published without a Spark job, so the local stack's refresh never starts Spark's JVM), else None."""
    from cloud_pca.scan import small_table

    return small_table(spark, f"{run_uri.rstrip('/')}/projections", ["pca_model", "label", "pca", "residual"])


def exact_quantile(values, q: float) -> float:
    """The smallest value with at least ``q`` of the values at or below it: what Spark's ``percentile_approx`` gives
    while its summary is exact (up to 1 / (2 x 1e-4) = 5,000 values; beyond, Spark's answer is within 1e-4 of the rank)."""
    import numpy as np

    return float(np.quantile(np.asarray(values, np.float64), q, method="inverted_cdf"))


def _index_in_driver(table, run_uri: str, k: int, projection_id: str) -> ReferenceIndex:
    """:func:`centroids` computed by the driver with numpy from a small run's projections (the same numbers)."""
    import numpy as np

    pca = table.column("pca").to_pylist()
    labels_col = table.column("label").to_pylist() if "label" in table.column_names else [None] * table.num_rows
    labelled = [i for i, lab in enumerate(labels_col) if lab is not None]
    if not labelled:
        raise PublishError(f"{run_uri}/projections has no labelled rows: nothing to identify with")
    labels = sorted({labels_col[i] for i in labelled})
    at = {lab: j for j, lab in enumerate(labels)}
    p = np.array([pca[i][:k] for i in labelled], np.float64)
    which = np.array([at[labels_col[i]] for i in labelled])
    counts = np.bincount(which, minlength=len(labels)).astype(np.int64)
    c = np.zeros((len(labels), k))
    np.add.at(c, which, p)
    c /= counts[:, None]
    d = np.sqrt(((p - c[which]) ** 2).sum(axis=1))
    thresholds = np.array([THRESHOLD_MARGIN * exact_quantile(d[which == j], THRESHOLD_QUANTILE)
                           for j in range(len(labels))])
    if "residual" in table.column_names:
        beyond = np.array([sum(float(v) * float(v) for v in row[k:]) for row in pca])
        resid = np.asarray(table.column("residual").to_numpy(zero_copy_only=False), np.float64) + beyond
        resid = resid[~np.isnan(resid)]   # nulls, which Spark's percentile leaves out
        residual = THRESHOLD_MARGIN * exact_quantile(resid, THRESHOLD_QUANTILE) if len(resid) else float("nan")
    else:   # a run from before residuals: never "unknown" by residual
        residual = float("inf")
    return ReferenceIndex(labels, c, counts, projection_id, thresholds, residual)


def projection_from_run(spark, run_uri: str, k: int | None = None) -> Projection:
    summary, model = check_run(spark, run_uri)
    kk = k or model.n_components_
    if not 1 <= kk <= model.n_components_:
        raise PublishError(f"k={kk} must be between 1 and the run's k={model.n_components_}")
    return Projection(model.mean_, safe_inverse(model.scale_), model.components_[:kk].T, summary["model_sha256"],
                      "", summary.get("run_id", ""))


def centroids(spark, run_uri: str, k: int, projection_id: str) -> ReferenceIndex:
    """Per-label centroids of the first k projected components and per-label distance thresholds
    (``THRESHOLD_MARGIN`` x the 99th percentile of the label's own rows' distances to its centroid), both
    aggregated in Spark: the driver receives a few numbers per label. A small run's (one task's worth of
    projections) are computed by the driver (:func:`_index_in_driver`), with no Spark job."""
    import numpy as np
    from pyspark.sql import functions as F

    small = _small_projections(spark, run_uri)
    if small is not None:
        return _index_in_driver(small, run_uri, k, projection_id)
    proj = (spark.read.parquet(f"{run_uri.rstrip('/')}/projections").filter(F.col("label").isNotNull())
            .select("label", F.slice("pca", 1, k).alias("p")))
    rows = (proj.select("label", F.posexplode("p").alias("pos", "v"))
            .groupBy("label", "pos").agg(F.avg("v").alias("v"), F.count(F.lit(1)).alias("n")).collect())
    if not rows:
        raise PublishError(f"{run_uri}/projections has no labelled rows: nothing to identify with")
    labels = sorted({r["label"] for r in rows})
    at = {lab: i for i, lab in enumerate(labels)}
    c = np.zeros((len(labels), k))
    counts = np.zeros(len(labels), dtype=np.int64)
    for r in rows:
        c[at[r["label"]], r["pos"]] = r["v"]
        counts[at[r["label"]]] = r["n"]
    cents = spark.createDataFrame([(lab, c[i].tolist()) for i, lab in enumerate(labels)],
                                  "label string, centroid array<double>")
    sq = F.zip_with("p", "centroid", lambda a, b: (a - b) * (a - b))
    dist = proj.join(F.broadcast(cents), "label").select(
        "label", F.sqrt(F.aggregate(sq, F.lit(0.0), lambda acc, x: acc + x)).alias("d"))
    q = {r["label"]: float(r["q"]) for r in
         dist.groupBy("label").agg(F.percentile_approx("d", THRESHOLD_QUANTILE).alias("q")).collect()}
    thresholds = np.array([THRESHOLD_MARGIN * q[lab] for lab in labels])
    return ReferenceIndex(labels, c, counts, projection_id, thresholds, residual_threshold(spark, run_uri, k))


def residual_threshold(spark, run_uri: str, k: int) -> float:
    """``THRESHOLD_MARGIN`` x the 99th percentile of the run's rows' residuals off the first k components (the
    run's residual plus the squares of the components beyond k)."""
    from pyspark.sql import functions as F

    proj = spark.read.parquet(f"{run_uri.rstrip('/')}/projections")
    if "residual" not in proj.columns:   # a run from before residuals: never "unknown" by residual
        return float("inf")
    beyond = F.aggregate(F.transform(F.slice("pca", k + 1, 1 << 20), lambda v: v * v), F.lit(0.0),
                         lambda acc, x: acc + x)
    q = proj.select((F.col("residual") + beyond).alias("r")).agg(
        F.percentile_approx("r", THRESHOLD_QUANTILE).alias("q")).first()["q"]
    return THRESHOLD_MARGIN * float(q)


def publish(spark, run_uri: str, root_uri: str, k: int | None = None) -> tuple[Projection, ReferenceIndex, list[str]]:
    """Write the projection, the index and the pointer under ``root_uri/models/``; returns them and the URIs."""
    projection = projection_from_run(spark, run_uri, k)
    index = centroids(spark, run_uri, projection.k, projection.projection_id)
    root = root_uri.rstrip("/")
    pid = projection.projection_id
    written = []
    for key, data in ((projection_key("", pid), projection.to_bytes()), (index_key("", pid), index.to_bytes()),
                      (latest_projection_key("", projection.model_sha256),
                       json.dumps({"projection_id": pid, "k": projection.k, "run": projection.run}).encode())):
        write_bytes(spark, f"{root}/{key}", data)   # the pointer last: devices see a complete pair
        written.append(f"{root}/{key}")
    return projection, index, written

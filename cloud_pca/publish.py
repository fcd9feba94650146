"""Publish a PCA run for the devices: the projection artifact (mean, scale, first k components, model
fingerprint) and the reference index a device identifies with (prototypes per label and calibrated thresholds,
:mod:`cloud_pca.identifier`) under ``ROOT/models/``, then the pointer ``projection-latest-<model_sha256>.json`` that
names both. See :mod:`contract.projection`.

A run is published only if its files agree: the marker, the summary, the saved model and the projections
must name the same model, k and number of rows (a run killed half-way and re-run would otherwise mix two
models' files).
"""
from __future__ import annotations

import json
from collections import Counter

from contract.errors import FruitsError, one_line
from contract.layout import catalog_key, index_key, latest_projection_key, projection_key
from contract.projection import Projection, ReferenceIndex, pointer_bytes
from contract.vectors import safe_inverse
from cloud_pca.pca import FruitsPCAModel, PCAInputError
from cloud_pca.storage import small_table
from cloud_pca.storage import read_bytes, write_bytes
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
    small = small_table(spark, f"{run_uri}/projections", ["pca_model"])
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


def _small_projections(spark, run_uri: str, limit: int | None = None):
    """The run's projections as a pyarrow Table when they are one task's worth (``limit`` bytes; read by the driver: a
    small run is published without a Spark job, so the local stack's refresh never starts Spark's JVM), else None."""
    return small_table(spark, f"{run_uri.rstrip('/')}/projections", ["pca_model", "image_id", "label", "source", "pca"],
                       limit=limit)


def projection_from_run(spark, run_uri: str, k: int | None = None) -> Projection:
    summary, model = check_run(spark, run_uri)
    kk = k or model.n_components_
    if not 1 <= kk <= model.n_components_:
        raise PublishError(f"k={kk} must be between 1 and the run's k={model.n_components_}")
    return Projection(model.mean_, safe_inverse(model.scale_), model.components_[:kk].T, summary["model_sha256"],
                      "", summary.get("run_id", ""))


def index_from_run(spark, run_uri: str, k: int, projection_id: str, *, driver_read_bytes: int | None = None
                   ) -> ReferenceIndex:
    """What devices identify with (:mod:`cloud_pca.identifier`), fitted on the run's labelled rows' first k
    components: by the driver from a small run's projections (one task's worth), else in Spark."""
    import numpy as np
    from pyspark.sql import functions as F

    from cloud_pca import identifier

    small = _small_projections(spark, run_uri, driver_read_bytes)
    if small is not None:
        labels = small.column("label").to_pylist() if "label" in small.column_names else []
        rows = [i for i, lab in enumerate(labels) if lab is not None]
        if not rows:
            raise PublishError(f"{run_uri}/projections has no labelled rows: nothing to identify with")
        pca, ids = small.column("pca").to_pylist(), small.column("image_id").to_pylist()
        sources = small.column("source").to_pylist() if "source" in small.column_names else [None] * small.num_rows
        return identifier.fit_arrays(np.array([pca[i][:k] for i in rows], np.float64), [labels[i] for i in rows],
                                     [sources[i] for i in rows], [ids[i] for i in rows], projection_id)
    proj = spark.read.parquet(f"{run_uri.rstrip('/')}/projections")
    if "source" not in proj.columns:
        proj = proj.withColumn("source", F.lit(None).cast("string"))
    try:
        return identifier.fit(spark, proj, k, projection_id)
    except ValueError as exc:
        raise PublishError(f"{run_uri}/projections: {exc}") from None


def publish(spark, run_uri: str, root_uri: str, k: int | None = None, *, driver_read_bytes: int | None = None
            ) -> tuple[Projection, ReferenceIndex, list[str]]:
    """Write the projection, the index, the operator's catalog (``ROOT/models/catalog.json``, checked: a broken one
    stops the publish) and last the pointer naming the three under ``root_uri/models/``; returns the projection, the
    index and the URIs written. Projections up to ``driver_read_bytes`` (default one task's worth) are read by the
    driver, larger ones in Spark."""
    from cloud_pca.catalog import CatalogToolError, published_catalog

    try:
        catalog = published_catalog(spark, root_uri)   # before the work: a broken catalog is said at once
    except CatalogToolError as exc:
        raise PublishError(str(exc)) from None
    projection = projection_from_run(spark, run_uri, k)
    index = index_from_run(spark, run_uri, projection.k, projection.projection_id, driver_read_bytes=driver_read_bytes)
    root = root_uri.rstrip("/")
    files = [(projection_key("", projection.projection_id), projection.to_bytes()),
             (index_key("", index.index_id), index.to_bytes())]
    if catalog is not None:
        files.append((catalog_key("", catalog.catalog_id), catalog.to_bytes()))
    files.append((latest_projection_key("", projection.model_sha256),
                  pointer_bytes(projection, index, catalog.catalog_id if catalog else None)))
    written = []
    for key, data in files:
        write_bytes(spark, f"{root}/{key}", data)   # the pointer last: devices see a complete set
        written.append(f"{root}/{key}")
    return projection, index, written

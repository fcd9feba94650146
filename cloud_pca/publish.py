"""Publish a PCA run for the devices: the projection artifact (mean, scale, first k components, model
fingerprint) and a reference index (per-label centroids in that space) under ``ROOT/models/``, plus the
pointer ``projection-latest-<model_sha256>.json`` a device reads. See :mod:`contract.projection`.
"""
from __future__ import annotations

import json

import numpy as np

from contract.projection import Projection, ReferenceIndex, index_key, latest_projection_key, projection_key
from cloud_pca.job import JobError
from cloud_pca.spark import read_bytes, write_bytes


def projection_from_run(spark, run_uri: str, k: int | None = None) -> Projection:
    from cloud_pca.pca import load_pipeline

    run_uri = run_uri.rstrip("/")
    try:
        summary = json.loads(read_bytes(spark, f"{run_uri}/summary.json"))
        read_bytes(spark, f"{run_uri}/_SUCCESS.json")
    except Exception as exc:
        raise JobError(f"{run_uri}: not a complete PCA run (no summary.json / _SUCCESS.json): "
                       f"{str(exc).strip().splitlines()[0][:200]}") from None
    pipeline = load_pipeline(f"{run_uri}/model")
    scaler, pca = pipeline.stages
    mean, std = scaler.mean.toArray(), scaler.std.toArray()
    comps = pca.pc.toArray()
    kk = k or comps.shape[1]
    if not 1 <= kk <= comps.shape[1]:
        raise JobError(f"k={kk} must be between 1 and the run's k={comps.shape[1]}")
    scale = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)
    if summary.get("model_sha256") is None:
        raise JobError(f"{run_uri}/summary.json names no model fingerprint")
    return Projection(mean, scale, comps[:, :kk], summary["model_sha256"], "", summary.get("run_id", ""))


def centroids(spark, run_uri: str, k: int, projection_id: str) -> ReferenceIndex:
    """Per-label means of the first k projected components, aggregated in Spark."""
    from pyspark.sql import functions as F

    proj = spark.read.parquet(f"{run_uri.rstrip('/')}/projections").filter(F.col("label").isNotNull())
    rows = (proj.select("label", F.posexplode(F.slice("pca", 1, k)).alias("pos", "v"))
            .groupBy("label", "pos").agg(F.avg("v").alias("v"), F.count(F.lit(1)).alias("n")).collect())
    if not rows:
        raise JobError(f"{run_uri}/projections has no labelled rows: nothing to identify with")
    labels = sorted({r["label"] for r in rows})
    at = {lab: i for i, lab in enumerate(labels)}
    c = np.zeros((len(labels), k))
    counts = np.zeros(len(labels), dtype=np.int64)
    for r in rows:
        c[at[r["label"]], r["pos"]] = r["v"]
        counts[at[r["label"]]] = r["n"]
    return ReferenceIndex(labels, c, counts, projection_id)


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

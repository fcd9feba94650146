"""Synthetic contract vectors for the tests: low-rank data (PCA components are identifiable on it, unlike
on i.i.d. noise), as rows, Arrow tables and files in a bucket."""
from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contract import vector_schema

SHA = "a" * 64


def low_rank(n=400, d=1280, rank=5, seed=0):
    """Data with `rank` strong directions of distinct variance, plus small noise, mapped into [0.25, 5.75] as a
    model's pooled ReLU6 features are (one scale and offset for every column: standardized, it is the same data)."""
    rng = np.random.RandomState(seed)
    basis = np.linalg.qr(rng.randn(d, rank))[0]
    scores = rng.randn(n, rank) * np.array([10.0, 7.0, 5.0, 3.0, 2.0])[:rank]
    x = scores @ basis.T + 0.01 * rng.randn(n, d) + rng.rand(d)
    return ((x - x.min()) * (5.5 / max(float(np.ptp(x)), 1e-12)) + 0.25).astype(np.float32)


def by_id(ids, d=1280) -> np.ndarray:
    """One vector per image id, the same wherever and however often the id appears (a photo's vector is what the
    model makes of it): a fixed low-rank population (5 directions of distinct variance, noise, an offset) in [0, 6]."""
    basis = np.linalg.qr(np.random.RandomState(0).randn(d, 5))[0]
    offset = np.random.RandomState(12345).rand(d)
    rows = []
    for i in ids:
        rng = np.random.RandomState(int(i) % (2**32 - 1))
        scores = np.clip(rng.randn(5), -4, 4) * np.array([10.0, 7.0, 5.0, 3.0, 2.0])
        rows.append(scores @ basis.T + 0.3 * rng.randn(d) + offset)   # noise in every direction, as real photos have
    return np.clip(np.asarray(rows).reshape(len(rows), d) * 0.9 + 2.0, 0.0, 6.0).astype(np.float32)


def contract_rows(n, *, seed=0, model=SHA, dim=1280, start=0, x=None):
    """Column lists of n contract rows (image ids start..start+n-1, 3 labels); each id's vector is its own
    (:func:`by_id`: the same in every file), unless ``x`` is given. ``seed`` only moves which ids the data is about
    when ``x`` is made for projected (``dim`` < 1280) vectors."""
    if x is None:
        x = by_id(range(start, start + n)) if dim == 1280 else np.random.RandomState(seed).rand(n, dim).astype(np.float32)
    ids = [f"{i + start:064x}" for i in range(n)]
    return {"image_id": ids, "label": [f"class{i % 3}" for i in range(n)], "source": [f"p{i}.jpg" for i in range(n)],
            "width": [100] * n, "height": [100] * n, "features": [list(map(float, r)) for r in x],
            "model_sha256": [model] * n, "model_name": ["m"] * n, "client_id": ["phone"] * n,
            "vectorized_at": [datetime(2026, 1, 1, tzinfo=timezone.utc)] * n}


def contract_table(n: int, *, seed: int = 0, start: int = 0, **types):
    """n contract rows as an Arrow table, with any column given another Arrow type."""
    cols = contract_rows(n, seed=seed, start=start)
    cols["label"] = [f"c{i % 3}" for i in range(n)]
    cols["height"] = [80] * n
    fields = [pa.field(f.name, types.get(f.name, f.type)) for f in vector_schema()]
    if "label" in types and pa.types.is_integer(types["label"]):
        cols["label"] = [i % 3 for i in range(n)]
    return pa.table(cols, schema=pa.schema(fields))


def layout_key(root: str, rows: dict, client: str = "phone", day: str | None = None) -> str:
    """Where a device would put these rows: the layout's content-named key, filed under ``day`` (default today;
    the job refuses other shapes). The rows are made to name that device, as a device's own rows do (the job
    refuses rows naming another)."""
    from contract.layout import vectors_object_key

    rows["client_id"] = [client] * len(rows["image_id"])
    return vectors_object_key(root, rows["model_sha256"][0], client, rows["image_id"], day=day)


def put_rows(s3, bucket, key, rows):
    put_table(s3, bucket, key, pa.table(rows, schema=vector_schema()))


def put_table(s3, bucket, key, table, store_schema: bool = True) -> int:
    """Write a table to ``s3://bucket/key``; returns its size in bytes."""
    buf = io.BytesIO()
    pq.write_table(table, buf, store_schema=store_schema)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    return len(buf.getvalue())


def population_center() -> np.ndarray:
    """The mean of :func:`by_id`'s population: what a model card's ``feature_center`` is for a real model."""
    return by_id(range(2000)).astype(np.float64).mean(axis=0)


def population_radius() -> float:
    """The population's largest distance from its center (what a card's ``feature_radius`` is for a real model)."""
    x = by_id(range(2000)).astype(np.float64)
    return float(np.linalg.norm(x - x.mean(axis=0), axis=1).max())


def put_card(s3, bucket, root: str, model: str = SHA) -> str:
    """The test model's card under ``ROOT/models/`` (as ``emr launch`` uploads the real ones): its feature center is
    what the job's near-copy signatures are taken around, its radius what the plausibility screen allows."""
    import json

    key = f"{root}/models/test-model.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({
        "sha256": model, "name": "test-model", "feature_center": population_center().tolist(),
        "feature_radius": population_radius()}).encode())
    return key

"""On the device: fetch a published projection, project vectors to k values, and identify a fruit.

Everything here uses numpy and pyarrow only (no Spark, no TensorFlow), and reads the bucket with
``GetObject`` under ``models/`` only, which is all the uploader's credentials allow.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contract import ContractError, read_vectors
from contract.layout import check_projection_id, index_key, latest_projection_key, projection_key
from contract.projection import Projection, ReferenceIndex
from contract.vectors import PROJECTION_COLUMN, features_array, features_matrix, file_metadata, parquet_options
from edge_client.vectorize import UserError


def _get(client, bucket: str, key: str, what: str, endpoint_url: str | None) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    from edge_client.upload import explain

    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404"):
            raise UserError(f"no {what} at s3://{bucket}/{key}") from None
        raise UserError(explain(exc, bucket, endpoint_url)) from None
    except BotoCoreError as exc:
        raise UserError(explain(exc, bucket, endpoint_url)) from None


def fetch_projection(client, bucket: str, root: str, model_sha256: str, *,
                     endpoint_url: str | None = None) -> Projection:
    """The projection published for ``model_sha256`` (via its pointer), checked against that fingerprint."""
    import json

    pointer = _get(client, bucket, latest_projection_key(root, model_sha256),
                   f"projection published for model {model_sha256[:12]}... (run `fruits-cloud publish`)",
                   endpoint_url)
    try:
        pid = json.loads(pointer)["projection_id"]
        check_projection_id(pid)
    except (ValueError, KeyError, TypeError, ContractError):
        raise UserError(f"s3://{bucket}/{latest_projection_key(root, model_sha256)}: not a projection pointer "
                        f"(a JSON object with a 16-hex projection_id); publish again") from None
    key = projection_key(root, pid)
    try:
        projection = Projection.from_bytes(_get(client, bucket, key, "projection", endpoint_url), f"s3://{bucket}/{key}")
        projection.check_model(model_sha256, f"s3://{bucket}/{key}")
    except ContractError as exc:
        raise UserError(str(exc)) from None
    return projection


def fetch_index(client, bucket: str, root: str, projection_id: str, *,
                endpoint_url: str | None = None) -> ReferenceIndex:
    key = index_key(root, projection_id)
    try:
        return ReferenceIndex.from_bytes(_get(client, bucket, key, "reference index", endpoint_url),
                                         f"s3://{bucket}/{key}")
    except ContractError as exc:
        raise UserError(str(exc)) from None


def load_local(path: str | os.PathLike, kind: str):
    data = Path(path).read_bytes()
    try:
        return (Projection if kind == "projection" else ReferenceIndex).from_bytes(data, str(path))
    except ContractError as exc:
        raise UserError(str(exc)) from None


def project_file(vectors: str | os.PathLike, projection: Projection, out: str | os.PathLike) -> int:
    """A vectors file -> its projected form (k values per row, ``projection_id`` column); returns rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = read_vectors(vectors)
    shas = set(table.column("model_sha256").to_pylist())
    for sha in shas:
        try:
            projection.check_model(sha, f"projection {projection.projection_id}")
        except ContractError as exc:
            raise UserError(str(exc)) from None
    x = features_matrix(table.column("features"), projection.mean.shape[0])
    y = projection.project(x)
    idx = table.schema.get_field_index("features")
    table = table.set_column(idx, "features", features_array(y))
    table = table.append_column(PROJECTION_COLUMN, pa.array([projection.projection_id] * table.num_rows, pa.string()))
    meta = file_metadata(projection.model_sha256, projection.model_name, projection.projection_id)
    pq.write_table(table.replace_schema_metadata(meta), out, **parquet_options())
    read_vectors(out)  # what we wrote follows the contract's projected form
    return table.num_rows


def identify(photo: str | os.PathLike, model, projection: Projection, index: ReferenceIndex,
             top: int = 3) -> list[tuple[str, float, float]]:
    """The most likely labels of one photo: (label, score, distance), best first; "unknown" first when the
    photo is beyond every label's distance threshold (see :meth:`ReferenceIndex.rank`)."""
    from featurizer.preprocess import ImageRejected, preprocess

    try:
        projection.check_model(model.sha256, f"projection {projection.projection_id}")
    except ContractError as exc:
        raise UserError(str(exc)) from None
    try:
        index.check_projection(projection)
    except ContractError as exc:
        raise UserError(str(exc)) from None
    try:
        data = Path(photo).read_bytes()
    except OSError as exc:
        raise UserError(f"{photo}: cannot read ({exc.strerror or exc})") from None
    try:
        x, _, _ = preprocess(data, model.input_size)
    except ImageRejected as exc:
        raise UserError(f"{photo}: {exc}") from None
    features = model.features(x)
    if not np.isfinite(features).all():
        raise UserError(f"{photo}: the model gave NaN or infinite features; check the .tflite against its card")
    return index.rank(projection.project(features), top=top, residual=float(projection.residual(features)))

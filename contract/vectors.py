"""Parquet schema of the vectors, S3 key layout, model fingerprint and model card.

One row per image::

    image_id       string     sha256 of the photo's bytes (hex), the deduplication key
    label          string     fruit label (parent folder or --label), nullable
    source         string     path relative to the input root
    width, height  int32      size of the decoded photo (after EXIF orientation)
    features       list<float32>, exactly FEATURE_DIM values
    model_sha256   string     sha256 of the .tflite that produced the vector (the model fingerprint)
    model_name     string     the model card's name
    client_id      string     who vectorized it (a device id, or "server:<host>" for the cloud fallback)
    vectorized_at  timestamp[us, UTC]

Files are Parquet with zstd compression; files the edge client writes carry the fingerprint in their
key-value metadata too (Spark-written files, from the server-side fallback, carry it in the column only).

S3 key layout under a dataset root ``s3://BUCKET/PREFIX``::

    PREFIX/vectors/model=<model_sha256>/client=<client_id>/part-<content>.parquet
    PREFIX/raw/client=<client_id>/label=<label>/<image_id><ext>   (photos of clients that cannot vectorize;
                                                 label URL-quoted, "_" when unknown)
    PREFIX/models/...                                (published models and projection artifacts)
    PREFIX/pca/run=<run_id>/...                      (outputs of the PCA job)

``<content>`` is a hash of the fingerprint and the sorted image ids of the rows the object holds, so
the same rows uploaded twice land on the same key and never create a second object.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote, unquote

CONTRACT_VERSION = "1"
FEATURE_DIM = 1280
META_CONTRACT = b"fruits.contract_version"
META_MODEL_SHA256 = b"fruits.model_sha256"
META_MODEL_NAME = b"fruits.model_name"

VECTOR_COLUMNS = (
    "image_id", "label", "source", "width", "height", "features",
    "model_sha256", "model_name", "client_id", "vectorized_at",
)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NO_LABEL = "_"
PROJECTION_COLUMN = "projection_id"   # present only in projected vectors (contract.projection)
_CLIENT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ContractError(ValueError):
    """Data that does not follow the contract; the message says file, row and column where known."""


def vector_schema():
    """The Arrow schema of a vectors file (pyarrow is imported lazily: Spark-only code need not)."""
    import pyarrow as pa

    return pa.schema([
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("source", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("features", pa.list_(pa.float32())),
        pa.field("model_sha256", pa.string()),
        pa.field("model_name", pa.string()),
        pa.field("client_id", pa.string()),
        pa.field("vectorized_at", pa.timestamp("us", tz="UTC")),
    ])


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, hex.  The fingerprint of a .tflite and the ``image_id`` of a photo."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


# --------------------------------------------------------------------------------------------- S3 layout
def _join(prefix: str, *parts: str) -> str:
    prefix = prefix.strip("/")
    return "/".join([p for p in (prefix, *parts) if p])


def vectors_prefix(root_prefix: str, model_sha256: str | None = None) -> str:
    """Key prefix of the vectors (of one model when ``model_sha256`` is given), ending with '/'."""
    if model_sha256 is None:
        return _join(root_prefix, "vectors") + "/"
    _check_sha(model_sha256, "model_sha256")
    return _join(root_prefix, "vectors", f"model={model_sha256}") + "/"


def raw_prefix(root_prefix: str) -> str:
    return _join(root_prefix, "raw") + "/"


def raw_object_key(root_prefix: str, client_id: str, label: str | None, image_id: str, ext: str) -> str:
    """The key of one raw photo: ``raw/client=<id>/label=<url-quoted label or _>/<image_id><ext>``.

    The label is in the key (not only in object metadata) because Spark's ``binaryFile`` reader sees paths,
    not metadata; :func:`label_from_path` reads it back.

    >>> raw_object_key("team", "phone-1", "Apple Red", "ab" * 32, ".jpg")[:46]
    'team/raw/client=phone-1/label=Apple%20Red/abab'
    """
    if not _CLIENT_RE.match(client_id):
        raise ContractError(f"client_id={client_id!r} must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    _check_sha(image_id, "image_id")
    folder = "label=" + (quote(label, safe="") if label else NO_LABEL)
    return _join(root_prefix, "raw", f"client={client_id}", folder, image_id + ext.lower())


def label_from_path(path: str) -> str | None:
    """The label of a photo from its path: a ``label=`` folder (raw upload layout) or else the parent folder
    (Fruits-360 layout: ``Training/<label>/<file>``); ``None`` when there is no parent folder."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    for part in reversed(parts[:-1]):
        if part.startswith("label="):
            value = part[len("label="):]
            return None if value == NO_LABEL else unquote(value)
    return parts[-2] if len(parts) >= 2 else None


def content_key(model_sha256: str, image_ids: Iterable[str]) -> str:
    """Name of an object by what it holds: the fingerprint and the sorted image ids."""
    h = hashlib.sha256(model_sha256.encode())
    for image_id in sorted(image_ids):
        h.update(b"\n" + image_id.encode())
    return h.hexdigest()[:32]


def vectors_object_key(root_prefix: str, model_sha256: str, client_id: str,
                       image_ids: Iterable[str]) -> str:
    """The full key of one vectors object.

    >>> vectors_object_key("team", "a" * 64, "phone-1", ["x"])[:40]
    'team/vectors/model=aaaaaaaaaaaaaaaaaaaaaaa'
    """
    if not _CLIENT_RE.match(client_id):
        raise ContractError(f"client_id={client_id!r} must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return (vectors_prefix(root_prefix, model_sha256)
            + f"client={client_id}/part-{content_key(model_sha256, image_ids)}.parquet")


def _check_sha(value: str, name: str) -> None:
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise ContractError(f"{name}={value!r} is not a sha256 (64 lowercase hex characters)")


# ---------------------------------------------------------------------------------------- the model card
@dataclass
class ModelCard:
    """What the edge and the cloud must agree on to produce the same vectors."""

    name: str
    input_size: int
    output_dim: int
    precision: str
    sha256: str
    preprocessing: dict[str, Any]
    weights: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


def card_path_for(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def load_model_card(model_path: str | os.PathLike, *, verify: bool = True) -> ModelCard:
    """Read the card next to ``model_path`` and (by default) check that the file is the one it describes."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ContractError(f"model file {model_path} does not exist")
    with open(model_path, "rb") as f:
        magic = f.read(8)
    # A TFLite flatbuffer carries the identifier "TFL3" at bytes 4..8.
    if magic[4:8] != b"TFL3":
        raise ContractError(f"{model_path} is not a .tflite model (no TFL3 identifier)")
    card_path = card_path_for(model_path)
    if not card_path.is_file():
        raise ContractError(f"model card {card_path} is missing: every .tflite needs its card next to it")
    try:
        data = json.loads(card_path.read_text())
        card = ModelCard(**data)
    except (ValueError, TypeError) as exc:
        raise ContractError(f"model card {card_path} is not valid: {exc}") from None
    if verify:
        actual = file_sha256(model_path)
        if actual != card.sha256:
            raise ContractError(
                f"model card {card_path} does not match {model_path.name}: card sha256 {card.sha256[:12]}..., "
                f"file sha256 {actual[:12]}... (re-export the model or restore its card)")
    if card.output_dim != FEATURE_DIM:
        raise ContractError(f"model card {card_path}: output_dim={card.output_dim}, the contract needs {FEATURE_DIM}")
    return card


# ---------------------------------------------------------------------------------- writing and reading
def parquet_options() -> dict:
    """How every vectors file is written: zstd, and dictionary encoding only where values repeat.

    The features column is left PLAIN: dictionary-encoding 1280 floats per row is wasted work (pyarrow tries
    it by default); without it the writer is ~2x faster and the file ~18% smaller (3,087 vs 3,748 B/row on
    the demo's vectors).  BYTE_STREAM_SPLIT would be smaller still, but Spark 3.5's reader is not known to
    take it.
    """
    return {"compression": "zstd",
            "use_dictionary": ["label", "model_sha256", "model_name", "client_id", PROJECTION_COLUMN]}


def write_vectors(path_or_file, rows: dict[str, Sequence], *, model_sha256: str, model_name: str) -> int:
    """Write one vectors file from column lists; returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: rows[c] for c in VECTOR_COLUMNS}, schema=vector_schema())
    table = table.replace_schema_metadata(file_metadata(model_sha256, model_name))
    validate_table(table, origin=str(path_or_file))
    pq.write_table(table, path_or_file, **parquet_options())
    return table.num_rows


def features_array(x):
    """An (n, k) array as the contract's ``list<float32>`` column, in one block.

    ``pa.array`` over a list of numpy rows converts value by value (0.3 s per 1,000 rows of 1280); this
    builds the offsets and values directly (milliseconds).
    """
    import numpy as np
    import pyarrow as pa

    x = np.asarray(x, dtype=np.float32)
    n, k = (x.shape[0], x.shape[1]) if x.ndim == 2 else (0, 0)
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32) if k else np.zeros(n + 1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(x.ravel(), pa.float32()))


def file_metadata(model_sha256: str, model_name: str) -> dict[bytes, bytes]:
    return {META_CONTRACT: CONTRACT_VERSION.encode(), META_MODEL_SHA256: model_sha256.encode(),
            META_MODEL_NAME: model_name.encode()}


def validate_table(table, *, origin: str = "<table>", check_values: bool = True) -> None:
    """Raise :class:`ContractError` naming file, row and column at the first violation."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = vector_schema()
    names = table.schema.names
    missing = [c for c in VECTOR_COLUMNS if c not in names]
    if missing:
        raise ContractError(f"{origin}: missing column(s) {', '.join(missing)}")
    for f in schema:
        actual = table.schema.field(f.name).type
        if f.name == "features":
            ok = pa.types.is_list(actual) or pa.types.is_large_list(actual) or pa.types.is_fixed_size_list(actual)
            ok = ok and actual.value_type == pa.float32()
        elif pa.types.is_timestamp(f.type):
            ok = pa.types.is_timestamp(actual)
        else:
            ok = actual == f.type or (pa.types.is_integer(f.type) and pa.types.is_integer(actual))
        if not ok:
            raise ContractError(f"{origin}: column {f.name} has type {actual}, the contract needs {f.type}")
    if not check_values or table.num_rows == 0:
        return
    ids = table.column("image_id")
    if ids.null_count:
        row = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise ContractError(f"{origin}: row {row}, column image_id: null")
    bad = pc.invert(pc.match_substring_regex(ids, r"^[0-9a-f]{64}$"))
    if pc.any(bad).as_py():
        row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise ContractError(f"{origin}: row {row}, column image_id: {ids[row].as_py()!r} is not a sha256")
    feats = table.column("features")
    if feats.null_count:
        row = int(np.flatnonzero(feats.is_null().to_numpy(zero_copy_only=False))[0])
        raise ContractError(f"{origin}: row {row}, column features: null")
    lengths = pc.list_value_length(feats).to_numpy(zero_copy_only=False)
    # Projected vectors (a projection_id column) hold k values, the same k on every row.
    dim = int(lengths[0]) if PROJECTION_COLUMN in names and lengths[0] > 0 else FEATURE_DIM
    wrong = np.flatnonzero(lengths != dim)
    if wrong.size:
        row = int(wrong[0])
        raise ContractError(f"{origin}: row {row}, column features: {int(lengths[row])} values, "
                            f"the contract needs {dim}")
    values = pc.list_flatten(feats).to_numpy(zero_copy_only=False)
    finite = np.isfinite(values)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0]) // dim
        raise ContractError(f"{origin}: row {row}, column features: NaN or infinite value")
    shas = table.column("model_sha256")
    bad = pc.invert(pc.fill_null(pc.match_substring_regex(shas, r"^[0-9a-f]{64}$"), False))
    if pc.any(bad).as_py():
        row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise ContractError(f"{origin}: row {row}, column model_sha256: {shas[row].as_py()!r} is not a sha256")


def read_vectors(path_or_file, *, validate: bool = True):
    """Read a vectors file (path or file-like) as a pyarrow Table, validated against the contract."""
    import pyarrow.parquet as pq

    origin = str(getattr(path_or_file, "name", path_or_file))
    try:
        table = pq.read_table(path_or_file)
    except Exception as exc:  # pyarrow raises several types for "not Parquet"
        raise ContractError(f"{origin}: not a readable Parquet file ({exc})") from None
    if validate:
        validate_table(table, origin=origin)
    return table


def cosine(a, b) -> float:
    """Cosine similarity of two vectors (1.0 for two zero vectors)."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


"""The vectors: Parquet schema, what a file may hold (one definition for the edge and the job), reading and
writing.

One row per image::

    image_id       string     sha256 of the photo's bytes (hex), the deduplication key
    label          string     fruit label (parent folder or --label), nullable
    source         string     path relative to the input root
    width, height  int32      size of the decoded photo (after EXIF orientation)
    features       list<float32>, exactly FEATURE_DIM values (k values in the projected form)
    model_sha256   string     sha256 of the .tflite that produced the vector (the model fingerprint)
    model_name     string     the model card's name
    client_id      string     who vectorized it (a device id, or "server:spark" for the cloud fallback)
    vectorized_at  timestamp[us, UTC]
    projection_id  string     only in projected vectors (contract.projection)

Files are zstd Parquet; files the edge client writes carry the fingerprint in their key-value metadata too.

What a file may hold is decided here, once, for both sides (:func:`conform_schema` for the file,
:func:`conform_table` for its rows): the edge refuses to upload a file the job would refuse, and the job reads
every file the edge accepts. Lossless casts are applied (large or dictionary strings, any integer width
that fits int32, integer labels as text, large or fixed-size float32 lists, any timestamp unit or zone,
all-null columns); anything else is refused with the column, its type and what the contract needs.
Timestamps are kept to the microsecond (``vectorized_at`` is informational: finer digits are dropped).
"""
from __future__ import annotations

from typing import Sequence

from contract.card import FEATURE_DIM, OUTPUT_RANGE, RANGE_TOLERANCE, ContractError
from contract.layout import SHA256_RE

CONTRACT_VERSION = "1"
META_CONTRACT = b"fruits.contract_version"
META_MODEL_SHA256 = b"fruits.model_sha256"
META_MODEL_NAME = b"fruits.model_name"
META_PROJECTION_ID = b"fruits.projection_id"
PROJECTION_COLUMN = "projection_id"   # present only in projected vectors (contract.projection)
SHA256_PATTERN = SHA256_RE.pattern

VECTOR_COLUMNS = (
    "image_id", "label", "source", "width", "height", "features",
    "model_sha256", "model_name", "client_id", "vectorized_at",
)
_TEXT = ("image_id", "label", "source", "model_sha256", "model_name", "client_id", PROJECTION_COLUMN)
_INT32 = (-(2 ** 31), 2 ** 31 - 1)


def vector_schema(projected: bool = False):
    """The Arrow schema of a vectors file (pyarrow is imported lazily: Spark-only code need not)."""
    import pyarrow as pa

    fields = [
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
    ]
    if projected:
        fields.append(pa.field(PROJECTION_COLUMN, pa.string()))
    return pa.schema(fields)


# ------------------------------------------------------------------------------- what a file may hold
def _text_like(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _accepted(name: str, t) -> bool:
    import pyarrow as pa

    if pa.types.is_null(t):
        return name not in ("image_id", "features")
    if name == "label":
        return _text_like(t) or (pa.types.is_integer(t) and t != pa.uint64())
    if name in _TEXT:
        return _text_like(t)
    if name in ("width", "height"):
        return pa.types.is_integer(t) and t != pa.uint64()
    if name == "features":
        return ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
                and t.value_type == pa.float32())
    if name == "vectorized_at":
        return pa.types.is_timestamp(t)
    return True


_NEEDS = {
    "features": "a list of float32 (list, large_list or fixed_size_list; float64 would be a lossy cast)",
    "width": "an integer type (any width up to int64; values must fit int32)",
    "height": "an integer type (any width up to int64; values must fit int32)",
    "vectorized_at": "a timestamp (any unit and time zone)",
    "label": "text (or integers, kept as text)",
}


def is_projected(schema) -> bool:
    return PROJECTION_COLUMN in schema.names


def conform_schema(schema, origin: str = "<file>") -> None:
    """Refuse a file whose columns the contract cannot take losslessly; the message names the column."""
    missing = [c for c in VECTOR_COLUMNS if c not in schema.names]
    if missing:
        raise ContractError(f"{origin}: missing column(s) {', '.join(missing)}")
    for name in VECTOR_COLUMNS + ((PROJECTION_COLUMN,) if is_projected(schema) else ()):
        t = schema.field(name).type
        if not _accepted(name, t):
            raise ContractError(f"{origin}: column {name} has type {t}; the contract needs "
                                f"{_NEEDS.get(name, 'text')}")


def _cast_text(col):
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_integer(col.type):
        return pc.cast(col, pa.string())
    return col.cast(pa.string())


def conform_table(table, *, origin: str = "<table>", dim: int | None = None, nanos_as_int: bool = False,
                  owner=None):
    """``table`` in the contract's types (lossless casts) and, per row, why it is refused (null: a good row).

    ``dim``: the vector length (default 1280; projected vectors: the length of the first row's). ``nanos_as_int``:
    ``vectorized_at`` arrives as int64 nanoseconds (how Spark reads a ``timestamp[ns]`` column). ``owner``: the
    device whose folder the file lies in (``client=<owner>``): a row naming another ``client_id`` is refused, since
    who sent a row is where it is, never what it says (a sequence: each row's folder, None where it has none).
    Features must lie in the model family's output range (:data:`contract.card.OUTPUT_RANGE`, [0, 6]).
    Returns ``(table, reasons)``; the table keeps every row, with nulls where a value could not be cast.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if nanos_as_int and "vectorized_at" in table.schema.names and \
            pa.types.is_integer(table.schema.field("vectorized_at").type):
        i = table.schema.get_field_index("vectorized_at")
        table = table.set_column(i, "vectorized_at", table.column(i).cast(pa.int64()).cast(pa.timestamp("ns", tz="UTC")))
    conform_schema(table.schema, origin)
    projected = is_projected(table.schema)
    schema = vector_schema(projected)
    n = table.num_rows
    reasons = np.full(n, None, dtype=object)

    def refuse(mask, message) -> None:
        mask = np.asarray(mask, dtype=bool) & (reasons == None)  # noqa: E711 - elementwise
        if mask.any():
            for i in np.flatnonzero(mask):
                reasons[i] = message(i) if callable(message) else message

    cols = {}
    for field in schema:
        col = table.column(field.name).combine_chunks() if n else pa.array([], field.type)
        if pa.types.is_null(col.type):
            col = pa.nulls(n, field.type)
        elif field.name in _TEXT:
            col = _cast_text(col)
        elif field.name in ("width", "height"):
            values = col.to_numpy(zero_copy_only=False)
            valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            big = np.zeros(n, dtype=bool)
            if valid.any():
                v = values[valid].astype(np.float64)
                big[np.flatnonzero(valid)] = (v < _INT32[0]) | (v > _INT32[1])
            refuse(big, lambda i, name=field.name, vals=values: f"{name} {int(vals[i])} does not fit int32")
            col = pc.if_else(pa.array(big), pa.nulls(n, col.type), col).cast(pa.int32()) if big.any() \
                else col.cast(pa.int32())
        elif field.name == "features":
            col = col.cast(pa.list_(pa.float32()))
        elif field.name == "vectorized_at":
            col = col.cast(pa.timestamp(col.type.unit, tz="UTC")) if col.type.tz is None else col
            col = col.cast(pa.timestamp("us", tz="UTC"), safe=False)
        cols[field.name] = col
    out = pa.table(cols, schema=schema)
    if n:
        _row_reasons(out, refuse, dim)
        if owner is not None:
            clients = np.asarray(out.column("client_id").to_numpy(zero_copy_only=False), dtype=object)
            owners = np.full(n, owner, dtype=object) if isinstance(owner, str) else np.asarray(owner, dtype=object)
            other = np.array([o is not None and c != o for c, o in zip(clients, owners)], dtype=bool)
            refuse(other, lambda i: f"client_id {str(clients[i])[:80]!r} is not this object's device (it lies in "
                                    f"client={owners[i]}/)")
    return out, pa.array(reasons.tolist(), pa.string())


def _row_reasons(table, refuse, dim: int | None) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    def null(col):
        return np.asarray(table.column(col).is_null().to_numpy(zero_copy_only=False), dtype=bool)

    ids = table.column("image_id")
    refuse(null("image_id"), "image_id is null")
    bad = ~np.asarray(pc.fill_null(pc.match_substring_regex(ids, SHA256_PATTERN), True).to_numpy(
        zero_copy_only=False), dtype=bool)
    refuse(bad, lambda i: f"image_id {str(ids[i].as_py())[:70]!r} is not a sha256")
    feats = table.column("features")
    refuse(null("features"), "null features")
    lengths = pc.fill_null(pc.list_value_length(feats), -1).to_numpy(zero_copy_only=False)
    if dim is None:
        present = lengths[lengths > 0]
        dim = int(present[0]) if is_projected(table.schema) and len(present) else FEATURE_DIM
    refuse((lengths >= 0) & (lengths != dim), lambda i: f"features has {int(lengths[i])} values, expected {dim}")
    ok = np.flatnonzero(lengths == dim)
    if len(ok):
        # Every row of the right length (the usual case): the values as they are, no copy of the rows first.
        flat = pc.list_flatten(feats.take(ok) if len(ok) < len(lengths) else feats)
        if isinstance(flat, pa.ChunkedArray):
            flat = flat.combine_chunks() if flat.num_chunks != 1 else flat.chunk(0)
        if flat.null_count:
            nulls = flat.is_null().to_numpy(zero_copy_only=False).reshape(len(ok), dim)
            has_null = np.zeros(len(lengths), dtype=bool)
            has_null[ok] = nulls.any(axis=1)
            refuse(has_null, "null value in features")
        grid = flat.to_numpy(zero_copy_only=False).reshape(len(ok), dim)   # float32; a null is NaN here
        bad = np.zeros(len(lengths), dtype=bool)
        bad[ok] = ~np.isfinite(grid).all(axis=1)
        refuse(bad, "NaN or infinite value in features")
        if not is_projected(table.schema):   # the model's own output: within what the model can produce
            low, high = grid.min(axis=1), grid.max(axis=1)
            out_of = np.zeros(len(lengths), dtype=bool)
            out_of[ok] = (low < OUTPUT_RANGE[0] - RANGE_TOLERANCE) | (high > OUTPUT_RANGE[1] + RANGE_TOLERANCE)
            at = np.full(len(lengths), -1)
            at[ok] = np.arange(len(ok))
            refuse(out_of, lambda i: f"features outside the model's output range {list(OUTPUT_RANGE)} (min "
                                     f"{float(low[at[i]]):.4g}, max {float(high[at[i]]):.4g}): not a vector this "
                                     f"model can produce")
    shas = table.column("model_sha256")
    refuse(null("model_sha256"), "model_sha256 is null")
    bad = ~np.asarray(pc.fill_null(pc.match_substring_regex(shas, SHA256_PATTERN), True).to_numpy(
        zero_copy_only=False), dtype=bool)
    refuse(bad, lambda i: f"model_sha256 {str(shas[i].as_py())[:70]!r} is not a sha256")


def validate_table(table, *, origin: str = "<table>", dim: int | None = None):
    """The table in the contract's types; raises :class:`ContractError` naming file, row and reason at the
    first row that :func:`conform_table` refuses."""
    out, reasons = conform_table(table, origin=origin, dim=dim)
    if reasons.null_count < len(reasons):
        import numpy as np

        row = int(np.flatnonzero(~np.asarray(reasons.is_null().to_numpy(zero_copy_only=False), dtype=bool))[0])
        raise ContractError(f"{origin}: row {row}: {reasons[row].as_py()}")
    return out


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


def file_metadata(model_sha256: str, model_name: str, projection_id: str | None = None) -> dict[bytes, bytes]:
    meta = {META_CONTRACT: CONTRACT_VERSION.encode(), META_MODEL_SHA256: model_sha256.encode(),
            META_MODEL_NAME: model_name.encode()}
    if projection_id:
        meta[META_PROJECTION_ID] = projection_id.encode()
    return meta


def write_table(table, path_or_file, *, model_sha256: str, model_name: str, projection_id: str | None = None) -> int:
    """Write a table of the contract (validated first) with the fingerprint in the file's metadata."""
    import pyarrow.parquet as pq

    table = validate_table(table, origin=str(path_or_file))
    table = table.replace_schema_metadata(file_metadata(model_sha256, model_name, projection_id))
    pq.write_table(table, path_or_file, **parquet_options())
    return table.num_rows


def write_vectors(path_or_file, rows: dict[str, Sequence], *, model_sha256: str, model_name: str) -> int:
    """Write one vectors file from column lists; returns the number of rows."""
    import pyarrow as pa

    table = pa.table({c: rows[c] for c in VECTOR_COLUMNS}, schema=vector_schema())
    return write_table(table, path_or_file, model_sha256=model_sha256, model_name=model_name)


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


def features_matrix(column, dim: int | None = None):
    """The inverse of :func:`features_array`: a list<float> column (Array or ChunkedArray) as an (n, k) float64
    array, with one copy and no Python loop; ``dim`` checks the length."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.float32()))
    n = len(column)
    if n == 0:
        return np.zeros((0, dim or 0))
    if column.null_count:
        raise ContractError(f"{column.null_count} null features row(s): validate rows first")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    k = int(lengths[0])
    if (lengths != k).any() or (dim is not None and k != dim):
        raise ContractError(f"features of different lengths ({sorted(set(lengths.tolist()))[:5]}), expected "
                            f"{dim if dim is not None else k}")
    return pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float64).reshape(n, k)


def read_vectors(path_or_file, *, validate: bool = True):
    """Read a vectors file (path or file-like) as a pyarrow Table in the contract's types.

    ``validate``: refuse the file at its first bad row (what the edge does before an upload); otherwise only
    its schema is checked and the casts applied."""
    import pyarrow.parquet as pq

    origin = str(getattr(path_or_file, "name", path_or_file))
    try:
        table = pq.read_table(path_or_file)
    except Exception as exc:  # pyarrow raises several types for "not Parquet"
        raise ContractError(f"{origin}: not a readable Parquet file ({str(exc).strip().splitlines()[0][:200]})") from None
    if validate:
        return validate_table(table, origin=origin)
    return conform_table(table, origin=origin)[0]


def safe_inverse(std):
    """1/std, and 0 where std is 0 (a constant column scales to 0, as in Spark, never to NaN)."""
    import numpy as np

    std = np.asarray(std, dtype=np.float64)
    return np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)


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

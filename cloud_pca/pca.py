"""StandardScaler + PCA in Spark, with two solvers that produce the same fitted model.

- ``solver="gram"`` (default): one distributed pass in which every partition sums ``n``, ``sum(x)``, the Gram
  matrix ``X^T X`` (numpy, level-3 BLAS, inside ``mapInArrow``) and the per-column min and max; the partials
  are added on the executors (:func:`tree_sum`), so the driver receives one packed partial whatever the
  number of partitions, and takes ``eigh`` of the 1280x1280 correlation matrix.
- ``solver="spark"``: Spark ML's ``StandardScaler`` then ``PCA`` (the reference).

Both return a :class:`FruitsPCAModel`, named as sklearn names a fitted PCA (``components_`` is (k, d),
``explained_variance_ratio_`` has k values), which saves and loads as itself and also as the equivalent Spark
``PipelineModel`` (StandardScalerModel + PCAModel). Conventions follow Spark: the standard deviation divides
by ``n - 1`` (sklearn's by ``n``); a constant column (min == max) has std exactly 0 and scales to 0, never
NaN; components are unit vectors whose largest-magnitude entry is positive, so that runs and solvers compare.

>>> model = fit_pca(df, variance=0.95)                 # doctest: +SKIP
>>> model.components_.shape, model.n_components_       # doctest: +SKIP
((37, 1280), 37)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from contract.card import FEATURE_DIM
from contract.errors import FruitsError
from contract.projection import digest, pack_arrays, unpack_arrays
from contract.vectors import features_array, features_matrix, safe_inverse

log = logging.getLogger(__name__)
SOLVERS = ("gram", "spark")
VEC_COL = "features_vec"
SCALED_COL = "scaled"
DEFAULT_VARIANCE = 0.95
MODEL_FILE = "fruits-pca.npz"


class PCAInputError(FruitsError, ValueError):
    """A request the data cannot satisfy (k out of range, too few rows, constant data)."""


def check_request(*, k: int | None, variance: float | None, solver: str = "gram",
                  n_features: int = FEATURE_DIM) -> None:
    """Everything about a fit request that can be checked before any data is read."""
    if solver not in SOLVERS:
        raise PCAInputError(f"solver={solver!r} must be one of {', '.join(SOLVERS)}")
    if k is not None and variance is not None:
        raise PCAInputError("give k or variance, not both")
    if k is not None and not 1 <= k <= n_features:
        raise PCAInputError(f"k={k} must be between 1 and n_features={n_features}")
    if variance is not None and not 0.0 < variance <= 1.0:
        raise PCAInputError(f"variance={variance} must be in (0, 1]")


@dataclass
class Moments:
    """What a fit needs from the data: count, mean, n-1 standard deviation, correlation matrix."""

    n: int
    mean: np.ndarray
    std: np.ndarray
    corr: np.ndarray


@dataclass
class GramSums:
    """The additive statistics of a set of rows: ``n``, ``sum(x)``, the upper triangle of ``X^T X`` (packed
    row by row, float64) and each column's min and max. Partials of partitions, or of uploads, add up
    with ``+``."""

    n: int
    total: np.ndarray     # (d,)
    upper: np.ndarray     # (d * (d + 1) / 2,)
    lo: np.ndarray        # (d,) column minimum
    hi: np.ndarray        # (d,) column maximum

    @property
    def d(self) -> int:
        return int(self.total.shape[0])

    def __add__(self, other: "GramSums") -> "GramSums":
        if other.d != self.d:
            raise PCAInputError(f"cannot add statistics of {self.d}-d and {other.d}-d vectors")
        return GramSums(self.n + other.n, self.total + other.total, self.upper + other.upper,
                        np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))

    def __sub__(self, other: "GramSums") -> "GramSums":
        """These statistics without ``other``'s rows (rows replaced by a better-ranked copy). The column bounds stay:
        they only decide whether a column is constant, which removing rows cannot make it less."""
        if other.d != self.d or other.n > self.n:
            raise PCAInputError(f"cannot take {other.n} rows of {other.d}-d vectors out of {self.n} of {self.d}-d")
        return GramSums(self.n - other.n, self.total - other.total, self.upper - other.upper, self.lo, self.hi)

    @classmethod
    def of(cls, x: np.ndarray) -> "GramSums":
        """The statistics of the rows of ``x`` (n, d)."""
        x = np.asarray(x, dtype=np.float64)
        g = x.T @ x
        return cls(len(x), x.sum(axis=0), g[np.triu_indices(x.shape[1])], x.min(axis=0), x.max(axis=0))

    def gram(self) -> np.ndarray:
        d = self.d
        g = np.zeros((d, d))
        g[np.triu_indices(d)] = self.upper
        return g + np.triu(g, 1).T

    def moments(self) -> Moments:
        """Mean, n-1 std and correlation; a column whose min equals its max has std exactly 0."""
        n = self.n
        if n < 1:
            raise PCAInputError("no rows to fit")
        mean = self.total / n
        cov = (self.gram() - n * np.outer(mean, mean)) / max(n - 1, 1)
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        std[self.lo == self.hi] = 0.0     # exact, where the Gram formula leaves 1e-10..1e-8 of rounding
        inv = safe_inverse(std)
        return Moments(n, mean, std, cov * np.outer(inv, inv))

    @property
    def nbytes(self) -> int:
        return int(self.total.nbytes + self.upper.nbytes + self.lo.nbytes + self.hi.nbytes)

    def to_bytes(self) -> bytes:
        return pack_arrays(n=np.array(self.n), total=self.total, upper=self.upper, lo=self.lo, hi=self.hi)

    @classmethod
    def from_bytes(cls, data: bytes) -> "GramSums":
        z = unpack_arrays(data)
        return cls(int(z["n"]), z["total"], z["upper"], z["lo"], z["hi"])


def _sum_keyed(key, values):
    """One (key, sum) for the GramSums in ``values``; nothing for an empty partition."""
    total = None
    for v in values:
        total = v if total is None else total + v
    if total is not None:
        yield key, total


def tree_sum(partials, fan_in: int = 8) -> GramSums | None:
    """Add an RDD of :class:`GramSums` on the executors, ``fan_in`` partials per task and level, so that the
    driver receives one partial whatever the number of partitions (``RDD.treeReduce`` would send it
    about sqrt(partitions) of them, 13 MB each for d=1280)."""
    if fan_in < 2:
        raise PCAInputError(f"fan_in={fan_in} must be at least 2")
    level = partials.mapPartitionsWithIndex(_sum_keyed)
    n = level.getNumPartitions()
    while n > 1:
        n = -(-n // fan_in)
        level = (level.map(lambda kv, f=fan_in: (kv[0] // f, kv[1]))
                 .partitionBy(n, lambda key: key)            # key k -> partition k: exactly fan_in per task
                 .mapPartitionsWithIndex(lambda i, it: _sum_keyed(i, (v for _, v in it))))
    out = level.values().collect()
    return out[0] if out else None


def gram_partitions(df, max_tasks_per_core: int = 4):
    """``df`` with at most ``max_tasks_per_core`` partitions per core (``coalesce``, no shuffle).

    After a shuffle Spark keeps ``spark.sql.shuffle.partitions`` (200 by default, and AQE does not coalesce
    a cached plan): hundreds of nearly empty tasks, each with its own Python round trip and its own partial.
    """
    cap = max(2, max_tasks_per_core * df.sparkSession.sparkContext.defaultParallelism)
    return df.coalesce(cap) if df.rdd.getNumPartitions() > cap else df


def gram_sums(df, input_col: str = "features", chunk_rows: int = 2048, fan_in: int = 8) -> GramSums:
    """Distributed :class:`GramSums` of a list<float> column: numpy per partition (Arrow batches stacked into
    chunks of ``chunk_rows`` rows, ``chunk.T @ chunk`` in float64), added on the executors with
    :func:`tree_sum`. The driver receives one packed partial (6.6 MB for d=1280)."""
    import pyarrow as pa

    def partials(batches):
        total, pending, held = None, [], 0

        def flush():
            nonlocal total, pending, held
            part = GramSums.of(pending[0] if len(pending) == 1 else np.concatenate(pending))
            total = part if total is None else total + part
            pending, held = [], 0

        for batch in batches:
            if batch.num_rows == 0:
                continue
            x = features_matrix(batch.column(batch.schema.get_field_index(input_col)))
            pending.append(x)
            held += len(x)
            if held >= chunk_rows:
                flush()
        if pending:
            flush()
        if total is not None:
            yield pa.RecordBatch.from_pydict({"sums": [total.to_bytes()]})

    rows = (gram_partitions(df.select(input_col))
            .mapInArrow(partials, schema="sums binary")
            .rdd.map(lambda r: GramSums.from_bytes(bytes(r["sums"]))))
    total = tree_sum(rows, fan_in)
    if total is None:
        raise PCAInputError("no rows to fit")
    return total


def eig_components(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the correlation matrix, descending: (components as columns d x d, eigenvalues)."""
    values, vectors = np.linalg.eigh(corr)
    order = np.argsort(values)[::-1]
    return fix_signs(vectors[:, order]), np.clip(values[order], 0.0, None)


def fix_signs(components: np.ndarray) -> np.ndarray:
    """Flip each column so that its largest-magnitude entry is positive."""
    idx = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[idx, np.arange(components.shape[1])])
    signs[signs == 0] = 1.0
    return components * signs


def largest_angle(a: np.ndarray, b: np.ndarray) -> float:
    """The largest principal angle (degrees) between the row spaces of two (k, d) orthonormal bases: how far a
    model's top-k subspace moved (0: the same subspace, 90: a direction of one is orthogonal to the other)."""
    s = np.linalg.svd(np.asarray(a, np.float64) @ np.asarray(b, np.float64).T, compute_uv=False)
    return float(np.degrees(np.arccos(np.clip(s.min(), -1.0, 1.0))))


def choose_k(ratio: np.ndarray, *, k: int | None, variance: float | None, n_rows: int) -> tuple[int, str]:
    """The number of components and the reason, checking the allowed range."""
    d = len(ratio)
    limit = min(d, n_rows)
    if k is not None:
        if not 1 <= k <= limit:
            raise PCAInputError(f"k={k} must be between 1 and min(n_features={d}, n_rows={n_rows}) = {limit}")
        return k, f"k={k} requested; cumulative explained variance {float(np.cumsum(ratio)[k - 1]):.4f}"
    variance = DEFAULT_VARIANCE if variance is None else variance
    check_request(k=None, variance=variance)
    cum = np.cumsum(ratio)
    chosen = max(1, min(int(np.searchsorted(cum, variance - 1e-12) + 1), limit))
    return chosen, (f"smallest k whose cumulative explained variance reaches {variance}: "
                    f"k={chosen} gives {float(cum[chosen - 1]):.4f}")


@dataclass
class FruitsPCAModel:
    """A fitted StandardScaler + PCA, with sklearn's names and shapes.

    ``mean_`` and ``scale_`` (the n-1 standard deviation; 0 for a constant column) are the scaler's;
    ``components_`` (k, d), ``explained_variance_`` and ``explained_variance_ratio_`` (k) the PCA's;
    ``spectrum_`` holds all d variance ratios (the scree curve) and ``choice_`` why k was chosen.
    """

    mean_: np.ndarray
    scale_: np.ndarray
    components_: np.ndarray
    explained_variance_: np.ndarray
    explained_variance_ratio_: np.ndarray
    spectrum_: np.ndarray
    n_samples_: int
    solver_: str
    choice_: str = ""
    _pipeline: object = field(default=None, repr=False, compare=False)

    @property
    def n_components_(self) -> int:
        return int(self.components_.shape[0])

    @property
    def n_features_in_(self) -> int:
        return int(self.components_.shape[1])

    @property
    def model_id_(self) -> str:
        """16 hex characters naming the fitted numbers (what projections record as their ``pca_model``)."""
        return digest((self.mean_, self.scale_, self.components_), np.float64)

    @classmethod
    def from_moments(cls, m: Moments, *, k: int | None = None, variance: float | None = None,
                     solver: str = "gram") -> "FruitsPCAModel":
        """The model of already computed moments (the gram solver, and the incremental refresh)."""
        if m.n < 2:
            raise PCAInputError(f"PCA needs at least 2 distinct rows, got {m.n}")
        if not (m.std > 0).any():
            raise PCAInputError(f"all {m.n} vectors are equal in every column (constant data): there is no "
                                f"variance to explain")
        comps, values = eig_components(m.corr)
        return cls._chosen(m.mean, m.std, comps, values, m.n, k=k, variance=variance, solver=solver)

    @classmethod
    def _chosen(cls, mean, std, comps, values, n, *, k, variance, solver) -> "FruitsPCAModel":
        total = float(values.sum())
        if total <= 0:
            raise PCAInputError(f"the {n} vectors have no variance to explain (constant data)")
        ratio = values / total
        kk, reason = choose_k(ratio, k=k, variance=variance, n_rows=n)
        return cls(mean_=np.asarray(mean, np.float64), scale_=np.asarray(std, np.float64),
                   components_=np.ascontiguousarray(comps[:, :kk].T), explained_variance_=values[:kk],
                   explained_variance_ratio_=ratio[:kk], spectrum_=ratio, n_samples_=int(n), solver_=solver,
                   choice_=reason)

    # -------------------------------------------------------------------------------- using the model
    def transform_array(self, x: np.ndarray) -> np.ndarray:
        """(n, d) vectors -> (n, k) projections, float64."""
        return ((np.asarray(x, np.float64) - self.mean_) * safe_inverse(self.scale_)) @ self.components_.T

    def project(self, df, input_col: str = "features", output_col: str = "pca", model_col: str | None = None,
                residual_col: str | None = None):
        """``df``'s other columns plus ``output_col`` (array<float> of k values), and when asked this model's id
        (``model_col``) and each row's residual off the k-d subspace (``residual_col``: |z|^2 - |y|^2, large for rows
        the components describe badly): numpy per Arrow batch (``mapInArrow``), the same numbers as
        :meth:`transform` (Spark ML's per-row pipeline) up to float32 rounding, several times faster."""
        import pyarrow as pa
        from pyspark.sql.types import ArrayType, DoubleType, FloatType, StringType, StructField, StructType

        keep = [f for f in df.schema.fields if f.name != input_col]
        extra = [StructField(output_col, ArrayType(FloatType()))]
        extra += [StructField(model_col, StringType())] if model_col else []
        extra += [StructField(residual_col, DoubleType())] if residual_col else []
        schema = StructType(keep + extra)
        mean, inv, comps_t, k = self.mean_, safe_inverse(self.scale_), self.components_.T, self.n_components_
        names, model_id = [f.name for f in keep], self.model_id_

        def apply(batches):
            for batch in batches:
                z = (features_matrix(batch.column(batch.schema.get_field_index(input_col))) - mean) * inv
                y = z @ comps_t if len(z) else np.zeros((0, k))
                cols = [batch.column(batch.schema.get_field_index(c)) for c in names] + [features_array(y)]
                out_names = names + [output_col]
                if model_col:
                    cols.append(pa.array([model_id] * batch.num_rows, pa.string()))
                    out_names.append(model_col)
                if residual_col:
                    res = np.clip((z * z).sum(axis=1) - (y * y).sum(axis=1), 0.0, None) if len(z) else np.zeros(0)
                    cols.append(pa.array(res, pa.float64()))
                    out_names.append(residual_col)
                yield pa.RecordBatch.from_arrays(cols, names=out_names)

        return df.mapInArrow(apply, schema)

    def pipeline(self, spark):
        """The equivalent Spark ML ``PipelineModel`` (StandardScalerModel -> PCAModel)."""
        if self._pipeline is None:
            self._pipeline = build_pipeline(spark, self.mean_, self.scale_, self.components_.T,
                                            self.explained_variance_ratio_)
        return self._pipeline

    def transform(self, df, input_col: str = "features", output_col: str = "pca"):
        """Add ``output_col`` (a Spark ML vector of k values) with the Spark ML pipeline."""
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        out = self.pipeline(df.sparkSession).transform(df.withColumn(VEC_COL, array_to_vector(F.col(input_col))))
        return out.drop(VEC_COL, SCALED_COL).withColumnRenamed("pca_out", output_col)

    # ---------------------------------------------------------------------------------- save and load
    def to_bytes(self) -> bytes:
        meta = {"n_samples": self.n_samples_, "solver": self.solver_, "choice": self.choice_,
                "model_id": self.model_id_, "format": 1}
        return pack_arrays(meta, mean=self.mean_, scale=self.scale_, components=self.components_,
                           explained_variance=self.explained_variance_, spectrum=self.spectrum_)

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "<model>") -> "FruitsPCAModel":
        try:
            z = unpack_arrays(data)
            meta, spectrum, k = z["meta"], z["spectrum"], z["components"].shape[0]
            model = cls(mean_=z["mean"], scale_=z["scale"], components_=z["components"],
                        explained_variance_=z["explained_variance"], explained_variance_ratio_=spectrum[:k],
                        spectrum_=spectrum, n_samples_=int(meta["n_samples"]), solver_=meta["solver"],
                        choice_=meta.get("choice", ""))
        except (ValueError, KeyError, OSError) as exc:
            raise PCAInputError(f"{origin}: not a saved FruitsPCAModel ({exc})") from None
        if model.model_id_ != meta.get("model_id"):
            raise PCAInputError(f"{origin}: its numbers do not match its model id {meta.get('model_id')}")
        return model

    def save(self, spark, uri: str) -> None:
        """Write ``uri/`` as a Spark ML ``PipelineModel`` (loadable with ``PipelineModel.load``) holding also
        this model's own numbers in float64 (``fruits-pca.npz``, read back by :meth:`load`).

        The pipeline's files are written directly (:func:`pipeline_files`): Spark ML's writer ran 7 Spark jobs
        for them (most of a small refresh's jobs), and importing ``pyspark.ml`` costs 1-4 s in a cold process."""
        import pyspark

        from cloud_pca.spark import not_started

        from cloud_pca.storage import write_tree

        files = pipeline_files(self.mean_, self.scale_, self.components_.T, self.explained_variance_ratio_,
                               spark_version=pyspark.__version__ if not_started(spark) else spark.version)
        write_tree(spark, uri, {**files, MODEL_FILE: self.to_bytes()})

    @classmethod
    def load(cls, spark, uri: str) -> "FruitsPCAModel":
        from cloud_pca.storage import read_bytes

        path = f"{uri.rstrip('/')}/{MODEL_FILE}"
        try:
            data = read_bytes(spark, path)
        except Exception as exc:  # Py4JJavaError: FileNotFoundException
            raise PCAInputError(f"{path}: cannot read a saved model ({str(exc).strip().splitlines()[0][:200]})") from None
        return cls.from_bytes(data, path)


# What Spark ML 3.5 writes for a PipelineModel of these two stages (DefaultParamsWriter: one line of JSON per
# metadata folder; each model's data: one Parquet row whose columns carry Spark's vector and matrix types).
_VECTOR_SQL = {"type": "struct", "fields": [
    {"name": "type", "type": "byte", "nullable": False, "metadata": {}},
    {"name": "size", "type": "integer", "nullable": True, "metadata": {}},
    {"name": "indices", "type": {"type": "array", "elementType": "integer", "containsNull": False}, "nullable": True,
     "metadata": {}},
    {"name": "values", "type": {"type": "array", "elementType": "double", "containsNull": False}, "nullable": True,
     "metadata": {}}]}
_MATRIX_SQL = {"type": "struct", "fields": [
    {"name": "type", "type": "byte", "nullable": False, "metadata": {}},
    {"name": "numRows", "type": "integer", "nullable": False, "metadata": {}},
    {"name": "numCols", "type": "integer", "nullable": False, "metadata": {}},
    {"name": "colPtrs", "type": {"type": "array", "elementType": "integer", "containsNull": False}, "nullable": True,
     "metadata": {}},
    {"name": "rowIndices", "type": {"type": "array", "elementType": "integer", "containsNull": False}, "nullable": True,
     "metadata": {}},
    {"name": "values", "type": {"type": "array", "elementType": "double", "containsNull": False}, "nullable": True,
     "metadata": {}},
    {"name": "isTransposed", "type": "boolean", "nullable": False, "metadata": {}}]}


def _udt(kind: str) -> dict:
    return {"type": "udt", "class": f"org.apache.spark.ml.linalg.{kind}UDT", "pyClass": f"pyspark.ml.linalg.{kind}UDT",
            "sqlType": _VECTOR_SQL if kind == "Vector" else _MATRIX_SQL}


def _model_data(columns: dict[str, tuple[str, dict]], spark_version: str) -> bytes:
    """One Parquet row of Spark ML vectors/matrices (``columns``: name -> (kind, value)), with the Spark schema
    in the footer that tells Spark's reader these structs are its ``VectorUDT`` / ``MatrixUDT``."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    ints, doubles = pa.list_(pa.field("element", pa.int32(), False)), pa.list_(pa.field("element", pa.float64(), False))
    vector = pa.struct([pa.field("type", pa.int8(), False), pa.field("size", pa.int32()),
                        pa.field("indices", ints), pa.field("values", doubles)])
    matrix = pa.struct([pa.field("type", pa.int8(), False), pa.field("numRows", pa.int32(), False),
                        pa.field("numCols", pa.int32(), False), pa.field("colPtrs", ints),
                        pa.field("rowIndices", ints), pa.field("values", doubles),
                        pa.field("isTransposed", pa.bool_(), False)])
    fields = [pa.field(name, vector if kind == "Vector" else matrix) for name, (kind, _) in columns.items()]
    spark_schema = {"type": "struct", "fields": [{"name": name, "type": _udt(kind), "nullable": True, "metadata": {}}
                                                 for name, (kind, _) in columns.items()]}
    schema = pa.schema(fields, metadata={b"org.apache.spark.version": spark_version.encode(),
                                         b"org.apache.spark.sql.parquet.row.metadata": json.dumps(
                                             spark_schema, separators=(",", ":")).encode()})
    table = pa.Table.from_pylist([{name: value for name, (_, value) in columns.items()}], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    return buf.getvalue()


def pipeline_files(mean: np.ndarray, std: np.ndarray, components: np.ndarray, ratio_k: np.ndarray, *,
                   spark_version: str) -> dict[str, bytes]:
    """The files of the Spark ML ``PipelineModel`` (StandardScalerModel -> PCAModel) holding these numbers
    (components as columns, d x k), by path under the model's folder, as Spark ML 3.5's writer lays them out;
    ``PipelineModel.load`` reads them (tested). No Spark job and no ``pyspark.ml`` import are needed."""
    import json
    import time
    import uuid

    d, k = components.shape
    now = int(time.time() * 1000)

    def meta(cls: str, uid: str, params: dict, defaults: dict) -> bytes:
        return (json.dumps({"class": cls, "timestamp": now, "sparkVersion": spark_version, "uid": uid,
                            "paramMap": params, "defaultParamMap": defaults}, separators=(",", ":")) + "\n").encode()

    def vector(values) -> dict:
        return {"type": 1, "size": None, "indices": None, "values": [float(v) for v in np.ravel(values)]}

    scaler, pca = "0_fruits_scaler", "1_fruits_pca"
    files = {
        "metadata/part-00000": meta("org.apache.spark.ml.PipelineModel", f"PipelineModel_{uuid.uuid4().hex[:12]}",
                                    {"stageUids": ["fruits_scaler", "fruits_pca"]}, {}),
        f"stages/{scaler}/metadata/part-00000": meta(
            "org.apache.spark.ml.feature.StandardScalerModel", "fruits_scaler",
            {"outputCol": SCALED_COL, "withStd": True, "inputCol": VEC_COL, "withMean": True},
            {"outputCol": "fruits_scaler__output", "withStd": True, "withMean": False}),
        f"stages/{scaler}/data/part-00000.snappy.parquet": _model_data(
            {"std": ("Vector", vector(std)), "mean": ("Vector", vector(mean))}, spark_version),
        f"stages/{pca}/metadata/part-00000": meta(
            "org.apache.spark.ml.feature.PCAModel", "fruits_pca",
            {"k": int(k), "outputCol": "pca_out", "inputCol": SCALED_COL}, {"outputCol": "fruits_pca__output"}),
        f"stages/{pca}/data/part-00000.snappy.parquet": _model_data(
            {"pc": ("Matrix", {"type": 1, "numRows": int(d), "numCols": int(k), "colPtrs": None, "rowIndices": None,
                               "values": [float(v) for v in np.asarray(components, np.float64).reshape(-1, order="F")],
                               "isTransposed": False}),
             "explainedVariance": ("Vector", vector(ratio_k))}, spark_version),
    }
    for folder in ("metadata", f"stages/{scaler}/metadata", f"stages/{scaler}/data", f"stages/{pca}/metadata",
                   f"stages/{pca}/data"):
        files[f"{folder}/_SUCCESS"] = b""
    return files


def build_pipeline(spark, mean: np.ndarray, std: np.ndarray, components: np.ndarray, ratio_k: np.ndarray):
    """A Spark ``PipelineModel`` (StandardScalerModel -> PCAModel) holding the given numbers (components as
    columns, d x k).

    The JVM models are created with their (Scala ``private[ml]``, public in bytecode) constructors; the
    vectors and the matrix travel to the JVM as bytes (one py4j call each, no Spark job), not element by element.
    """
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import PCAModel, StandardScalerModel

    d, k = components.shape
    jvm = spark._jvm
    linalg = jvm.org.apache.spark.ml.linalg

    def doubles(values: np.ndarray):
        arr = spark.sparkContext._gateway.new_array(jvm.double, int(values.size))
        buf = jvm.java.nio.ByteBuffer.wrap(np.ascontiguousarray(values, dtype="<f8").tobytes())
        buf.order(jvm.java.nio.ByteOrder.LITTLE_ENDIAN).asDoubleBuffer().get(arr)
        return arr

    j_scaler = jvm.org.apache.spark.ml.feature.StandardScalerModel(
        "fruits_scaler", linalg.DenseVector(doubles(std.ravel())), linalg.DenseVector(doubles(mean.ravel())))
    j_pca = jvm.org.apache.spark.ml.feature.PCAModel(
        "fruits_pca", linalg.DenseMatrix(d, k, doubles(components.reshape(-1, order="F"))),   # column-major
        linalg.DenseVector(doubles(ratio_k.ravel())))
    scaler = StandardScalerModel(j_scaler)
    scaler._resetUid("fruits_scaler")
    scaler._transfer_params_from_java()
    scaler = scaler.setInputCol(VEC_COL).setOutputCol(SCALED_COL)
    scaler._set(withMean=True, withStd=True)
    pca = PCAModel(j_pca)
    pca._resetUid("fruits_pca")
    pca._transfer_params_from_java()
    pca = pca.setInputCol(SCALED_COL).setOutputCol("pca_out")
    pca._set(k=k)
    pca._transfer_params_to_java()
    return PipelineModel([scaler, pca])


def spark_moments_and_components(df, input_col: str = "features"):
    """The reference solver: Spark ML StandardScaler + PCA(k = d); returns (mean, std, n, comps, eigenvalues)."""
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    # Spark ML's covariance is a treeAggregate of d x d partials (depth 2: about sqrt(partitions) reach the
    # driver); bounding the partitions bounds them.
    vec = gram_partitions(df.select(array_to_vector(F.col(input_col)).alias(VEC_COL))).cache()
    try:
        n = vec.count()
        if n < 2:
            raise PCAInputError(f"PCA needs at least 2 distinct rows, got {n}")
        scaler = StandardScaler(inputCol=VEC_COL, outputCol=SCALED_COL, withMean=True, withStd=True).fit(vec)
        mean, std = scaler.mean.toArray(), scaler.std.toArray()
        if not (std > 0).any():
            raise PCAInputError(f"all {n} vectors are equal in every column (constant data): there is no "
                                f"variance to explain")
        d = len(mean)
        pca = PCA(k=min(d, n), inputCol=SCALED_COL, outputCol="pca_out").fit(scaler.transform(vec))
        comps = pca.pc.toArray()
        # Spark's explainedVariance is normalised by the trace: scale back to eigenvalues of the correlation.
        values = np.zeros(d)
        values[: comps.shape[1]] = pca.explainedVariance.toArray() * float((std > 0).sum())
    finally:
        vec.unpersist()
    full = np.zeros((d, d))
    full[:, : comps.shape[1]] = comps
    return mean, std, n, fix_signs(full), values


def fit_pca(df, *, k: int | None = None, variance: float | None = None, input_col: str = "features",
            solver: str = "gram") -> FruitsPCAModel:
    """Fit StandardScaler + PCA on an array<float> column.

    >>> model = fit_pca(df, variance=0.95)           # doctest: +SKIP
    >>> model.project(df).select("image_id", "pca")  # doctest: +SKIP
    """
    check_request(k=k, variance=variance, solver=solver)
    if solver == "gram":
        return FruitsPCAModel.from_moments(gram_sums(df, input_col).moments(), k=k, variance=variance)
    mean, std, n, comps, values = spark_moments_and_components(df, input_col)
    return FruitsPCAModel._chosen(mean, std, comps, values, n, k=k, variance=variance, solver="spark")


def load_pipeline(uri: str):
    from pyspark.ml import PipelineModel

    return PipelineModel.load(uri)

"""StandardScaler + PCA in Spark, with two solvers that produce the same fitted Spark ML pipeline.

- ``solver="spark"``: Spark ML's ``StandardScaler`` then ``PCA`` (the reference; its covariance is built
  row by row with level-2 BLAS).
- ``solver="gram"``: one distributed pass in which every partition sums ``n``, ``sum(x)`` and the Gram
  matrix ``X^T X`` with numpy (level-3 BLAS) inside ``mapInArrow``; the driver adds the partials (one
  1280x1280 matrix each, never the rows) and takes ``eigh`` of the correlation matrix.

Both return a :class:`FruitsPCAModel` wrapping a Spark ``PipelineModel`` (StandardScalerModel + PCAModel)
built from the same numbers, so saving, loading and ``transform`` are the same whichever solver ran.
Conventions follow Spark: the standard deviation divides by ``n - 1`` (sklearn's by ``n``); a constant
column has std 0 and scales to 0, never NaN; components are unit vectors whose largest-magnitude entry
is positive (a sign convention, so that runs and solvers compare).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
SOLVERS = ("gram", "spark")
VEC_COL = "features_vec"
SCALED_COL = "scaled"


class PCAInputError(ValueError):
    """A request the data cannot satisfy (k out of range, too few rows)."""


@dataclass
class Moments:
    """What a fit needs from the data: count, mean, n-1 standard deviation, correlation matrix."""

    n: int
    mean: np.ndarray
    std: np.ndarray
    corr: np.ndarray


def moments_from_gram(n: int, total: np.ndarray, gram: np.ndarray) -> Moments:
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / max(n - 1, 1)
    var = np.clip(np.diag(cov), 0.0, None)
    std = np.sqrt(var)
    # Columns that are constant up to rounding: std 0, as Spark does for exact constants.
    tiny = std <= 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0)))
    std[tiny] = 0.0
    inv = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)
    corr = cov * np.outer(inv, inv)
    return Moments(n, mean, std, corr)


def _arrow_rows(batch, input_col: str) -> np.ndarray:
    """The list<float> column of an Arrow record batch as an (n, d) float64 array (one copy, no Python loop)."""
    import pyarrow.compute as pc

    col = batch.column(batch.schema.get_field_index(input_col))
    if col.null_count:
        raise PCAInputError(f"{col.null_count} null {input_col} value(s) reached the fit; validate rows first")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) == 0:
        return np.zeros((0, 0))
    d = int(lengths[0])
    if (lengths != d).any():
        raise PCAInputError(f"{input_col} vectors of different lengths ({sorted(set(lengths.tolist()))[:5]})")
    values = col.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(lengths), d).astype(np.float64)


@dataclass
class GramSums:
    """The additive statistics of a set of rows: ``n``, ``sum(x)`` and the upper triangle of ``X^T X``
    (packed row by row, float64). Partials of partitions (or of uploads) add up with ``+``."""

    n: int
    total: np.ndarray     # (d,)
    upper: np.ndarray     # (d * (d + 1) / 2,)

    @property
    def d(self) -> int:
        return int(self.total.shape[0])

    def __add__(self, other: "GramSums") -> "GramSums":
        if other.d != self.d:
            raise PCAInputError(f"cannot add statistics of {self.d}-d and {other.d}-d vectors")
        return GramSums(self.n + other.n, self.total + other.total, self.upper + other.upper)

    @classmethod
    def of(cls, x: np.ndarray) -> "GramSums":
        """The statistics of the rows of ``x`` (n, d)."""
        x = np.asarray(x, dtype=np.float64)
        g = x.T @ x
        return cls(len(x), x.sum(axis=0), g[np.triu_indices(x.shape[1])])

    def gram(self) -> np.ndarray:
        d = self.d
        g = np.zeros((d, d))
        g[np.triu_indices(d)] = self.upper
        return g + np.triu(g, 1).T

    def moments(self) -> Moments:
        if self.n < 1:
            raise PCAInputError("no rows to fit")
        return moments_from_gram(self.n, self.total, self.gram())

    @property
    def nbytes(self) -> int:
        return int(self.total.nbytes + self.upper.nbytes)


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
    about sqrt(partitions) of them, 10 MB each)."""
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
    """Distributed n, sum and X^T X with numpy per partition, added on the executors (:func:`tree_sum`):
    the driver receives one packed partial (6.6 MB for d=1280), however many partitions ``df`` has.

    Each task reads Arrow batches (``mapInArrow``: no pandas objects per row), stacks them into chunks of
    ``chunk_rows`` rows and adds ``chunk.T @ chunk`` (level-3 BLAS, float64) to its partial.
    """
    import pyarrow as pa

    def partials(batches):
        n, total, gram, pending, held = 0, None, None, [], 0

        def flush():
            nonlocal gram, total, pending, held
            x = pending[0] if len(pending) == 1 else np.concatenate(pending)
            if gram is None:
                total = np.zeros(x.shape[1])
                gram = np.zeros((x.shape[1], x.shape[1]))
            total += x.sum(axis=0)
            gram += x.T @ x
            pending, held = [], 0

        for batch in batches:
            if batch.num_rows == 0:
                continue
            x = _arrow_rows(batch, input_col)
            n += len(x)
            pending.append(x)
            held += len(x)
            if held >= chunk_rows:
                flush()
        if pending:
            flush()
        if gram is not None:
            upper = gram[np.triu_indices(gram.shape[0])]
            yield pa.RecordBatch.from_pydict({"n": [n], "total": [total.tobytes()], "upper": [upper.tobytes()]})

    rows = (gram_partitions(df.select(input_col))
            .mapInArrow(partials, schema="n long, total binary, upper binary")
            .rdd.map(lambda r: GramSums(r["n"], np.frombuffer(r["total"], dtype=np.float64),
                                        np.frombuffer(r["upper"], dtype=np.float64))))
    total = tree_sum(rows, fan_in)
    if total is None:
        raise PCAInputError("no rows to fit")
    return total


def gram_moments(df, input_col: str = "features", chunk_rows: int = 2048) -> Moments:
    """:func:`gram_sums` turned into mean, std and correlation."""
    return gram_sums(df, input_col, chunk_rows).moments()


def eig_components(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the correlation matrix, descending: (components d x d, variance ratios)."""
    values, vectors = np.linalg.eigh(corr)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    vectors = vectors[:, order]
    total = values.sum()
    ratio = values / total if total > 0 else np.zeros_like(values)
    return fix_signs(vectors), ratio


def fix_signs(components: np.ndarray) -> np.ndarray:
    """Flip each column so that its largest-magnitude entry is positive."""
    idx = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[idx, np.arange(components.shape[1])])
    signs[signs == 0] = 1.0
    return components * signs


def choose_k(ratio: np.ndarray, *, k: int | None, variance: float | None, n_rows: int) -> tuple[int, str]:
    """The number of components and the reason, checking the allowed range."""
    d = len(ratio)
    limit = min(d, n_rows)
    if k is not None:
        if not 1 <= k <= limit:
            raise PCAInputError(f"k={k} must be between 1 and min(n_features={d}, n_rows={n_rows}) = {limit}")
        return k, f"k={k} requested; cumulative explained variance {float(np.cumsum(ratio)[k - 1]):.4f}"
    if variance is None:
        variance = 0.95
    if not 0.0 < variance <= 1.0:
        raise PCAInputError(f"variance={variance} must be in (0, 1]")
    cum = np.cumsum(ratio)
    chosen = int(np.searchsorted(cum, variance - 1e-12) + 1)
    chosen = max(1, min(chosen, limit))
    return chosen, (f"smallest k whose cumulative explained variance reaches {variance}: "
                    f"k={chosen} gives {float(cum[chosen - 1]):.4f}")


@dataclass
class FruitsPCAModel:
    """A fitted StandardScaler + PCA: numpy arrays plus the equivalent Spark ``PipelineModel``."""

    mean_: np.ndarray
    std_: np.ndarray
    components_: np.ndarray          # d x k
    explained_variance_ratio_: np.ndarray   # all d ratios (the scree curve); the first k are kept
    k: int
    n_rows_: int
    solver: str
    pipeline: object = None          # pyspark.ml.PipelineModel
    k_reason: str = ""

    def transform_numpy(self, x: np.ndarray) -> np.ndarray:
        inv = np.where(self.std_ > 0, 1.0 / np.where(self.std_ > 0, self.std_, 1.0), 0.0)
        return ((np.asarray(x, np.float64) - self.mean_) * inv) @ self.components_

    def transform(self, df, input_col: str = "features", output_col: str = "pca"):
        """Add ``output_col`` (a Spark ML vector of k values) to a DataFrame with an array column."""
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        out = self.pipeline.transform(df.withColumn(VEC_COL, array_to_vector(F.col(input_col))))
        return out.drop(VEC_COL, SCALED_COL).withColumnRenamed("pca_out", output_col)

    def project(self, df, input_col: str = "features", output_col: str = "pca"):
        """``df``'s other columns plus ``output_col``: array<float> of k values, computed with numpy per Arrow
        batch (``mapInArrow``). Same numbers as :meth:`transform` (the Spark ML pipeline) up to float32
        rounding, without its per-row vector conversions, so it is the one the job uses for large inputs."""
        import pyarrow as pa
        from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

        from contract.vectors import features_array

        keep = [f for f in df.schema.fields if f.name != input_col]
        schema = StructType(keep + [StructField(output_col, ArrayType(FloatType()))])
        mean = self.mean_
        inv = np.where(self.std_ > 0, 1.0 / np.where(self.std_ > 0, self.std_, 1.0), 0.0)
        comps = self.components_
        k = comps.shape[1]
        names = [f.name for f in keep]

        def apply(batches):
            for batch in batches:
                x = _arrow_rows(batch, input_col)
                y = ((x - mean) * inv) @ comps if len(x) else np.zeros((0, k))
                cols = [batch.column(batch.schema.get_field_index(c)) for c in names]
                cols.append(features_array(y))
                yield pa.RecordBatch.from_arrays(cols, names=names + [output_col])

        return df.mapInArrow(apply, schema)

    def save(self, uri: str) -> None:
        self.pipeline.write().overwrite().save(uri)


def build_pipeline(spark, mean: np.ndarray, std: np.ndarray, components: np.ndarray, ratio_k: np.ndarray):
    """A Spark ``PipelineModel`` (StandardScalerModel -> PCAModel) holding the given numbers.

    The JVM models are created with their (Scala ``private[ml]``, public in bytecode) constructors; the
    vectors and the matrix travel through a one-row DataFrame, not element by element over py4j.
    """
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import PCAModel, StandardScalerModel
    from pyspark.ml.linalg import DenseMatrix, DenseVector

    d, k = components.shape
    row = spark.createDataFrame(
        [(DenseVector(std.tolist()), DenseVector(mean.tolist()),
          DenseMatrix(d, k, components.reshape(-1, order="F").tolist()),  # column-major
          DenseVector(ratio_k.tolist()))],
        ["std", "mean", "pc", "ev"])
    jrow = row._jdf.first()
    jvm = spark._jvm
    j_scaler = jvm.org.apache.spark.ml.feature.StandardScalerModel("fruits_scaler", jrow.get(0), jrow.get(1))
    j_pca = jvm.org.apache.spark.ml.feature.PCAModel("fruits_pca", jrow.get(2), jrow.get(3))
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
    """The reference solver: Spark ML StandardScaler + PCA(k = d); returns (mean, std, n, comps, ratio)."""
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    # Spark ML's covariance is a treeAggregate of d x d partials (depth 2: about sqrt(partitions) reach the
    # driver); bounding the partitions bounds them.
    vec = gram_partitions(df.select(array_to_vector(F.col(input_col)).alias(VEC_COL))).cache()
    try:
        n = vec.count()
        scaler = StandardScaler(inputCol=VEC_COL, outputCol=SCALED_COL, withMean=True, withStd=True).fit(vec)
        mean, std = scaler.mean.toArray(), scaler.std.toArray()
        d = len(mean)
        pca = PCA(k=min(d, n), inputCol=SCALED_COL, outputCol="pca_out").fit(scaler.transform(vec))
        comps = pca.pc.toArray()
        ratio = np.zeros(d)
        ratio[: comps.shape[1]] = pca.explainedVariance.toArray()
    finally:
        vec.unpersist()
    return mean, std, n, fix_signs(comps), ratio


def fit_pca(df, *, k: int | None = None, variance: float | None = None, input_col: str = "features",
            solver: str = "gram") -> FruitsPCAModel:
    """Fit StandardScaler + PCA on an array<float> column.

    >>> model = fit_pca(df, variance=0.95)           # doctest: +SKIP
    >>> model.transform(df).select("image_id", "pca")  # doctest: +SKIP
    """
    if solver not in SOLVERS:
        raise PCAInputError(f"solver={solver!r} must be one of {', '.join(SOLVERS)}")
    if k is not None and variance is not None:
        raise PCAInputError("give k or variance, not both")
    spark = df.sparkSession
    if solver == "gram":
        m = gram_moments(df, input_col)
        if m.n < 2:
            raise PCAInputError(f"PCA needs at least 2 rows, got {m.n}")
        comps, ratio = eig_components(m.corr)
        mean, std, n = m.mean, m.std, m.n
    else:
        mean, std, n, comps, ratio = spark_moments_and_components(df, input_col)
        if n < 2:
            raise PCAInputError(f"PCA needs at least 2 rows, got {n}")
    kk, reason = choose_k(ratio, k=k, variance=variance, n_rows=n)
    pipeline = build_pipeline(spark, mean, std, comps[:, :kk], ratio[:kk])
    return FruitsPCAModel(mean_=mean, std_=std, components_=comps[:, :kk], explained_variance_ratio_=ratio,
                          k=kk, n_rows_=n, solver=solver, pipeline=pipeline, k_reason=reason)


def load_pipeline(uri: str):
    from pyspark.ml import PipelineModel

    return PipelineModel.load(uri)

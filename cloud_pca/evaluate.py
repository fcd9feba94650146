"""How little must we store? Identification accuracy against bytes per image, measured.

For labelled vectors: a held-out set, StandardScaler + PCA fitted on the training part with the distributed gram
solver, then for
the full standardized 1280-d vectors and for the first k components (k in a range), each stored as
float32, float16 or int8 (per-component symmetric scales from the training part), two classifiers:

- k-nearest neighbours (k=5, Euclidean, majority vote, ties to the nearest);
- a linear classifier (one-vs-rest ridge regression on one-hot labels, closed form, lambda=1).

The held-out set is, by choice:

- ``test_inputs``: the vectors of a separate set (e.g. Fruits-360's ``Test/``, other frames of the training films);
- ``split="film"`` (the default): a hash of each photo's *film* (its folder, the name before its first number, and
  that number // 40: :func:`cloud_pca.identifier.film_of`) and the seed, so that neighbouring frames of one film, or a
  burst of one phone, stay on one side (a label whose films all fall on one side, one film say, is split by image);
- ``split="image"``: a hash of ``image_id`` and the seed (duplicates never straddle it, near-duplicates may).

A random split of photos taken in films puts near-identical frames on both sides and measures too high (real
Fruits-360 photos: kNN 1.000 by image against the other frames' 0.98), so every evaluation counts the held-out rows
whose nearest training row has a cosine >= 0.99 (``near_duplicates``) and warns when there are any.

The fit is distributed; the classifiers run on the driver on at most ``max_rows`` rows and ``max_bytes`` of
features (128 MiB: ~26k rows; a random sample beyond), which is stated in the output (``rows_total``). The answer: the smallest stored form whose accuracy is
within 1 point of the full float32 vectors' accuracy, for each classifier.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np

from contract.errors import FruitsError
from contract.vectors import safe_inverse

log = logging.getLogger(__name__)
DTYPES = {"float32": 4, "float16": 2, "int8": 1}
DEFAULT_KS = (8, 16, 32, 64, 128, 256, 512)
DEFAULT_MAX_BYTES = 128 * 2**20   # features collected to the driver for the classifiers: ~26k rows of 1280
SPLITS = ("film", "image")
NEAR_COPY_COSINE = 0.99           # a held-out row this close to a training row measures memory, not identification


class EvaluateError(FruitsError, ValueError):
    """Data the evaluation cannot use (no labels, one class, too few rows)."""


def encode(x_train: np.ndarray, x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` as stored in ``dtype`` and read back (scales for int8 from the training part)."""
    if dtype == "float32":
        return x.astype(np.float32).astype(np.float64)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float64)
    scale = np.abs(x_train).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(x / scale), -127, 127).astype(np.int8).astype(np.float64) * scale


def knn_predict(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, k: int = 5, chunk: int = 2048) -> np.ndarray:
    classes, y_idx = np.unique(y_train, return_inverse=True)
    out = np.empty(len(test), dtype=y_idx.dtype)
    sq = (train ** 2).sum(axis=1)
    for start in range(0, len(test), chunk):
        t = test[start:start + chunk]
        d = sq[None, :] - 2 * t @ train.T          # + |t|^2, the same for every neighbour of a row
        nn = np.argsort(d, axis=1)[:, :k]
        votes = np.zeros((len(t), len(classes)))
        for rank in range(nn.shape[1]):            # nearer neighbours break ties
            np.add.at(votes, (np.arange(len(t)), y_idx[nn[:, rank]]), 1.0 + 1e-3 * (k - rank))
        out[start:start + chunk] = votes.argmax(axis=1)
    return classes[out]


def ridge_predict(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, lam: float = 1.0) -> np.ndarray:
    classes, y_idx = np.unique(y_train, return_inverse=True)
    onehot = np.eye(len(classes))[y_idx]
    xb = np.hstack([train, np.ones((len(train), 1))])
    w = np.linalg.solve(xb.T @ xb + lam * np.eye(xb.shape[1]), xb.T @ onehot)
    return classes[(np.hstack([test, np.ones((len(test), 1))]) @ w).argmax(axis=1)]


def split_of(image_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by the image and the seed."""
    return int(hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()[:8], 16) / 2**32


def split_column(image_id_col: str, seed: int):
    """:func:`split_of` as a Spark SQL expression (no Python UDF): the same number for the same image."""
    from pyspark.sql import functions as F

    head = F.substring(F.sha2(F.concat(F.lit(f"{seed}:"), F.col(image_id_col)), 256), 1, 8)
    return F.conv(head, 16, 10).cast("double") / float(2**32)


def film_split_column(seed: int):
    """A number in [0, 1) per row, the same for every photo of one film of one label (:func:`split_of` of the label
    and :func:`cloud_pca.identifier.film_of`): the film split, computed in Python tasks with the identifier's own
    rule, so the two never disagree on what a film is."""
    import pandas as pd
    from pyspark.sql import functions as F

    from cloud_pca.identifier import film_of

    def film_u(label, source, image_id):
        return pd.Series([split_of(f"{lab}\0{film_of(src, iid)}", seed)
                          for lab, src, iid in zip(label, source, image_id)])

    # (the hints as objects: this module's annotations are strings, which Spark does not read)
    film_u.__annotations__ = {"label": pd.Series, "source": pd.Series, "image_id": pd.Series, "return": pd.Series}
    return F.pandas_udf(film_u, "double")(F.col("label"), F.col("source"), F.col("image_id"))


def near_copies(x_train: np.ndarray, x_test: np.ndarray, cosine: float = NEAR_COPY_COSINE, chunk: int = 1024) -> int:
    """Held-out rows whose nearest training row (by cosine of the raw vectors) is at least ``cosine``."""
    def unit(a):
        n = np.linalg.norm(a, axis=1, keepdims=True)
        return a / np.where(n > 0, n, 1.0)

    tr, count = unit(x_train), 0
    for start in range(0, len(x_test), chunk):
        count += int(((unit(x_test[start:start + chunk]) @ tr.T).max(axis=1, initial=-1.0) >= cosine).sum())
    return count


@dataclass
class Evaluation:
    rows: list[dict]
    answer: dict
    n_train: int
    n_test: int
    classes: int
    explained_cumulative: list[float]
    rows_total: int = 0       # labelled unique rows; the classifiers saw n_train + n_test of them (a sample)
    split: str = "film"       # how the held-out rows were chosen: "film", "image" or "test set"
    near_duplicates: int = 0  # held-out rows with a training row of cosine >= NEAR_COPY_COSINE
    left_out: int = 0         # held-out rows left out: their label has no training rows (all its films held out)

    @property
    def warning(self) -> str:
        if not self.near_duplicates:
            return ""
        return (f"{self.near_duplicates} of {self.n_test} held-out rows have a near-identical training row (cosine "
                f">= {NEAR_COPY_COSINE}): they measure memory, not identification, so the accuracies read high"
                + ("; split by film (--split film) or give a separate set (--test)" if self.split == "image" else ""))

    def to_json(self) -> str:
        return json.dumps({"n_train": self.n_train, "n_test": self.n_test, "classes": self.classes,
                           "rows_total": self.rows_total, "split": self.split,
                           "near_duplicates": self.near_duplicates, "left_out": self.left_out,
                           "warning": self.warning,
                           "answer": self.answer, "results": self.rows,
                           "explained_cumulative": self.explained_cumulative}, indent=1)


def evaluate_arrays(x_train, y_train, x_test, y_test, model, ks=DEFAULT_KS) -> tuple[list[dict], dict]:
    """Accuracy of every (representation, dtype, classifier); ``model`` is a fitted FruitsPCAModel."""
    inv = safe_inverse(model.scale_)
    z_train, z_test = (x_train - model.mean_) * inv, (x_test - model.mean_) * inv
    p_train, p_test = z_train @ model.components_.T, z_test @ model.components_.T
    cum = np.cumsum(model.spectrum_)
    forms = [("full", x_train.shape[1], z_train, z_test, 1.0)]
    forms += [(f"pca{k}", k, p_train[:, :k], p_test[:, :k], float(cum[k - 1])) for k in ks if k <= p_train.shape[1]]
    rows = []
    for name, dims, tr, te, var in forms:
        for dtype, width in DTYPES.items():
            tr_q, te_q = encode(tr, tr, dtype), encode(tr, te, dtype)
            for clf, fn in (("knn5", knn_predict), ("ridge", ridge_predict)):
                acc = float((fn(tr_q, y_train, te_q) == y_test).mean())
                rows.append({"form": name, "dims": dims, "dtype": dtype, "bytes_per_image": dims * width,
                             "classifier": clf, "accuracy": acc, "explained_variance": var})
    answer = {}
    for clf in ("knn5", "ridge"):
        ref = next(r for r in rows if r["form"] == "full" and r["dtype"] == "float32" and r["classifier"] == clf)
        ok = [r for r in rows if r["classifier"] == clf and r["accuracy"] >= ref["accuracy"] - 0.01]
        best = min(ok, key=lambda r: (r["bytes_per_image"], -r["accuracy"]))
        answer[clf] = {
            "form": best["form"], "dims": best["dims"], "dtype": best["dtype"],
            "bytes_per_image": best["bytes_per_image"], "accuracy": best["accuracy"],
            "full_accuracy": ref["accuracy"], "full_bytes": ref["bytes_per_image"],
            "kept_accuracy_pct": 100 * best["accuracy"] / ref["accuracy"] if ref["accuracy"] else 0.0,
            "storage_pct": 100 * best["bytes_per_image"] / ref["bytes_per_image"],
            "sentence": (f"storing {best['dims']} {'components' if best['form'] != 'full' else 'values'} as "
                         f"{best['dtype']}, {best['bytes_per_image']} bytes per image, keeps "
                         f"{100 * best['accuracy'] / max(ref['accuracy'], 1e-9):.1f}% of the identification "
                         f"accuracy of the full 1280-d vectors ({clf}: {best['accuracy']:.3f} vs "
                         f"{ref['accuracy']:.3f}), at {100 * best['bytes_per_image'] / ref['bytes_per_image']:.1f}% "
                         f"of the storage and upload ({ref['bytes_per_image']} bytes as float32)"),
        }
    return rows, answer


def check_options(*, ks, test_fraction: float, max_rows: int, max_bytes: int, split: str = "film") -> None:
    """The request's ranges, before any data is read (and before Spark starts, from the CLI)."""
    if split not in SPLITS:
        raise EvaluateError(f"--split={split!r} must be one of {', '.join(SPLITS)}")
    if not 0 < test_fraction < 1:
        raise EvaluateError(f"--test-fraction={test_fraction} must be between 0 and 1")
    if not ks or min(ks) < 1:
        raise EvaluateError(f"ks={ks}: components must be >= 1")
    if max_rows < 2:
        raise EvaluateError(f"--max-rows={max_rows} must be at least 2")
    if max_bytes < 1:
        raise EvaluateError(f"--max-bytes={max_bytes} must be at least 1")


def evaluate(spark, inputs: list[str], *, ks=DEFAULT_KS, test_fraction: float = 0.25, seed: int = 0,
             max_rows: int = 200_000, max_bytes: int = DEFAULT_MAX_BYTES, split: str = "film",
             test_inputs: list[str] | None = None, model_sha256: str | None = None) -> Evaluation:
    """Read labelled contract vectors under ``inputs`` and measure accuracy against bytes, held out by ``split`` (or
    on the vectors under ``test_inputs``). Vectors of one model only: ``model_sha256``, needed when the inputs hold
    several (a bucket moving from one model to another), as ``pca`` asks."""
    from pyspark.sql import functions as F

    from cloud_pca.pca import fit_pca

    check_options(ks=ks, test_fraction=test_fraction, max_rows=max_rows, max_bytes=max_bytes, split=split)
    unique, dim, cached = _labelled(spark, inputs, model_sha256)
    try:
        if test_inputs:
            test_unique, test_dim, test_cached = _labelled(spark, test_inputs, model_sha256)
            cached += test_cached
            if test_dim != dim:
                raise EvaluateError(f"the test set holds {test_dim}-d vectors, the inputs {dim}-d")
            train, test_df = unique, test_unique
        else:
            unique = _with_split(unique, split, seed, test_fraction)
            train, test_df = unique.filter(F.col("_u") >= test_fraction), unique.filter(F.col("_u") < test_fraction)
        n_train = train.count()
        n_labels = train.select("label").distinct().count()
        if n_labels < 2:
            raise EvaluateError(f"need at least 2 labels to measure identification, found {n_labels}")
        if n_train < 3:
            raise EvaluateError(f"only {n_train} training rows; need more labelled vectors")
        kmax = min(max(ks), n_train - 1, dim)
        model = fit_pca(train.select("features"), k=kmax, solver="gram")   # distributed
        n_test = test_df.count()
        total = n_train + n_test
        # The classifiers run on the driver: bound what is collected by bytes (float32 features), not only rows.
        max_rows = max(1, min(max_rows, max_bytes // (dim * 4)))
        keep = min(1.0, max_rows / max(total, 1))

        def sample(df):
            return (df.filter(F.rand(seed) < keep) if keep < 1 else df).select("label", "features").toPandas()

        tr, te = sample(train), sample(test_df)
    finally:
        for df in cached:
            df.unpersist()
    unseen = ~te["label"].isin(set(tr["label"]))    # a label whose every film was held out: nothing to learn it from
    te = te[~unseen]
    if not len(te):
        raise EvaluateError("no held-out rows of a label the training part has: give more labelled vectors, a larger "
                            "--test-fraction, or --test")
    x_train, x_test = (np.stack(t["features"].to_numpy()).astype(np.float64) for t in (tr, te))
    y_train, y_test = tr["label"].to_numpy(), te["label"].to_numpy()
    results, answer = evaluate_arrays(x_train, y_train, x_test, y_test, model, ks)
    ev = Evaluation(results, answer, len(x_train), len(x_test), n_labels,
                    [float(v) for v in np.cumsum(model.spectrum_)[:kmax]], rows_total=int(total),
                    split="test set" if test_inputs else split, near_duplicates=near_copies(x_train, x_test),
                    left_out=int(unseen.sum()))
    if ev.warning:
        log.warning(ev.warning)
    return ev


def _with_split(unique, split: str, seed: int, test_fraction: float):
    """``unique`` with ``_u`` (held out below ``test_fraction``): by film, except for a label whose films all fall on
    one side (one film, say), which is split by image rather than lost to one side."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_image = split_column("image_id", seed)
    if split == "image":
        return unique.withColumn("_u", by_image)
    w = Window.partitionBy("label")
    f = F.col("_f")
    both = (F.max((f >= test_fraction).cast("int")).over(w) == 1) & (F.max((f < test_fraction).cast("int")).over(w) == 1)
    return (unique.withColumn("_f", film_split_column(seed))
            .withColumn("_u", F.when(both, f).otherwise(by_image)).drop("_f"))


def _labelled(spark, inputs: list[str], model_sha256: str | None = None):
    """The unique labelled valid rows under ``inputs`` (image_id, label, source, features) of one model (refused when
    they mix models and none is named), their dimension, and the DataFrames cached on the way (to unpersist)."""
    from pyspark.sql import functions as F

    from cloud_pca.inputs import InputError, read_inputs
    from cloud_pca.job import JobError, deduplicate, pick_model

    try:
        read = read_inputs(spark, inputs, skip_bad_files=False)
    except InputError as exc:
        raise EvaluateError(str(exc)) from None
    valid = read.df.filter(F.col("reason").isNull() & F.col("label").isNotNull())
    counts = {r["model_sha256"]: r["count"] for r in valid.groupBy("model_sha256").count().collect()}
    try:
        pick_model(counts, model_sha256)
    except JobError as exc:
        raise EvaluateError(str(exc)) from None
    if model_sha256:
        valid = valid.filter(F.col("model_sha256") == model_sha256)
    valid = valid.cache()
    unique, _ = deduplicate(valid)
    return unique.select("image_id", "label", "source", "features"), read.dim, [valid]


def write_evaluation(spark, ev: Evaluation, output: str) -> list[str]:
    """``evaluation.json``, ``evaluation.csv`` and the two plots under ``output``; returns what was written."""
    from cloud_pca.storage import write_bytes

    out = output.rstrip("/")
    cols = ["form", "dims", "dtype", "bytes_per_image", "classifier", "accuracy", "explained_variance"]
    files = {"evaluation.json": ev.to_json().encode(),
             "evaluation.csv": (",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n"
                                                                for r in ev.rows)).encode(),
             **plot(ev)}
    for name, data in files.items():
        write_bytes(spark, f"{out}/{name}", data)
    return [f"{out}/{name}" for name in files]


def plot(ev: Evaluation) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cloud_pca.plots import png

    out = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, clf in zip(axes, ("knn5", "ridge")):
        for dtype, marker in (("float32", "o"), ("float16", "s"), ("int8", "^")):
            pts = sorted((r["bytes_per_image"], r["accuracy"]) for r in ev.rows
                         if r["classifier"] == clf and r["dtype"] == dtype and r["form"] != "full")
            full = next(r for r in ev.rows if r["classifier"] == clf and r["dtype"] == dtype and r["form"] == "full")
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=f"PCA k, {dtype}")
            ax.scatter([full["bytes_per_image"]], [full["accuracy"]], marker="*", s=120,
                       label=f"full 1280-d, {dtype}")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per image")
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"{clf}: accuracy vs bytes ({ev.n_test} test images, {ev.classes} classes)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    out["accuracy_vs_bytes.png"] = png(fig, tight=True)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for clf in ("knn5", "ridge"):
        pts = sorted((r["explained_variance"], r["accuracy"]) for r in ev.rows
                     if r["classifier"] == clf and r["dtype"] == "float32" and r["form"] != "full")
        if pts:
            ax.plot(*zip(*pts), "o-", label=clf)
    ax.set_xlabel("cumulative explained variance of the k components")
    ax.set_ylabel("held-out accuracy (float32)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    out["accuracy_vs_variance.png"] = png(fig, tight=True)
    return out
